//! One configuration file for the whole stack, and the builder that turns it
//! into one layer (feature `config`).
//!
//! [`RampartConfig`] gathers every layer's settings, the probe paths, the
//! health registry's options and the shutdown timings. It is read from TOML
//! ([`RampartConfig::load`], [`RampartConfig::from_toml`]), takes
//! environment-variable overrides in one naming scheme (below), and is
//! validated as a whole: [`ConfigErrors`] lists **every** problem found,
//! each named by its key path (`rate_limit.quotas[1].burst: must be greater
//! than 0`), so a program refuses to start on an invalid file and says
//! everything that is wrong with it at once. Unknown keys are errors
//! everywhere, so a typo is never silently ignored.
//!
//! ```toml
//! listen = "0.0.0.0:8080"
//!
//! [probes]
//! liveness_path = "/livez"
//! readiness_path = "/readyz"
//! startup_path = "/startupz"
//!
//! [health]
//! breaker_readiness = "off"     # "off" | "warn" | "fail"
//!
//! [shutdown]
//! shutdown_delay = "5s"
//! drain_timeout = "20s"
//!
//! [server]                      # feature `serve`; every key optional
//! header_read_timeout = "10s"
//! max_connections = 10000
//!
//! [rate_limit]                  # optional: no section, no rate limit
//! quotas = [{ rate = "100/s", burst = 50, key = "client_ip" }]
//!
//! [circuit_breaker]             # optional keys: defaults apply
//! failure_rate_threshold = 50.0
//! open_duration = "10s"
//!
//! [timeout]                     # optional: default 10s
//! timeout = "2s"
//! ```
//!
//! # Environment overrides
//!
//! Every key can be overridden by an environment variable named `RAMPART_`
//! followed by its key path in upper case, with `__` (two underscores)
//! between the levels and array indexes as plain numbers:
//!
//! | variable | key |
//! |---|---|
//! | `RAMPART_LISTEN=0.0.0.0:9000` | `listen` |
//! | `RAMPART_TIMEOUT__TIMEOUT=2s` | `timeout.timeout` |
//! | `RAMPART_SHUTDOWN__DRAIN_TIMEOUT=30s` | `shutdown.drain_timeout` |
//! | `RAMPART_SERVER__CONNECTION_GRACE=2s` | `server.connection_grace` |
//! | `RAMPART_RATE_LIMIT__QUOTAS__0__RATE=200/s` | `rate_limit.quotas[0].rate` |
//! | `RAMPART_CIRCUIT_BREAKER__MINIMUM_CALLS=20` | `circuit_breaker.minimum_calls` |
//!
//! The value is read as a TOML value when it is one (a number, a boolean, a
//! quoted string, an array: `20`, `false`, `'"123"'`), otherwise as a plain
//! string (`2s`, `100/s`, `0.0.0.0:9000`). Missing tables are created; an
//! array index may be at most the array's length (one past the end appends
//! a new table). Overrides go through the same deserialisation and
//! validation as the file, so `RAMPART_TIMEOUT__TIMOUT` is an unknown key
//! and an error, naming the variable.
//!
//! # The stack
//!
//! [`RampartConfig::stack`] builds the [`Stack`]: one [`RampartLayer`]
//! applying, outermost first,
//!
//! 1. the [probe layer](crate::health::ProbeLayer): `/livez`, `/readyz`,
//!    `/startupz` are answered before anything else, so probes are never
//!    rate limited, refused by a breaker, counted in flight or timed out;
//! 2. the [drain layer](crate::shutdown::DrainLayer): counts every request
//!    in flight for the graceful shutdown and refuses new ones while
//!    draining;
//! 3. the [rate limit](crate::rate_limit) (if configured): the cheapest
//!    refusal first, and a refused request never reaches the breaker's
//!    statistics;
//! 4. the [circuit breaker](crate::circuit_breaker);
//! 5. the [timeout](crate::timeout), inside the breaker, so a timed-out call
//!    reaches the breaker as a failure (504) rather than as a dropped call;
//! 6. tower-http's [`CatchPanicLayer`](tower_http::catch_panic::CatchPanicLayer),
//!    innermost, so a panicking handler answers 500 and counts as a failure
//!    too (and the connection survives).
//!
//! It hands back the [`Shutdown`](crate::shutdown::Shutdown) coordinator, the
//! [`HealthRegistry`](crate::health::HealthRegistry) and the
//! [`CircuitBreakerHandle`](crate::circuit_breaker::CircuitBreakerHandle).
//!
//! ```
//! use axum::{Router, routing::get};
//! use tower_rampart::config::RampartConfig;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = RampartConfig::from_toml(r#"
//!     listen = "127.0.0.1:0"
//!     [shutdown]
//!     shutdown_delay = "0s"
//!     drain_timeout = "5s"
//!     signals = false
//!     [timeout]
//!     timeout = "2s"
//! "#)?;
//! let stack = config.stack().build()?;
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(stack.layer());
//!
//! let listener = tokio::net::TcpListener::bind(config.listen_addr()).await?;
//! let server = axum::serve(listener, app).with_graceful_shutdown(stack.shutdown().draining());
//! # stack.shutdown().trigger();
//! let report = stack.shutdown().run_server(server).await?;
//! assert_eq!(report.aborted, 0);
//! # Ok(())
//! # }
//! ```
//!
//! A wrong file:
//!
//! ```
//! use tower_rampart::config::RampartConfig;
//!
//! let errors = RampartConfig::from_toml(r#"
//!     listen = "localhost"
//!     [timeout]
//!     timeout = "0s"
//!     [circuit_breaker]
//!     failure_rate_threshold = 150.0
//! "#).unwrap_err();
//! let fields: Vec<&str> = errors.iter().map(|e| e.field()).collect();
//! assert_eq!(fields, ["listen", "circuit_breaker.failure_rate_threshold", "timeout.timeout"]);
//! ```

