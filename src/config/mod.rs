// Past ~500 lines: about 190 lines are the module docs (the reference of
// the config file and its environment overrides).
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
//! everywhere, so a typo is never silently ignored. Reading the file comes
//! first and reports all its problems at once too: every syntax error the
//! TOML parser recovers from (at its line and column), else every wrong
//! type, unknown key and malformed value (at its key path); the settings
//! are validated once the file reads cleanly.
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
//! [concurrency]                 # optional: no section, no concurrency limit
//! limit = { algorithm = "gradient2" }   # fixed | aimd | vegas | gradient2
//!
//! [circuit_breaker]             # optional keys: defaults apply
//! failure_rate_threshold = 50.0
//! open_duration = "10s"
//!
//! [timeout]                     # optional: default 10s
//! timeout = "2s"
//!
//! [platform]                    # optional: these are the defaults
//! paths = ["/metrics"]          # served outside every protection
//! grpc_health = true            # grpc.health.v1 too
//!
//! [routes]                      # optional
//! per_route_breaker = true      # one breaker per route
//! paths = ["/api/ok", "/users/{id}"]   # matched by the stack itself
//! grpc_methods = ["/demo.Greeter/SayHello"]
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
//! and `RAMPART_TIMEOUT__TIMEOUT=banana` a bad value: errors, naming the
//! key and the variable.
//!
//! A variable whose first level names no section (`listen`, `probes`,
//! `health`, `shutdown`, `rate_limit`, `circuit_breaker`, `timeout`) is
//! ignored with a warning, not an error: Kubernetes injects
//! `RAMPART_PORT=tcp://10.0.0.1:80`, `RAMPART_SERVICE_HOST`,
//! `RAMPART_SERVICE_PORT`, `RAMPART_PORT_8080_TCP_ADDR`... into every pod
//! of a namespace with a Service named `rampart`, and such a pod must still
//! start. [`RampartConfig::loader`] returns the warnings ([`Loaded`]) and
//! takes another prefix ([`ConfigLoader::env_prefix`]), so no Service name
//! can collide with it; [`load`](RampartConfig::load) and
//! [`from_toml_with_env`](RampartConfig::from_toml_with_env) use
//! `RAMPART_`. Every warning is logged:
//!
//! | event | target | level | fields |
//! |---|---|---|---|
//! | `environment variable ignored: it names no config section` | `tower_rampart::config` | WARN | `variable`, `prefix` |
//!
//! # Bounds
//!
//! Every duration has an upper bound for its key, so a `"100h"` typed for
//! `"100ms"` is refused with the key path and the bound
//! (`timeout.timeout: must be at most 1h (found 100h)`):
//!
//! | at most | keys |
//! |---|---|
//! | 1 minute | `rate_limit.store.timeout` |
//! | 10 minutes | `shutdown.shutdown_delay`, `shutdown.sigint_delay`, `shutdown.abort_grace`, `shutdown.hook_timeout`, `rate_limit.wait`, `health.grpc_poll_interval` |
//! | 1 hour | `timeout.timeout`, `shutdown.drain_timeout`, `shutdown.retry_after`, `rate_limit.idle_sweep`, `rate_limit.store.open_duration`, `circuit_breaker.open_duration`, `circuit_breaker.slow_call_duration_threshold`, `circuit_breaker.max_wait_in_half_open` |
//! | 24 hours | `circuit_breaker.window.duration`, `circuit_breaker.backoff.max`, `circuit_breaker.key_idle_timeout` |
//!
//! `shutdown.force_exit_code` must be in `0..=255` (an exit status is one
//! byte: 256 would exit 0, "success").
//!
//! # The stack
//!
//! [`RampartConfig::stack`] builds the [`Stack`]: one [`RampartLayer`]
//! applying, outermost first,
//!
//! 1. the [probe layer](crate::health::ProbeLayer): `/livez`, `/readyz`,
//!    `/startupz` are answered before anything else, so probes are never
//!    rate limited, refused by a breaker, counted in flight or timed out;
//!    then the platform's endpoints ([`PlatformConfig`]: `/metrics` and
//!    `grpc.health.v1.Health/{Check,Watch,List}` by default, matched by the
//!    exact path) go to the application with panic catching only, skipping
//!    layers 2 to 6: they are neither refused nor counted by them, so a
//!    scrape answers while a breaker is open and a gRPC health check
//!    answers what `/readyz` answers (probes are never counted by the
//!    concurrency limit either);
//! 2. the [drain layer](crate::shutdown::DrainLayer): counts every request
//!    in flight for the graceful shutdown and refuses new ones while
//!    draining;
//! 3. the [rate limit](crate::rate_limit) (if configured): the cheapest
//!    refusal first, and a refused request never reaches the breaker's
//!    statistics;
//! 4. the [concurrency limit](crate::concurrency) (if configured): after
//!    the rate limit, so abusive clients are refused before they take a
//!    slot; outside the breaker and the timeout, so the server's timeout is
//!    observed as a dropped request (a back-off signal) and a breaker's
//!    refusal, which costs nothing, is ignored;
//! 5. the [circuit breaker](crate::circuit_breaker): one for every request,
//!    or one per route with [`RoutesConfig::per_route_breaker`] (declared
//!    gRPC methods, the route templates of [`RoutesConfig::paths`], which
//!    the stack matches itself so it can wrap the whole router, axum's
//!    matched path inside the router, and one `unmatched` breaker for the
//!    rest, so clients cannot create breakers);
//! 6. the [timeout](crate::timeout), inside the breaker, so a timed-out call
//!    reaches the breaker as a failure (504) rather than as a dropped call;
//! 7. the panic catcher ([`CatchPanic`]), innermost, so a panicking
//!    handler answers 500 (gRPC: `INTERNAL`) and counts as a failure too
//!    (and the connection survives); the panic is logged once (event
//!    `service panicked`, target `tower_rampart::config`, ERROR, field
//!    `panic`). Unlike tower-http's `CatchPanic` it does not box the
//!    response body.
//!
//! It hands back the [`Shutdown`](crate::shutdown::Shutdown) coordinator, the
//! [`HealthRegistry`](crate::health::HealthRegistry) and the breaker's
//! [`CircuitBreakerHandle`](crate::circuit_breaker::CircuitBreakerHandle)
//! ([`Stack::circuit_breaker`]), or the [`RouteBreakers`]
//! ([`Stack::route_breakers`]) when kept per route. The application
//! service is cloned once per `layer()` call (one copy serves the
//! platform's endpoints), never per request.
//!
//! The layer makes one service, [`Platform`], that does the work of all
//! seven in this order, each through that layer's own code, with one
//! future and one shared `Arc`: axum clones the stack for every request
//! under `Router::layer`, and seven nested layers would cost seven
//! reference counts per clone and seven moves of the application's future
//! and of its response (`benches/README.md`). The layers stay available
//! on their own, for stacks of your own.
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

