//! The server's settings, deserialisable behind the `config` feature.

use std::time::Duration;

use super::Server;
use crate::ConfigError;

/// What the server does when `max_connections` connections are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "config", derive(serde::Deserialize))]
#[cfg_attr(feature = "config", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum AtMaxConnections {
    /// Stop accepting until a connection closes (default): new clients wait
    /// in the kernel's listen backlog, then get refused by the kernel when
    /// it is full.
    #[default]
    Pause,
    /// Accept and close at once: the client sees the connection closed
    /// before any request is read, which it may retry elsewhere.
    Refuse,
}

impl AtMaxConnections {
    /// A stable name (`pause`, `refuse`).
    pub const fn as_str(self) -> &'static str {
        match self {
            AtMaxConnections::Pause => "pause",
            AtMaxConnections::Refuse => "refuse",
        }
    }
}

/// Settings of the [`serve`](super::serve) loop: connection hygiene and
/// HTTP/2 limits. Every default protects a server on the open internet.
///
/// With the `config` feature it deserialises from a file (durations as
/// `"250ms"`, `"5s"`; unknown keys are errors), as the `[server]` section
/// of [`RampartConfig`](crate::config::RampartConfig):
///
/// ```toml
/// [server]
/// header_read_timeout = "10s"
/// keep_alive_timeout = "60s"
/// max_connections = 10000
/// at_max_connections = "pause"
/// connection_grace = "5s"
/// http2_max_concurrent_streams = 200
/// http2_keep_alive_interval = "30s"
/// http2_keep_alive_timeout = "20s"
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "config", derive(serde::Deserialize))]
#[cfg_attr(feature = "config", serde(deny_unknown_fields, default))]
#[non_exhaustive]
pub struct ServerConfig {
    /// The name that labels metrics and events (default `server`).
    pub name: String,
    /// How long an HTTP/1 client may take to send a request's headers,
    /// counted from the moment the server waits for them: the connection's
    /// start, or the end of the previous response (slowloris protection;
    /// default 10s). It also applies before the protocol is known (a
    /// connection that sends nothing), so it bounds HTTP/1 idle time too.
    /// Checked a few times per period, not per request: a connection is
    /// closed after 1 to 1.25 times it.
    #[cfg_attr(feature = "config", serde(with = "crate::config_util::duration"))]
    pub header_read_timeout: Duration,
    /// A connection with no request in progress for this long is closed
    /// (HTTP/2: with GOAWAY). Default 60s; `"0s"` disables it.
    #[cfg_attr(feature = "config", serde(with = "crate::config_util::duration"))]
    pub keep_alive_timeout: Duration,
    /// At most this many connections open at once (default: no limit).
    pub max_connections: Option<usize>,
    /// What to do at `max_connections` (default `pause`).
    pub at_max_connections: AtMaxConnections,
    /// Once draining starts, how long a connection with no request in
    /// progress (taken from the listen backlog, or idle) gets to send one
    /// before it is closed; its request is answered with
    /// `Connection: close`. Default 5s, like Go's `http.Server.Shutdown`
    /// spares new connections; always cut to the drain deadline.
    #[cfg_attr(feature = "config", serde(with = "crate::config_util::duration"))]
    pub connection_grace: Duration,
    /// Set `TCP_NODELAY` on accepted connections (default true).
    pub tcp_nodelay: bool,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` (default 200).
    pub http2_max_concurrent_streams: u32,
    /// Send an HTTP/2 PING this often to detect dead peers (default 30s;
    /// `"0s"` disables it). Not free: while it is on, hyper takes a lock
    /// and reads the clock for every frame it receives and checks its
    /// timer on every wake-up of the connection, whatever the interval;
    /// about 2 % of h2c throughput on a small handler
    /// (`benches/README.md`, "The serve loop on h2c"). hyper, axum's
    /// `serve` and tonic leave it off by default.
    #[cfg_attr(feature = "config", serde(with = "crate::config_util::duration"))]
    pub http2_keep_alive_interval: Duration,
    /// Close the connection if a PING is not answered in this time
    /// (default 20s).
    #[cfg_attr(feature = "config", serde(with = "crate::config_util::duration"))]
    pub http2_keep_alive_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            name: "server".to_owned(),
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            max_connections: None,
            at_max_connections: AtMaxConnections::Pause,
            connection_grace: Duration::from_secs(5),
            tcp_nodelay: true,
            http2_max_concurrent_streams: 200,
            http2_keep_alive_interval: Duration::from_secs(30),
            http2_keep_alive_timeout: Duration::from_secs(20),
        }
    }
}

impl ServerConfig {
    /// Checks every setting without building anything (no task, signal
    /// handler or metric is registered); the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new(
                "name",
                crate::config_util::MUST_NOT_BE_EMPTY,
            ));
        }
        if self.header_read_timeout.is_zero() {
            return Err(ConfigError::new(
                "header_read_timeout",
                "must be greater than 0 (it is the slowloris protection)",
            ));
        }
        if self.max_connections == Some(0) {
            return Err(ConfigError::new(
                "max_connections",
                "must be greater than 0 (leave it out for no limit)",
            ));
        }
        if self.http2_max_concurrent_streams == 0 {
            return Err(ConfigError::new(
                "http2_max_concurrent_streams",
                crate::config_util::MUST_BE_POSITIVE,
            ));
        }
        if !self.http2_keep_alive_interval.is_zero() && self.http2_keep_alive_timeout.is_zero() {
            return Err(ConfigError::new(
                "http2_keep_alive_timeout",
                "must be greater than 0 while http2_keep_alive_interval is set",
            ));
        }
        Ok(())
    }

    /// Validates the settings and builds the [`Server`].
    pub fn build(self) -> Result<Server, ConfigError> {
        Server::from_config(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let field = |c: ServerConfig| c.build().unwrap_err().field().to_owned();
        assert_eq!(
            field(ServerConfig {
                name: String::new(),
                ..ServerConfig::default()
            }),
            "name"
        );
        assert_eq!(
            field(ServerConfig {
                header_read_timeout: Duration::ZERO,
                ..ServerConfig::default()
            }),
            "header_read_timeout"
        );
        assert_eq!(
            field(ServerConfig {
                max_connections: Some(0),
                ..ServerConfig::default()
            }),
            "max_connections"
        );
        assert_eq!(
            field(ServerConfig {
                http2_max_concurrent_streams: 0,
                ..ServerConfig::default()
            }),
            "http2_max_concurrent_streams"
        );
        assert_eq!(
            field(ServerConfig {
                http2_keep_alive_timeout: Duration::ZERO,
                ..ServerConfig::default()
            }),
            "http2_keep_alive_timeout"
        );
        assert!(ServerConfig::default().build().is_ok());
    }

    #[cfg(feature = "config")]
    #[test]
    fn deserialises() {
        let c: ServerConfig = serde_json::from_str(
            r#"{"header_read_timeout":"2s","max_connections":64,"at_max_connections":"refuse","keep_alive_timeout":"0s"}"#,
        )
        .unwrap();
        assert_eq!(c.header_read_timeout, Duration::from_secs(2));
        assert_eq!(c.max_connections, Some(64));
        assert_eq!(c.at_max_connections, AtMaxConnections::Refuse);
        assert!(c.keep_alive_timeout.is_zero());
        assert_eq!(c.connection_grace, Duration::from_secs(5));
        assert!(serde_json::from_str::<ServerConfig>(r#"{"header_timeout":"1s"}"#).is_err());
    }
}