mod env;
mod stack;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::ConfigError;
use crate::circuit_breaker::CircuitBreakerConfig;
use crate::health::ProbeConfig;
use crate::rate_limit::RateLimitConfig;
use crate::shutdown::ShutdownConfig;
use crate::timeout::TimeoutConfig;

pub use stack::{
    OptionalFuture, OptionalRateLimit, RampartLayer, RampartService, Stack, StackBuilder,
};

/// The prefix of the environment variables read by [`RampartConfig::load`].
pub const ENV_PREFIX: &str = "RAMPART_";

/// Every setting of the stack: the listen address, the probes, the health
/// registry, the shutdown timings and each layer. See the
/// [module docs](self) for the file format and the environment overrides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RampartConfig {
    /// The address to listen on (default `0.0.0.0:8080`). The stack does
    /// not bind it; read it with [`listen_addr`](Self::listen_addr).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The probe paths (`/livez`, `/readyz`, `/startupz` by default).
    #[serde(default)]
    pub probes: ProbeConfig,
    /// The health registry's options.
    #[serde(default)]
    pub health: HealthConfig,
    /// The shutdown timings.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// The rate limit; without this section, requests are not rate limited.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// The circuit breaker (every key optional).
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
    /// The request timeout (default 10 s).
    #[serde(default = "default_timeout")]
    pub timeout: TimeoutConfig,
    /// The [`serve`](mod@crate::serve) loop's connection hygiene (feature
    /// `serve`; every key optional).
    #[cfg(feature = "serve")]
    #[serde(default)]
    pub server: crate::serve::ServerConfig,
}

fn default_listen() -> String {
    "0.0.0.0:8080".to_owned()
}

fn default_timeout() -> TimeoutConfig {
    TimeoutConfig {
        name: crate::timeout::DEFAULT_NAME.to_owned(),
        timeout: Duration::from_secs(10),
        safety_margin: None,
        grpc_timeout: true,
        budget_header: None,
        status: None,
        deadline_extension: true,
    }
}

impl Default for RampartConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            probes: ProbeConfig::default(),
            health: HealthConfig::default(),
            shutdown: ShutdownConfig::default(),
            rate_limit: None,
            circuit_breaker: CircuitBreakerConfig::default(),
            timeout: default_timeout(),
            #[cfg(feature = "serve")]
            server: crate::serve::ServerConfig::default(),
        }
    }
}