mod catch_panic;
mod env;
mod platform;
mod routes;
mod stack;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::ConfigError;
use crate::circuit_breaker::CircuitBreakerConfig;
use crate::concurrency::ConcurrencyConfig;
use crate::health::ProbeConfig;
pub use crate::health::{BreakerReadiness, HealthConfig};
use crate::rate_limit::RateLimitConfig;
use crate::shutdown::ShutdownConfig;
use crate::timeout::TimeoutConfig;
use crate::util::route_paths::RoutePaths;

pub use catch_panic::{CatchPanic, CatchPanicFuture};
pub use env::{ConfigLoader, ConfigWarning, Loaded};
pub use platform::{GuardedBody, Platform, PlatformBody, PlatformFuture};
pub use routes::{RouteBreakers, RouteKey};
pub use stack::{RampartLayer, RampartService, Stack, StackBuilder};

/// The default prefix of the environment variables read by
/// [`RampartConfig::load`] (another one: [`ConfigLoader::env_prefix`]).
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
    /// The concurrency limit; without this section, requests in flight are
    /// not limited.
    #[serde(default)]
    pub concurrency: Option<ConcurrencyConfig>,
    /// The circuit breaker (every key optional).
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
    /// The request timeout (default 10 s).
    #[serde(default = "default_timeout")]
    pub timeout: TimeoutConfig,
    /// The platform's own endpoints, answered outside every protection
    /// (default: `/metrics` and `grpc.health.v1`).
    #[serde(default)]
    pub platform: PlatformConfig,
    /// How requests are told apart by route (a breaker per route).
    #[serde(default)]
    pub routes: RoutesConfig,
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
        deadline_extension: false,
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
            concurrency: None,
            circuit_breaker: CircuitBreakerConfig::default(),
            timeout: default_timeout(),
            platform: PlatformConfig::default(),
            routes: RoutesConfig::default(),
            #[cfg(feature = "serve")]
            server: crate::serve::ServerConfig::default(),
        }
    }
}

