//! The drain layer.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use tower::Layer;

use super::Drain;
use super::state::State;
use crate::rejection::{ErrorMode, HttpMode};
use crate::util::lanes::Laned;

/// Applies [`Drain`] to a service. Built by
/// [`Shutdown::drain_layer`](super::Shutdown::drain_layer); every clone and
/// every `layer()` call shares the coordinator's state.
pub struct DrainLayer<M = HttpMode> {
    state: Arc<Laned<State>>,
    _mode: PhantomData<fn() -> M>,
}

impl DrainLayer {
    pub(crate) fn new(state: Arc<Laned<State>>) -> Self {
        Self {
            state,
            _mode: PhantomData,
        }
    }

    /// The drain's state, for the stack's front (which counts requests
    /// itself rather than through a `Drain` service).
    #[cfg(feature = "config")]
    pub(crate) fn state(&self) -> &Arc<Laned<State>> {
        &self.state
    }
}

impl<M> DrainLayer<M> {
    /// Refusals become a boxed [`Rejection`](crate::Rejection) error instead
    /// of a response (for services that do not speak HTTP).
    pub fn into_error_mode(self) -> DrainLayer<ErrorMode> {
        DrainLayer {
            state: self.state,
            _mode: PhantomData,
        }
    }
}

impl<M> Clone for DrainLayer<M> {
    fn clone(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
            _mode: PhantomData,
        }
    }
}

impl<M> fmt::Debug for DrainLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainLayer")
            .field("name", &self.state.name)
            .finish_non_exhaustive()
    }
}

impl<S, M> Layer<S> for DrainLayer<M> {
    type Service = Drain<S, M>;

    fn layer(&self, inner: S) -> Drain<S, M> {
        Drain::new(inner, Arc::clone(&self.state))
    }
}
