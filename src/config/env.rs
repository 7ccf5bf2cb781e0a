//! Environment-variable overrides: `RAMPART_TIMEOUT__TIMEOUT=2s` sets
//! `timeout.timeout` (see the module docs of [`crate::config`]).

use toml::{Table, Value};

use super::ConfigErrors;
use crate::ConfigError;

enum Segment {
    Key(String),
    Index(usize),
}

/// Applies every variable of `vars` whose name starts with `prefix` to
/// `table`; returns the key paths set and the variable that set each, or
/// every variable that could not be applied.
pub(super) fn apply<I, K, V>(
    table: &mut Table,
    prefix: &str,
    vars: I,
) -> Result<Vec<(String, String)>, ConfigErrors>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.as_ref().starts_with(prefix))
        .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
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
    let mut applied = Vec::new();
    let mut errors = Vec::new();
    let mut root = Value::Table(std::mem::take(table));
    for (name, raw) in vars {
        let segments = match parse_name(&name[prefix.len()..]) {
            Some(s) => s,
            None => {
                errors.push(ConfigError::new(
                    "",
                    format!(
                        "{name}: not a key path (use {prefix}SECTION__KEY, `__` between levels)"
                    ),
                ));
                continue;
            }
        };
        let path = display_path(&segments);
        match set(&mut root, &segments, parse_value(&raw)) {
            Ok(()) => applied.push((path, name)),
            Err(message) => {
                errors.push(ConfigError::new(path, format!("{message} (set by {name})")))
            }
        }
    }
    if let Value::Table(t) = root {
        *table = t;
    }
    if errors.is_empty() {
        Ok(applied)
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

fn set(at: &mut Value, segments: &[Segment], value: Value) -> Result<(), String> {
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
            set(child, rest, value)
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
                Some(item) => set(item, rest, value),
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

    fn run(toml: &str, vars: &[(&str, &str)]) -> Result<Table, ConfigErrors> {
        let mut t: Table = toml::from_str(toml).unwrap();
        apply(&mut t, "RAMPART_", vars.iter().copied()).map(|_| t)
    }

    #[test]
    fn sets_values_with_types() {
        let t = run(
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
        assert_eq!(t["listen"].as_str(), Some("0.0.0.0:9000"));
        assert_eq!(t["timeout"]["timeout"].as_str(), Some("2s"));
        assert_eq!(t["shutdown"]["signals"].as_bool(), Some(false));
        assert_eq!(t["circuit_breaker"]["minimum_calls"].as_integer(), Some(20));
        assert_eq!(t["rate_limit"]["quotas"][0]["rate"].as_str(), Some("100/s"));
        assert_eq!(t["rate_limit"]["quotas"][1]["rate"].as_str(), Some("5/s"));
        assert_eq!(t["health"]["name"].as_str(), Some("123"));
    }

    #[test]
    fn reports_every_bad_variable() {
        let errs = run(
            "listen = \"x\"\n[rate_limit]\nquotas = []\n",
            &[
                ("RAMPART_RATE_LIMIT__QUOTAS__3__RATE", "1/s"),
                ("RAMPART_LISTEN__PORT", "1"),
                ("RAMPART_", "1"),
                ("RAMPART_A____B", "1"),
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
    }
}
