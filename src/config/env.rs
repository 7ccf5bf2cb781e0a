// Past ~500 lines: about 400 lines of code, the rest its unit tests.
//! Environment-variable overrides: `RAMPART_TIMEOUT__TIMEOUT=2s` sets
//! `timeout.timeout` (see the module docs of [`crate::config`]), and the
//! [`ConfigLoader`] that chooses their prefix.

use std::ffi::OsString;
use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, Visitor};
use toml::{Table, Value};

use super::{ConfigErrors, ENV_PREFIX, RampartConfig};
use crate::ConfigError;

/// A variable with the prefix that was ignored because it names no
/// configuration section: Kubernetes injects `RAMPART_PORT`,
/// `RAMPART_SERVICE_HOST`, `RAMPART_PORT_8080_TCP_ADDR`... into every pod of
/// a namespace with a Service named `rampart`. Loading goes on; each
/// warning is returned and logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    variable: String,
    message: String,
}

impl ConfigWarning {
    /// The variable's name.
    pub fn variable(&self) -> &str {
        &self.variable
    }

    /// Why it was ignored.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.message)
    }
}

/// A validated configuration and the warnings found while reading it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Loaded {
    /// The configuration.
    pub config: RampartConfig,
    /// Environment variables that were ignored (already logged).
    pub warnings: Vec<ConfigWarning>,
}

/// Reads a [`RampartConfig`]: the TOML file, then the environment
/// overrides under a prefix (`RAMPART_` unless
/// [`env_prefix`](Self::env_prefix) says otherwise), then validation.
/// Made by [`RampartConfig::loader`].
///
/// A variable with the prefix whose first level names no section
/// (`RAMPART_PORT`, `RAMPART_SERVICE_HOST`) is a [`ConfigWarning`], logged
/// at WARN and returned: Kubernetes injects such variables for a Service
/// named after the prefix, and a pod must still start. A variable that
/// names a known section is applied, and a bad key or value in it is an
/// error like one in the file.
///
/// ```
/// use tower_rampart::config::RampartConfig;
///
/// let loaded = RampartConfig::loader()
///     .env_prefix("CHECKOUT")? // `_` is appended
///     .from_toml_with_env(
///         "[timeout]\ntimeout = \"5s\"",
///         [
///             ("CHECKOUT_TIMEOUT__TIMEOUT", "2s"),
///             ("CHECKOUT_SERVICE_HOST", "10.0.0.1"), // from Kubernetes
///             ("RAMPART_TIMEOUT__TIMEOUT", "9s"),    // another prefix
///         ],
///     )?;
/// assert_eq!(loaded.config.timeout.timeout, std::time::Duration::from_secs(2));
/// assert_eq!(loaded.warnings[0].variable(), "CHECKOUT_SERVICE_HOST");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConfigLoader {
    prefix: String,
}

impl Default for ConfigLoader {
    fn default() -> Self {
        Self {
            prefix: ENV_PREFIX.to_owned(),
        }
    }
}

impl ConfigLoader {
    /// The prefix of the override variables (default [`ENV_PREFIX`],
    /// `RAMPART_`): ASCII letters, digits and `_`, not starting with a
    /// digit; a `_` is appended when it does not end with one. Choose one
    /// no Kubernetes Service in the namespace is named after, to keep the
    /// injected variables out of the way.
    pub fn env_prefix(mut self, prefix: &str) -> Result<Self, ConfigError> {
        let valid = prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && prefix.bytes().next().is_some_and(|b| !b.is_ascii_digit())
            && prefix.bytes().any(|b| b != b'_');
        if !valid {
            return Err(ConfigError::new(
                "env_prefix",
                format!(
                    "`{prefix}` must be ASCII letters, digits and `_`, not start with a digit, and name something (such as MYAPP_)"
                ),
            ));
        }
        self.prefix = prefix.to_owned();
        if !self.prefix.ends_with('_') {
            self.prefix.push('_');
        }
        Ok(self)
    }