/// The platform's own endpoints: requests to them skip the drain, the rate
/// limit, the circuit breaker and the timeout (they are neither refused nor
/// counted), so a scrape or a gRPC health probe answers while a breaker is
/// open, a limit is spent or the server is draining. The probe paths
/// (`[probes]`) are always treated so.
///
/// The match is on the exact request path (the query string is not part of
/// it): `/metrics` bypasses, `/metrics/x`, `/metricsx` and
/// `/metrics/../api` do not.
///
/// ```toml
/// [platform]
/// paths = ["/metrics"]
/// grpc_health = true
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PlatformConfig {
    /// Exact paths served outside the protections (default `["/metrics"]`).
    pub paths: Vec<String>,
    /// Serve `grpc.health.v1.Health`'s methods (`Check`, `Watch`, `List`)
    /// outside the protections (default true).
    pub grpc_health: bool,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        Self {
            paths: vec!["/metrics".to_owned()],
            grpc_health: true,
        }
    }
}

/// Routes as the stack sees them: whether the circuit breaker is kept per
/// route, and which HTTP routes and gRPC methods count as routes.
///
/// ```toml
/// [routes]
/// per_route_breaker = true
/// paths = ["/api/ok", "/api/sleep/{ms}"]
/// grpc_methods = ["/demo.Greeter/SayHello"]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RoutesConfig {
    /// One circuit breaker per route instead of one for every request
    /// (default false). A request's route is, in this order: one of
    /// [`grpc_methods`](Self::grpc_methods), the template of
    /// [`paths`](Self::paths) it matches, axum's matched path (the route
    /// template, such as `/api/sleep/{ms}`, when the stack is applied inside
    /// the router); every other request shares one breaker named
    /// `unmatched`. A client cannot add routes, so the number of breakers is
    /// bounded by the application's routes.
    ///
    /// Declare the routes in [`paths`](Self::paths) and wrap the whole
    /// router with the stack (`tower::Layer::layer(&stack.layer(),
    /// router)`, as the `production` example does). Without them, the stack
    /// must be applied with `Router::layer`, where axum has set the matched
    /// path: axum then clones a route's service, the stack with it, for
    /// every request, which in the `real_server` bench costs about 1 000
    /// instructions and three allocations per request more than the stack
    /// around the router (`benches/README.md`).
    pub per_route_breaker: bool,
    /// HTTP route templates, written as axum writes them (`/api/ok`,
    /// `/users/{id}`, `/files/{*path}`), each with a breaker of its own when
    /// [`per_route_breaker`](Self::per_route_breaker) is on, and each a key
    /// of its own for a rate-limit quota keyed by `route`; the stack
    /// matches them itself, as axum's router would (a literal segment beats
    /// `{name}`, which beats `{*name}`), so it can wrap the whole router.
    /// A route the application serves but this list leaves out shares the
    /// `unmatched` breaker (or, inside the router, axum's matched path
    /// names it). Invalid or duplicate templates are errors naming
    /// `routes.paths[i]`.
    ///
    /// A declared route's breaker (a template's, or a
    /// [`grpc_methods`](Self::grpc_methods) entry's) is made with the stack
    /// and kept as long as it: listed by [`RouteBreakers`] and reported by
    /// its gauge from the start, never forgotten when idle and not counted against
    /// `circuit_breaker.max_keys`, which bounds the other routes' breakers
    /// (axum's matched paths, `unmatched`).
    ///
    /// A rate-limit quota keyed by `route` counts by the same template
    /// once any is declared: a request matching none counts as the one
    /// route `unmatched` (unless axum's matched path names it), never by
    /// its own path, which a client could vary to get a bucket per path.
    pub paths: Vec<String>,
    /// gRPC methods (`/package.Service/Method`) that get a breaker of their
    /// own when [`per_route_breaker`](Self::per_route_breaker) is on.
    pub grpc_methods: Vec<String>,
}

impl RoutesConfig {
    /// The declared [`paths`](Self::paths), parsed and in precedence order,
    /// or every problem, each naming `paths[i]`.
    pub(crate) fn route_paths(&self) -> Result<std::sync::Arc<RoutePaths>, Vec<ConfigError>> {
        RoutePaths::new(&self.paths)
            .map(std::sync::Arc::new)
            .map_err(|e| {
                e.into_iter()
                    .map(|(i, message)| ConfigError::new(format!("paths[{i}]"), message))
                    .collect()
            })
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
    /// overrides and validates the result. Variables that name no section
    /// are logged as warnings and ignored; [`loader`](Self::loader) returns
    /// them and takes another prefix.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigErrors> {
        ConfigLoader::default().load(path).map(|l| l.config)
    }

