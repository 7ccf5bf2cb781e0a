//! Parsing of the human-friendly values used in configs: durations such as
//! `"250ms"` or `"5s"`. Used by every layer's `serde` config.

use std::time::Duration;

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
        for bad in ["", "5", "ms", "5 parsecs", "1..2s", "-1s", "1e400s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