    /// The prefix, ending with `_`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Reads the TOML file at `path`, applies the overrides from the
    /// process environment and validates the result.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Loaded, ConfigErrors> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::from(ConfigError::new(
                "",
                format!("cannot read {}: {e}", path.display()),
            ))
        })?;
        self.read(&text, process_vars(&self.prefix))
    }

    /// Parses TOML text, applies the overrides found in `vars` (pairs of
    /// name and value; names without the prefix are ignored) and validates
    /// the result.
    pub fn from_toml_with_env<I, K, V>(&self, text: &str, vars: I) -> Result<Loaded, ConfigErrors>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let vars = vars
            .into_iter()
            .filter(|(k, _)| k.as_ref().starts_with(&self.prefix))
            .map(|(k, v)| (k.as_ref().to_owned(), Some(v.as_ref().to_owned())))
            .collect();
        self.read(text, vars)
    }

    fn read(
        &self,
        text: &str,
        vars: Vec<(String, Option<String>)>,
    ) -> Result<Loaded, ConfigErrors> {
        let (config, warnings) = RampartConfig::parse(text, &self.prefix, vars)?;
        for w in &warnings {
            tracing::warn!(
                target: "tower_rampart::config",
                variable = %w.variable,
                prefix = %self.prefix,
                "environment variable ignored: it names no config section"
            );
        }
        Ok(Loaded { config, warnings })
    }
}

/// The process's variables with `prefix`. Names that are not UTF-8 cannot
/// name a key (keys are ASCII): kept with a lossy name, so they end up as
/// warnings; values that are not UTF-8 are `None`.
fn process_vars(prefix: &str) -> Vec<(String, Option<String>)> {
    std::env::vars_os()
        .filter(|(k, _)| k.as_encoded_bytes().starts_with(prefix.as_bytes()))
        .map(|(k, v): (OsString, OsString)| {
            (k.to_string_lossy().into_owned(), v.into_string().ok())
        })
        .collect()
}

/// The fields a `Deserialize` struct names (for `RampartConfig`: its
/// sections), read from what its derived impl passes to
/// `deserialize_struct`. Empty if it does not ask for a struct.
pub(super) fn struct_fields<'de, T: serde::Deserialize<'de>>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

enum Segment {
    Key(String),
    Index(usize),
}

/// What applying the variables did: the key paths set and the variable
/// that set each, and the variables ignored.
#[derive(Debug)]
pub(super) struct Applied {
    pub(super) set: Vec<(String, String)>,
    pub(super) warnings: Vec<ConfigWarning>,
}

/// Applies every variable of `vars` whose name starts with `prefix` to
/// `table`. A variable whose first level is not one of `sections` is a
/// warning (every section counts as known when `sections` is empty); every
/// variable that names a section but cannot be applied is an error.
pub(super) fn apply(
    table: &mut Table,
    prefix: &str,
    sections: &[&str],
    vars: Vec<(String, Option<String>)>,
) -> Result<Applied, ConfigErrors> {
    let mut vars: Vec<(String, Option<String>)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .collect();
    // A stable order in which array indexes compare as numbers, so that
    // `..__QUOTAS__2__RATE` comes before `..__QUOTAS__10__RATE`.
    vars.sort_by_cached_key(|(name, _)| {
        name.split("__")
            .map(|seg| match seg.parse::<usize>() {
                Ok(i) => (1, i, String::new()),
                Err(_) => (0, 0, seg.to_owned()),
            })
            .collect::<Vec<_>>()
    });
    let mut set = Vec::new();
    let mut warnings = Vec::new();
    let mut errors = Vec::new();
    let mut root = Value::Table(std::mem::take(table));
    for (name, raw) in vars {
        let rest = &name[prefix.len()..];
        let first = rest
            .split("__")
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !sections.is_empty() && !sections.contains(&first.as_str()) {
            warnings.push(ConfigWarning {
                message: format!(
                    "ignored: names no config section (sections: {}; variables are {prefix}SECTION__KEY)",
                    sections.join(", ")
                ),
                variable: name,
            });
            continue;
        }
        let segments = match parse_name(rest) {
            Some(s) => s,
            None => {
                errors.push(ConfigError::new(
                    first,
                    format!(
                        "{name}: not a key path (use {prefix}SECTION__KEY, `__` between levels)"
                    ),
                ));
                continue;
            }
        };
        let path = display_path(&segments);
        let Some(raw) = raw else {
            errors.push(ConfigError::new(
                path,
                format!("the value is not valid UTF-8 (set by {name})"),
            ));
            continue;
        };
        match set_value(&mut root, &segments, parse_value(&raw)) {
            Ok(()) => set.push((path, name)),
            Err(message) => {
                errors.push(ConfigError::new(path, format!("{message} (set by {name})")))
            }
        }
    }
    if let Value::Table(t) = root {
        *table = t;
    }
    if errors.is_empty() {
        Ok(Applied { set, warnings })
    } else {
        Err(ConfigErrors { errors })
    }
}

