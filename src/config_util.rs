//! Parsing of the human-friendly values used in configs: durations such as
//! `"250ms"` or `"5s"`, and the upper bound every duration setting has.
//! Used by every layer's `serde` config and builder.

use std::time::Duration;

use crate::ConfigError;

/// One minute.
pub(crate) const MINUTE: Duration = Duration::from_secs(60);
/// One hour.
pub(crate) const HOUR: Duration = Duration::from_secs(3600);
/// One day.
pub(crate) const DAY: Duration = Duration::from_secs(86_400);

/// Refuses a zero duration, naming `field`: the common "must be greater
/// than 0".
pub(crate) fn positive(
    field: impl Into<std::borrow::Cow<'static, str>>,
    value: Duration,
) -> Result<(), ConfigError> {
    if value.is_zero() {
        Err(ConfigError::new(field, MUST_BE_POSITIVE))
    } else {
        Ok(())
    }
}

/// The message of a zero (or empty) value where one is required.
pub(crate) const MUST_BE_POSITIVE: &str = "must be greater than 0";

/// The message of an empty name.
pub(crate) const MUST_NOT_BE_EMPTY: &str = "must not be empty";

/// Refuses a duration above `max`, naming `field` and the bound: a
/// `"1000h"` where `"1000ms"` was meant is a typo, not a setting.
pub(crate) fn at_most(
    field: impl Into<std::borrow::Cow<'static, str>>,
    value: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if value > max {
        Err(ConfigError::new(
            field,
            format!("must be at most {} (found {})", human(max), human(value)),
        ))
    } else {
        Ok(())
    }
}

/// `3600s` -> `1h`, `90s` -> `1m30s`, `1500ms` -> `1.5s`, for messages.
pub(crate) fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 {
        return if secs >= 60 {
            format!("{}s", d.as_secs_f64())
        } else {
            format!("{d:?}")
        };
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Parses a duration written as a number and a unit: `ns`, `us`, `ms`, `s`,
/// `m`, `h` (e.g. `"250ms"`, `"1.5s"`, `"2m"`). Compound values such as
/// `"1m30s"` are accepted too.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err(
            "expected a duration such as \"250ms\" or \"5s\", found an empty string".into(),
        );
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("`{text}`: missing unit (use ns, us, ms, s, m or h)"))?;
        if num_len == 0 {
            return Err(format!(
                "`{text}`: expected a number and a unit, such as \"250ms\" or \"5s\""
            ));
        }
        let (num, tail) = rest.split_at(num_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("`{text}`: `{num}` is not a number"))?;
        let nanos_per_unit: f64 = match unit.trim() {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" | "sec" | "secs" => 1e9,
            "m" | "min" | "mins" => 60e9,
            "h" | "hr" | "hrs" => 3600e9,
            other => {
                return Err(format!(
                    "`{text}`: unknown unit `{other}` (use ns, us, ms, s, m or h)"
                ));
            }
        };
        let nanos = value * nanos_per_unit;
        if !nanos.is_finite() || nanos > u64::MAX as f64 {
            return Err(format!("`{text}`: too large"));
        }
        total = total.saturating_add(Duration::from_nanos(nanos.round() as u64));
        rest = next;
    }
    Ok(total)
}

/// `serde` glue: `#[serde(with = "crate::config_util::duration")]`.
#[cfg(feature = "config")]
#[allow(dead_code)] // used by the layers' configs
pub(crate) mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// `serde` glue for `Option<Duration>`:
/// `#[serde(default, with = "crate::config_util::opt_duration")]`.
#[cfg(feature = "config")]
#[allow(dead_code)] // used by the layers' configs
pub(crate) mod opt_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| super::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration(" 1.5s "), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "5",
            "ms",
            "5 parsecs",
            "1..2s",
            "-1s",
            "1e400s",
            "1s banana",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_duration("banana").unwrap_err(),
            "`banana`: expected a number and a unit, such as \"250ms\" or \"5s\""
        );
    }

    #[test]
    fn bounds_name_the_field_and_the_bound() {
        assert!(at_most("timeout", HOUR, HOUR).is_ok());
        let e = at_most("timeout", HOUR + Duration::from_nanos(1), HOUR).unwrap_err();
        assert_eq!(e.field(), "timeout");
        assert_eq!(e.message(), "must be at most 1h (found 3600.000000001s)");
        let e = at_most("x", parse_duration("1000h").unwrap(), DAY).unwrap_err();
        assert_eq!(e.to_string(), "x: must be at most 24h (found 1000h)");
        assert_eq!(human(Duration::from_secs(90)), "1m30s");
        assert_eq!(human(Duration::from_secs(3661)), "1h1m1s");
        assert_eq!(human(Duration::ZERO), "0s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human(10 * MINUTE), "10m");
    }
}