/// Whether an open circuit breaker fails the readiness probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerReadiness {
    /// The breaker is not a readiness check (default). An open breaker
    /// usually means a dependency every replica shares is down: failing
    /// readiness on all of them at once would take the whole service out
    /// of its load balancer, turning fast refusals into connection errors.
    #[default]
    Off,
    /// A non-critical readiness check: `/readyz?verbose` shows
    /// `[!]<name> warn` while the circuit is open, the probe still passes.
    Warn,
    /// A critical readiness check: the pod is unready while the circuit is
    /// open (for a dependency only this replica uses).
    Fail,
}

/// The health registry's options (the probe paths are in
/// [`ProbeConfig`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthConfig {
    /// The registry's name, labelling its metrics (default `health`).
    pub name: String,
    /// Register the circuit breaker as a readiness check named after it
    /// (default `off`).
    pub breaker_readiness: BreakerReadiness,
    /// How often the `grpc.health.v1` service re-reads the synchronous
    /// checks, such as the breaker's (default 1s).
    #[serde(with = "crate::config_util::duration")]
    pub grpc_poll_interval: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            name: "health".to_owned(),
            breaker_readiness: BreakerReadiness::Off,
            grpc_poll_interval: Duration::from_secs(1),
        }
    }
}

/// Every problem found in a configuration, each naming its key path.
///
/// Its `Display` is one line per problem, ready to print before exiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    errors: Vec<ConfigError>,
}

impl ConfigErrors {
    fn one(error: ConfigError) -> Self {
        Self {
            errors: vec![error],
        }
    }

    /// The problems, in key order as far as possible.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }

    /// How many problems.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Never true for an error returned by this module.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The problems.
    pub fn into_vec(self) -> Vec<ConfigError> {
        self.errors
    }

