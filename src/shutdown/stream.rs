//! Ending long-lived response streams when draining starts.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use pin_project_lite::pin_project;

use super::Shutdown;

pin_project! {
    /// A stream that ends when the [`Shutdown`] coordinator starts
    /// draining: made by [`Shutdown::until_draining`].
    #[must_use = "streams do nothing unless polled"]
    pub struct UntilDraining<S> {
        #[pin]
        stream: S,
        draining: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    }
}

impl<S> UntilDraining<S> {
    pub(crate) fn new(stream: S, shutdown: &Shutdown) -> Self {
        Self {
            stream,
            draining: Some(Box::pin(shutdown.draining())),
        }
    }

    /// Has draining started (the stream has ended or will end at its next
    /// poll)?
    pub fn is_draining(&self) -> bool {
        self.draining.is_none()
    }

    /// The inner stream.
    pub fn into_inner(self) -> S {
        self.stream
    }
}

impl<S: Stream> Stream for UntilDraining<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        // Draining first: an item that is ready at the same moment is not
        // sent, the stream ends.
        if let Some(draining) = this.draining {
            if draining.as_mut().poll(cx).is_ready() {
                *this.draining = None;
            }
        }
        if this.draining.is_none() {
            return Poll::Ready(None);
        }
        this.stream.poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.draining.is_none() {
            (0, Some(0))
        } else {
            (0, self.stream.size_hint().1)
        }
    }
}

impl<S> fmt::Debug for UntilDraining<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UntilDraining")
            .field("draining", &self.is_draining())
            .finish_non_exhaustive()
    }
}
