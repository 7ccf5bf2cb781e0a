//! The process signals: `SIGTERM` and `SIGINT` start a shutdown, a second
//! one forces the exit.

use std::sync::Arc;

use super::phase::Trigger;

/// The installed signal streams.
pub(super) struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(not(unix))]
    enabled: bool,
}

impl Signals {
    pub(super) fn none() -> Self {
        Self {
            #[cfg(unix)]
            term: None,
            #[cfg(unix)]
            int: None,
            #[cfg(not(unix))]
            enabled: false,
        }
    }

    pub(super) fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let install = |kind: SignalKind, what: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(
                        target: "tower_rampart::shutdown",
                        signal = what,
                        error = %e,
                        "cannot listen to signal"
                    );
                    None
                }
            };
            Self {
                term: install(SignalKind::terminate(), "SIGTERM"),
                int: install(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        {
            Self { enabled: true }
        }
    }

    /// The next signal; pending forever if none is installed.
    pub(super) async fn recv(&mut self) -> Trigger {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        if s.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = next(&mut self.term) => Trigger::Sigterm,
                () = next(&mut self.int) => Trigger::Sigint,
            }
        }
        #[cfg(not(unix))]
        {
            if self.enabled && tokio::signal::ctrl_c().await.is_ok() {
                Trigger::Sigint
            } else {
                std::future::pending().await
            }
        }
    }
}

/// Watches for the signal that forces the exit: the second one, or after a
/// programmatic trigger the second one too (Kubernetes' SIGTERM after a
/// programmatic trigger is only the first). Aborted by the caller once the
/// shutdown is done.
pub(super) fn spawn_force_exit(
    mut signals: Signals,
    trigger: Trigger,
    name: Arc<str>,
    code: i32,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if trigger == Trigger::Programmatic {
            let first = signals.recv().await;
            tracing::warn!(
                target: "tower_rampart::shutdown",
                name = %name,
                signal = first.as_str(),
                "signal during shutdown: already shutting down, a second one forces the exit"
            );
        }
        let second = signals.recv().await;
        tracing::error!(
            target: "tower_rampart::shutdown",
            name = %name,
            signal = second.as_str(),
            code,
            "second signal: exiting now"
        );
        std::process::exit(code);
    })
}