    /// Puts every problem's key path under `prefix`
    /// ([`ConfigError::at`]).
    #[must_use]
    pub fn at(self, prefix: &str) -> Self {
        Self {
            errors: self.errors.into_iter().map(|e| e.at(prefix)).collect(),
        }
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        Self::one(error)
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "invalid configuration ({n} problem{})",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            if e.field().is_empty() {
                write!(f, "\n  {}", e.message())?;
            } else {
                write!(f, "\n  {e}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl RampartConfig {
    /// Reads the TOML file at `path`, applies the `RAMPART_*` environment
    /// overrides and validates the result.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigErrors> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::one(ConfigError::new(
                "",
                format!("cannot read {}: {e}", path.display()),
            ))
        })?;
        Self::from_toml_with_env(&text, std::env::vars())
    }

    /// Parses and validates TOML text, without environment overrides.
    pub fn from_toml(text: &str) -> Result<Self, ConfigErrors> {
        Self::from_toml_with_env(text, std::iter::empty::<(String, String)>())
    }

    /// Parses TOML text, applies the overrides found in `vars` (pairs of
    /// name and value; names not starting with [`ENV_PREFIX`] are
    /// ignored) and validates the result. [`load`](Self::load) passes
    /// `std::env::vars()`.
    pub fn from_toml_with_env<I, K, V>(text: &str, vars: I) -> Result<Self, ConfigErrors>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| {
            ConfigErrors::one(ConfigError::new("", e.to_string().trim().to_owned()))
        })?;
        let applied = env::apply(&mut table, ENV_PREFIX, vars)?;
        let config: RampartConfig = serde_path_to_error::deserialize(table).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let mut message = e.inner().message().trim().to_owned();
            if let Some(var) = applied
                .iter()
                .find_map(|(p, v)| related(&path, p).then_some(v))
            {
                message.push_str(&format!(" (set by {var})"));
            }
            ConfigErrors::one(ConfigError::new(path, message))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The listen address, once [validated](Self::validate).
    ///
    /// # Panics
    ///
    /// If `listen` is not an address (which validation refuses).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .parse()
            .expect("`listen` is validated as a socket address")
    }

    /// Checks every setting and reports every problem, each named by its
    /// key path. [`load`](Self::load) and [`from_toml`](Self::from_toml)
    /// call it; call it again after changing a config in code.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut push = |r: Result<(), ConfigError>, at: &str| {
            if let Err(e) = r {
                errors.push(e.at(at));
            }
        };
        push(
            self.listen
                .parse::<SocketAddr>()
                .map(drop)
                .map_err(|_| ConfigError::new("listen", "must be an address such as 0.0.0.0:8080")),
            "",
        );
        push(self.probes.validate(), "probes");
        if self.health.name.is_empty() {
            push(Err(ConfigError::new("name", "must not be empty")), "health");
        }
        if self.health.grpc_poll_interval.is_zero() {
            push(
                Err(ConfigError::new(
                    "grpc_poll_interval",
                    "must be greater than 0",
                )),
                "health",
            );
        }
        if self.health.breaker_readiness != BreakerReadiness::Off
            && !crate::health::registry::valid_check_name(&self.circuit_breaker.name)
        {
            push(
                Err(ConfigError::new(
                    "name",
                    "must be made of ASCII letters, digits and `-_.:` to name the breaker's readiness check",
                )),
                "circuit_breaker",
            );
        }
        push(self.shutdown.validate(), "shutdown");
        if let Some(rl) = &self.rate_limit {
            for e in validate_rate_limit(rl) {
                push(Err(e), "rate_limit");
            }
        }
        push(self.circuit_breaker.validate(), "circuit_breaker");
        push(self.timeout.build().map(drop), "timeout");
        if !self.timeout.timeout.is_zero() && self.shutdown.drain_timeout < self.timeout.timeout {
            push(
                Err(ConfigError::new(
                    "drain_timeout",
                    format!(
                        "must be at least timeout.timeout ({}), so a request admitted before draining can finish",
                        format_duration(self.timeout.timeout)
                    ),
                )),
                "shutdown",
            );
        }
        #[cfg(feature = "serve")]
        push(self.server.validate(), "server");
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors { errors })
        }
    }

    /// The [`Server`](crate::serve::Server) built from the `[server]`
    /// section (feature `serve`), once [validated](Self::validate).
    #[cfg(feature = "serve")]
    pub fn server(&self) -> Result<crate::serve::Server, ConfigError> {
        self.server.clone().build().map_err(|e| e.at("server"))
    }

    /// The stack builder: one layer and its handles from this config.
    pub fn stack(&self) -> StackBuilder<'_> {
        StackBuilder::new(self)
    }

    /// The longest a graceful shutdown can take before its cleanup hooks
    /// run: `shutdown_delay + drain_timeout + abort_grace`. Each registered
    /// hook may add up to `shutdown.hook_timeout`; Kubernetes'
    /// `terminationGracePeriodSeconds` must exceed the sum.
    pub fn shutdown_budget(&self) -> Duration {
        self.shutdown.shutdown_delay + self.shutdown.drain_timeout + self.shutdown.abort_grace
    }
}

/// Is one key path inside the other (`a.b` and `a.b[0].c`)?
fn related(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    !short.is_empty()
        && long.starts_with(short)
        && matches!(long.as_bytes().get(short.len()), None | Some(b'.' | b'['))
}

/// `1500ms` -> `1.5s`, for messages.
fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_nanos() % 1_000_000 == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{d:?}")
    }
}

/// Every problem of a rate-limit section: each quota on its own (so every
/// bad quota is reported), then the section as a whole.
fn validate_rate_limit(rl: &RateLimitConfig) -> Vec<ConfigError> {
    // Validate against the in-process store: checking the quotas must not
    // open a Redis connection (nor need a runtime, so `load` works in sync
    // code). A Redis store's own settings are checked, with their key paths,
    // when the stack is built.
    let rl = &RateLimitConfig {
        store: crate::rate_limit::StoreConfig::InProcess,
        ..rl.clone()
    };
    let mut errors = Vec::new();
    if rl.quotas.len() > 1 {
        for (i, q) in rl.quotas.iter().enumerate() {
            let single = RateLimitConfig {
                quotas: vec![q.clone()],
                ..rl.clone()
            };
            if let Err(e) = single.build().map(drop) {
                let field = e.field();
                if let Some(rest) = field.strip_prefix("quotas[0]") {
                    errors.push(ConfigError::new(
                        format!("quotas[{i}]{rest}"),
                        e.message().to_owned(),
                    ));
                }
            }
        }
    }
    if errors.is_empty() {
        if let Err(e) = rl.build().map(drop) {
            errors.push(e);
        }
    }
    errors
}