fn parse_name(rest: &str) -> Option<Vec<Segment>> {
    if rest.is_empty() {
        return None;
    }
    rest.split("__")
        .map(|s| {
            if s.is_empty() {
                None
            } else if s.bytes().all(|b| b.is_ascii_digit()) {
                s.parse().ok().map(Segment::Index)
            } else {
                Some(Segment::Key(s.to_ascii_lowercase()))
            }
        })
        .collect()
}

fn display_path(segments: &[Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A TOML value when the text is one (`20`, `false`, `"x"`, `[1, 2]`),
/// otherwise the text as a string (`2s`, `100/s`, `0.0.0.0:80`).
fn parse_value(raw: &str) -> Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<Table>(&doc) {
        Ok(mut t) if t.len() == 1 => t
            .remove("v")
            .unwrap_or_else(|| Value::String(raw.to_owned())),
        _ => Value::String(raw.to_owned()),
    }
}

fn set_value(at: &mut Value, segments: &[Segment], value: Value) -> Result<(), String> {
    let Some((first, rest)) = segments.split_first() else {
        *at = value;
        return Ok(());
    };
    match first {
        Segment::Key(key) => {
            let Value::Table(table) = at else {
                return Err(format!("cannot set `{key}`: its parent is not a table"));
            };
            if rest.is_empty() {
                table.insert(key.clone(), value);
                return Ok(());
            }
            let child = table.entry(key.clone()).or_insert_with(|| match rest[0] {
                Segment::Index(_) => Value::Array(Vec::new()),
                Segment::Key(_) => Value::Table(Table::new()),
            });
            set_value(child, rest, value)
        }
        Segment::Index(i) => {
            let Value::Array(items) = at else {
                return Err(format!("cannot index [{i}]: not an array"));
            };
            if *i == items.len() {
                items.push(if rest.is_empty() {
                    Value::Boolean(false)
                } else {
                    Value::Table(Table::new())
                });
            }
            let len = items.len();
            match items.get_mut(*i) {
                Some(item) => set_value(item, rest, value),
                None => Err(format!(
                    "index {i} is out of range (the array has {} item{})",
                    len,
                    if len == 1 { "" } else { "s" }
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECTIONS: &[&str] = &[
        "listen",
        "probes",
        "health",
        "shutdown",
        "rate_limit",
        "circuit_breaker",
        "timeout",
    ];

    fn vars(v: &[(&str, &str)]) -> Vec<(String, Option<String>)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), Some(v.to_string())))
            .collect()
    }

    fn run(toml: &str, v: &[(&str, &str)]) -> Result<(Table, Vec<ConfigWarning>), ConfigErrors> {
        let mut t: Table = toml::from_str(toml).unwrap();
        apply(&mut t, "RAMPART_", SECTIONS, vars(v)).map(|a| (t, a.warnings))
    }

    #[test]
    fn the_sections_are_read_from_the_config_type() {
        let fields = struct_fields::<RampartConfig>();
        for s in SECTIONS {
            assert!(fields.contains(s), "{s} not in {fields:?}");
        }
        // Not a struct: no fields, so nothing is treated as unknown.
        assert!(struct_fields::<String>().is_empty());
    }

    #[test]
    fn sets_values_with_types() {
        let (t, warnings) = run(
            "[rate_limit]\nquotas = [{ rate = \"1/s\" }]\n",
            &[
                ("RAMPART_LISTEN", "0.0.0.0:9000"),
                ("RAMPART_TIMEOUT__TIMEOUT", "2s"),
                ("RAMPART_SHUTDOWN__SIGNALS", "false"),
                ("RAMPART_CIRCUIT_BREAKER__MINIMUM_CALLS", "20"),
                ("RAMPART_RATE_LIMIT__QUOTAS__0__RATE", "100/s"),
                ("RAMPART_RATE_LIMIT__QUOTAS__1__RATE", "5/s"),
                ("RAMPART_HEALTH__NAME", "'123'"),
                ("OTHER_LISTEN", "ignored"),
            ],
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(t["listen"].as_str(), Some("0.0.0.0:9000"));
        assert_eq!(t["timeout"]["timeout"].as_str(), Some("2s"));
        assert_eq!(t["shutdown"]["signals"].as_bool(), Some(false));
        assert_eq!(t["circuit_breaker"]["minimum_calls"].as_integer(), Some(20));
        assert_eq!(t["rate_limit"]["quotas"][0]["rate"].as_str(), Some("100/s"));
        assert_eq!(t["rate_limit"]["quotas"][1]["rate"].as_str(), Some("5/s"));
        assert_eq!(t["health"]["name"].as_str(), Some("123"));
    }

    /// What Kubernetes injects into every pod of the namespace for a
    /// Service named `rampart` with ports 8080 (named http) and 9090
    /// (docker-link and service-discovery variables).
    #[test]
    fn kubernetes_service_variables_are_warnings() {
        let k8s = [
            ("RAMPART_PORT", "tcp://10.0.0.1:8080"),
            ("RAMPART_PORT_8080_TCP", "tcp://10.0.0.1:8080"),
            ("RAMPART_PORT_8080_TCP_PROTO", "tcp"),
            ("RAMPART_PORT_8080_TCP_PORT", "8080"),
            ("RAMPART_PORT_8080_TCP_ADDR", "10.0.0.1"),
            ("RAMPART_PORT_9090_UDP_ADDR", "10.0.0.1"),
            ("RAMPART_SERVICE_HOST", "10.0.0.1"),
            ("RAMPART_SERVICE_PORT", "8080"),
            ("RAMPART_SERVICE_PORT_HTTP", "8080"),
            // Services named `rampart-listen` and `rampart-timeout`.
            ("RAMPART_LISTEN_SERVICE_HOST", "10.0.0.2"),
            ("RAMPART_TIMEOUT_PORT", "tcp://10.0.0.3:80"),
            // Not Kubernetes, but no section either.
            ("RAMPART_", "1"),
            ("RAMPART_A____B", "1"),
            ("RAMPART_0__X", "1"),
        ];
        let mut all = k8s.to_vec();
        all.push(("RAMPART_LISTEN", "0.0.0.0:9000"));
        let (t, warnings) = run("", &all).unwrap();
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t["listen"].as_str(), Some("0.0.0.0:9000"));
        let mut named: Vec<&str> = warnings.iter().map(|w| w.variable()).collect();
        named.sort_unstable();
        let mut want: Vec<&str> = k8s.iter().map(|(k, _)| *k).collect();
        want.sort_unstable();
        assert_eq!(named, want);
        assert!(
            warnings[0].to_string().contains("names no config section"),
            "{}",
            warnings[0]
        );
        // An empty list of sections knows every section (the old rule):
        // the unknown key is left to deserialisation to report.
        let mut t = Table::new();
        let a = apply(&mut t, "RAMPART_", &[], vars(&[("RAMPART_PORT", "1")])).unwrap();
        assert!(a.warnings.is_empty());
        assert_eq!(t["port"].as_integer(), Some(1));
    }

    #[test]
    fn reports_every_bad_variable() {
        let errs = run(
            "listen = \"x\"\n[rate_limit]\nquotas = []\n",
            &[
                ("RAMPART_RATE_LIMIT__QUOTAS__3__RATE", "1/s"),
                ("RAMPART_LISTEN__PORT", "1"),
                ("RAMPART_TIMEOUT____X", "1"),
                ("RAMPART_SHUTDOWN__", "1"),
            ],
        )
        .unwrap_err();
        let fields: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 4, "{fields:?}");
        assert!(fields.iter().any(|f| f.starts_with(
            "rate_limit.quotas[3].rate: index 3 is out of range (the array has 0 items) (set by RAMPART_RATE_LIMIT__QUOTAS__3__RATE)"
        )), "{fields:?}");
        assert!(
            fields
                .iter()
                .any(|f| f.starts_with("listen.port: cannot set `port`")),
            "{fields:?}"
        );
        assert!(
            fields
                .iter()
                .any(|f| f.starts_with("timeout: RAMPART_TIMEOUT____X: not a key path")),
            "{fields:?}"
        );
    }

    #[test]
    fn a_value_that_is_not_utf8_is_an_error_for_a_known_key() {
        let mut t = Table::new();
        let e = apply(
            &mut t,
            "RAMPART_",
            SECTIONS,
            vec![
                ("RAMPART_TIMEOUT__NAME".to_owned(), None),
                ("RAMPART_PORT".to_owned(), None),
            ],
        )
        .unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(
            e.iter().next().unwrap().to_string(),
            "timeout.name: the value is not valid UTF-8 (set by RAMPART_TIMEOUT__NAME)"
        );
    }

    #[test]
    fn prefixes() {
        let l = ConfigLoader::default();
        assert_eq!(l.prefix(), "RAMPART_");
        assert_eq!(l.clone().env_prefix("MYAPP").unwrap().prefix(), "MYAPP_");
        assert_eq!(l.clone().env_prefix("MY_APP_").unwrap().prefix(), "MY_APP_");
        for bad in ["", "_", "__", "1APP", "MY-APP", "MYAPP ", "ÄPP"] {
            assert_eq!(
                l.clone().env_prefix(bad).unwrap_err().field(),
                "env_prefix",
                "{bad:?}"
            );
        }
    }
}
