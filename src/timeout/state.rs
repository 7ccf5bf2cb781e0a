//! The timeout's engine: the settings and metric handles every service of
//! a layer shares ([`Shared`]), and the decision: which deadline binds a
//! request (the server's budget, the caller's, or an outer layer's) and the
//! refusal when it passes.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, StatusCode};
use metrics::Counter;

use super::Deadline;
use super::deadline::{self, DeadlineCarrier, DeadlineSource, GRPC_TIMEOUT, parse_grpc_timeout};
use super::error::TimeoutCause;
use crate::grpc::is_grpc;
use crate::rejection::{Rejection, RejectionKind};

/// The layer's settings and metric handles, shared by every service it
/// builds and every clone of it.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) timeout: Duration,
    pub(crate) safety_margin: Duration,
    pub(crate) grpc_timeout: bool,
    pub(crate) budget_header: Option<HeaderName>,
    pub(crate) status: Option<StatusCode>,
    pub(crate) deadline_extension: bool,
    /// `[server, caller]` budgets.
    pub(super) elapsed: [Counter; 2],
    pub(super) budget_spent: [Counter; 2],
}

impl Shared {
    /// Counts and logs a timeout of the budget `source` (refusal path only).
    #[cold]
    pub(crate) fn record(&self, cause: TimeoutCause, source: DeadlineSource) {
        let i = usize::from(source == DeadlineSource::Caller);
        match cause {
            TimeoutCause::Elapsed => self.elapsed[i].increment(1),
            TimeoutCause::BudgetSpent => self.budget_spent[i].increment(1),
        }
        tracing::debug!(
            target: "tower_rampart::timeout",
            name = %self.name,
            cause = cause.as_str(),
            source = source.as_str(),
            "request timed out"
        );
    }

    /// The refusal for `cause`: the service's fault only when the server's
    /// own budget ran out. `binding` (a budget spent on arrival) says which
    /// budget it was, for the detail.
    #[cold]
    pub(crate) fn rejection(
        &self,
        cause: TimeoutCause,
        source: DeadlineSource,
        binding: Option<Binding>,
    ) -> Rejection {
        let rejection = Rejection::new(RejectionKind::TimedOut, self.name.clone())
            .with_service_fault(source == DeadlineSource::Server);
        let rejection = match binding {
            Some(Binding::Caller(budget)) if budget.is_zero() => {
                rejection.with_detail("the caller's budget is zero")
            }
            Some(Binding::Caller(budget)) => rejection.with_detail(format!(
                "the caller's budget ({budget:?}) is within the safety margin ({:?})",
                self.safety_margin
            )),
            _ => rejection.with_detail(cause.detail()),
        };
        match self.status {
            Some(status) => rejection.with_status(status),
            None => rejection,
        }
    }

    /// The deadline of `req`, arriving now: handed to the request (its
    /// extensions, when the layer is asked to) and returned; or, when its
    /// budget is already spent, which budget it was (counted and logged
    /// here). `grpc` as for [`deadline_for`](Self::deadline_for). What
    /// [`Timeout`](super::Timeout) and the stack's front do on `call`.
    #[inline]
    pub(crate) fn admit<Req: DeadlineCarrier>(
        &self,
        req: &mut Req,
        grpc: Option<bool>,
    ) -> Result<Deadline, (DeadlineSource, Binding)> {
        let now = crate::util::clock::now_nanos();
        let eff = self.deadline_for(req, now, grpc);
        if eff.at <= now {
            self.record(TimeoutCause::BudgetSpent, eff.source);
            return Err((eff.source, eff.binding));
        }
        let deadline = Deadline::from_nanos(eff.at).with_source(eff.source);
        if self.deadline_extension {
            if eff.nested {
                req.replace_deadline(deadline);
            } else {
                req.set_deadline(deadline);
            }
        }
        Ok(deadline)
    }

    /// The refusal of a request whose deadline passed while it was served
    /// (counted and logged).
    #[cold]
    pub(crate) fn elapsed(&self, source: DeadlineSource) -> Rejection {
        self.record(TimeoutCause::Elapsed, source);
        self.rejection(TimeoutCause::Elapsed, source, None)
    }

    /// The effective deadline of a request arriving now with `req`'s
    /// budget headers and outer deadline, whose budget it is, and whether
    /// there was an outer deadline. `grpc` is what the mode's request
    /// context knows of the protocol (`None`: unknown, look it up).
    ///
    /// The earliest deadline binds; at the same instant the server's own
    /// budget binds before the caller's, and this layer's own before an
    /// outer one's.
    #[inline]
    fn deadline_for<Req: DeadlineCarrier>(
        &self,
        req: &Req,
        now: u64,
        grpc: Option<bool>,
    ) -> Effective {
        let shared = self;
        let mut eff = Effective {
            at: deadline::nanos_after(now, shared.timeout),
            source: DeadlineSource::Server,
            binding: Binding::Own,
            nested: false,
        };
        if let Some(headers) = req.budget_headers() {
            if let Some(budget) = client_budget(shared, headers, grpc) {
                let at = deadline::nanos_after(now, budget.saturating_sub(shared.safety_margin));
                if at < eff.at {
                    eff.at = at;
                    eff.source = DeadlineSource::Caller;
                    eff.binding = Binding::Caller(budget);
                }
            }
        }
        if let Some(outer) = req.deadline() {
            eff.nested = true;
            if (outer.nanos(), outer.source()) < (eff.at, eff.source) {
                eff.at = outer.nanos();
                eff.source = outer.source();
                eff.binding = Binding::Outer;
            }
        }
        eff
    }
}

/// A request's effective deadline and where it came from.
#[derive(Debug, Clone, Copy)]
struct Effective {
    /// Nanoseconds of the crate's clock ([`Deadline`]'s unit).
    at: u64,
    source: DeadlineSource,
    binding: Binding,
    nested: bool,
}

/// Which budget set a request's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Binding {
    /// This layer's own `timeout`.
    Own,
    /// The caller's budget, as sent (before the safety margin).
    Caller(Duration),
    /// An outer layer's [`Deadline`](super::Deadline).
    Outer,
}

/// The smaller of the budgets the caller sent (malformed ones are absent).
/// `grpc-timeout` counts on gRPC requests only.
#[inline]
fn client_budget(shared: &Shared, headers: &HeaderMap, grpc: Option<bool>) -> Option<Duration> {
    let mut budget = None;
    if shared.grpc_timeout && grpc.unwrap_or_else(|| is_grpc(headers)) {
        budget = read_budget(shared, headers, &GRPC_TIMEOUT, parse_grpc_timeout);
    }
    if let Some(name) = &shared.budget_header {
        if let Some(ms) = read_budget(shared, headers, name, deadline::parse_millis) {
            budget = Some(budget.map_or(ms, |b: Duration| b.min(ms)));
        }
    }
    budget
}

#[inline]
fn read_budget(
    shared: &Shared,
    headers: &HeaderMap,
    name: &HeaderName,
    parse: fn(&[u8]) -> Option<Duration>,
) -> Option<Duration> {
    let value = crate::util::header::get(headers, name)?;
    let parsed = parse(value.as_bytes());
    if parsed.is_none() {
        malformed(shared, name, value);
    }
    parsed
}

#[cold]
fn malformed(shared: &Shared, name: &HeaderName, value: &http::HeaderValue) {
    tracing::debug!(
        target: "tower_rampart::timeout",
        name = %shared.name,
        header = %name,
        value = ?value,
        "malformed budget header ignored"
    );
}