    /// A loader with a chosen environment prefix, which also returns the
    /// warnings ([`ConfigLoader`]).
    pub fn loader() -> ConfigLoader {
        ConfigLoader::default()
    }

    /// Parses and validates TOML text, without environment overrides.
    pub fn from_toml(text: &str) -> Result<Self, ConfigErrors> {
        Self::from_toml_with_env(text, std::iter::empty::<(String, String)>())
    }

    /// Parses TOML text, applies the overrides found in `vars` (pairs of
    /// name and value; names not starting with [`ENV_PREFIX`] are
    /// ignored) and validates the result. [`load`](Self::load) passes
    /// the process environment. Variables that name no section are logged
    /// as warnings and ignored.
    pub fn from_toml_with_env<I, K, V>(text: &str, vars: I) -> Result<Self, ConfigErrors>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        ConfigLoader::default()
            .from_toml_with_env(text, vars)
            .map(|l| l.config)
    }

    /// The file, the variables with `prefix` (already filtered), validation.
    fn parse(
        text: &str,
        prefix: &str,
        vars: Vec<(String, Option<String>)>,
    ) -> Result<(Self, Vec<ConfigWarning>), ConfigErrors> {
        let mut table = parse_table(text)?;
        let sections = env::struct_fields::<RampartConfig>();
        let env::Applied {
            set: applied,
            warnings,
        } = env::apply(&mut table, prefix, sections, vars)?;
        let config = deserialize_all(table, &applied)?;
        config.validate()?;
        Ok((config, warnings))
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
        for e in self.health.problems() {
            push(Err(e), "health");
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
        if let Some(c) = &self.concurrency {
            push(c.validate(), "concurrency");
        }
        push(self.circuit_breaker.validate(), "circuit_breaker");
        push(self.timeout.build().map(drop), "timeout");
        for e in self.validate_platform() {
            push(Err(e), "platform");
        }
        for e in self.validate_routes() {
            push(Err(e), "routes");
        }
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

    fn validate_platform(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let probes = [
            ("probes.liveness_path", &self.probes.liveness_path),
            ("probes.readiness_path", &self.probes.readiness_path),
            ("probes.startup_path", &self.probes.startup_path),
        ];
        for (i, p) in self.platform.paths.iter().enumerate() {
            let field = format!("paths[{i}]");
            if let Err(message) = check_path(p) {
                errors.push(ConfigError::new(field, message));
            } else if self.platform.paths[..i].contains(p) {
                errors.push(ConfigError::new(field, "is listed twice"));
            } else if let Some((key, _)) = probes.iter().find(|(_, q)| *q == p) {
                errors.push(ConfigError::new(
                    field,
                    format!("is already the probe path `{key}` (probes are answered first)"),
                ));
            }
        }
        errors
    }

    fn validate_routes(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        for (i, m) in self.routes.grpc_methods.iter().enumerate() {
            let field = format!("grpc_methods[{i}]");
            let shape = m
                .strip_prefix('/')
                .and_then(|rest| rest.split_once('/'))
                .is_some_and(|(svc, method)| {
                    !svc.is_empty() && !method.is_empty() && !method.contains('/')
                });
            if !shape || check_path(m).is_err() {
                errors.push(ConfigError::new(
                    field,
                    "must be a gRPC method path such as `/package.Service/Method`",
                ));
            } else if self.routes.grpc_methods[..i].contains(m) {
                errors.push(ConfigError::new(field, "is listed twice"));
            }
        }
        if let Err(e) = self.routes.route_paths() {
            errors.extend(e);
        }
        errors
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

/// The most problems reported from one file: a bound on the work done on a
/// hostile or garbled file.
const MAX_PROBLEMS: usize = 64;

/// Parses the TOML text, reporting every syntax error the parser recovers
/// from (each with its line and column), not only the first.
fn parse_table(text: &str) -> Result<toml::Table, ConfigErrors> {
    let (_, syntax) = toml::de::DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        let mut syntax = syntax;
        syntax.sort_by_key(|e| e.span().map_or(usize::MAX, |s| s.start));
        let mut errors: Vec<ConfigError> = Vec::new();
        for e in syntax.iter().take(MAX_PROBLEMS) {
            let message = e.message().trim();
            let message = match e.span() {
                Some(span) => {
                    let (line, column) = line_column(text, span.start);
                    format!("line {line}, column {column}: {message}")
                }
                None => message.to_owned(),
            };
            if !errors.iter().any(|x| x.message() == message) {
                errors.push(ConfigError::new("", message));
            }
        }
        return Err(ConfigErrors { errors });
    }
    toml::from_str(text)
        .map_err(|e| ConfigErrors::one(ConfigError::new("", e.message().trim().to_owned())))
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Deserialises the table, reporting every type problem (a wrong type, an
/// unknown key, a bad duration...) at once, each at its key path: after
/// each problem, the offending key is taken out of the table and the rest
/// is read again, so the next problem shows. A problem that only follows
/// from taking a key out (a required key now missing) is not reported.
fn deserialize_all(
    mut table: toml::Table,
    applied: &[(String, String)],
) -> Result<RampartConfig, ConfigErrors> {
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    loop {
        let e = match serde_path_to_error::deserialize::<_, RampartConfig>(table.clone()) {
            Ok(config) if errors.is_empty() => return Ok(config),
            Ok(_) => break,
            Err(e) => e,
        };
        let segments: Vec<serde_path_to_error::Segment> = e.path().iter().cloned().collect();
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = e.inner().message().trim().to_owned();
        if message.starts_with("missing field") && removed.iter().any(|r| related(&path, r)) {
            // Caused by a key taken out below: already reported.
            break;
        }
        let mut reported = message;
        if let Some(var) = applied
            .iter()
            .find_map(|(p, v)| related(&path, p).then_some(v))
        {
            reported.push_str(&format!(" (set by {var})"));
        }
        errors.push(ConfigError::new(path.clone(), reported));
        if errors.len() >= MAX_PROBLEMS || !take_out(&mut table, &segments) {
            break;
        }
        removed.push(path);
    }
    errors.sort_by(|a, b| a.field().cmp(b.field()));
    Err(ConfigErrors { errors })
}

/// Takes the key at `path` out of `table`, so deserialising again can go
/// past it. Only keys are taken out (also inside array elements): taking
/// out a whole array element would shift the indexes of the problems after
/// it, so the walk stops there.
fn take_out(table: &mut toml::Table, path: &[serde_path_to_error::Segment]) -> bool {
    use serde_path_to_error::Segment;
    fn table_at<'a>(table: &'a mut toml::Table, path: &[Segment]) -> Option<&'a mut toml::Table> {
        let Some((first, rest)) = path.split_first() else {
            return Some(table);
        };
        let Segment::Map { key } = first else {
            return None;
        };
        let mut v = table.get_mut(key.as_str())?;
        for seg in rest {
            v = match (seg, v) {
                (Segment::Map { key }, toml::Value::Table(t)) => t.get_mut(key.as_str())?,
                (Segment::Seq { index }, toml::Value::Array(a)) => a.get_mut(*index)?,
                _ => return None,
            };
        }
        v.as_table_mut()
    }
    let Some((Segment::Map { key }, parents)) = path.split_last() else {
        return false;
    };
    table_at(table, parents).is_some_and(|t| t.remove(key.as_str()).is_some())
}

/// Is one key path inside the other (`a.b` and `a.b[0].c`)?
fn related(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    !short.is_empty()
        && long.starts_with(short)
        && matches!(long.as_bytes().get(short.len()), None | Some(b'.' | b'['))
}

/// An exact request path: `/` then printable ASCII, no query or fragment.
fn check_path(p: &str) -> Result<(), &'static str> {
    if !p.starts_with('/') || p.len() < 2 {
        return Err("must start with `/` and not be `/` alone");
    }
    if p.bytes()
        .any(|b| b == b'?' || b == b'#' || !b.is_ascii_graphic())
    {
        return Err("must be printable ASCII without `?` or `#`");
    }
    Ok(())
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
///
/// Seam (issue 13): the only place left where `config` builds throwaway
/// layers to validate. Once `RateLimitConfig::validate()` exists (side-effect
/// free, every problem with its key path), this function becomes a call to
/// it, like the timeout, health and shutdown sections above.
fn validate_rate_limit(rl: &RateLimitConfig) -> Vec<ConfigError> {
    // Side-effect free: no layer is built, no Redis connection opened, no
    // runtime needed (so `load` works in sync code).
    rl.validate().err().unwrap_or_default()
}
