//! Quotas as people say them: `100 per second, burst 20`, `"1000/h"`.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::key::KeyExtractor;
use crate::ConfigError;

/// A sustained rate: `count` requests (cost units) per `per`.
///
/// Parsed from text as `"<count>/<unit>"`: `"100/s"`, `"10/min"`,
/// `"1000/h"`, `"50000/d"`, or with a duration as the unit: `"5/250ms"`,
/// `"30/10s"`.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::rate_limit::Rate;
///
/// let rate: Rate = "1000/h".parse().unwrap();
/// assert_eq!(rate, Rate::per_hour(1000));
/// assert_eq!(rate.per(), Duration::from_secs(3600));
/// assert!("100/fortnight".parse::<Rate>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    count: u32,
    per: Duration,
}

impl Rate {
    /// `count` per `per` (validated when the layer is built).
    pub const fn new(count: u32, per: Duration) -> Self {
        Self { count, per }
    }

    /// `count` per second.
    pub const fn per_second(count: u32) -> Self {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` per minute.
    pub const fn per_minute(count: u32) -> Self {
        Self::new(count, Duration::from_secs(60))
    }

    /// `count` per hour.
    pub const fn per_hour(count: u32) -> Self {
        Self::new(count, Duration::from_secs(3600))
    }

    /// `count` per day.
    pub const fn per_day(count: u32) -> Self {
        Self::new(count, Duration::from_secs(86_400))
    }

    /// How many units per period.
    pub const fn count(&self) -> u32 {
        self.count
    }

    /// The period.
    pub const fn per(&self) -> Duration {
        self.per
    }

    /// The time one unit takes to replenish (`per / count`).
    pub(crate) fn replenish_one(&self) -> Duration {
        self.per / self.count.max(1)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.count == 0 {
            return Err(ConfigError::new(
                "rate",
                crate::config_util::MUST_BE_POSITIVE,
            ));
        }
        if self.per.is_zero() {
            return Err(ConfigError::new(
                "rate",
                "the period must be greater than 0",
            ));
        }
        if self.replenish_one() < Duration::from_nanos(1) {
            return Err(ConfigError::new(
                "rate",
                "too fast: one unit must take at least 1ns to replenish",
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.per.as_secs() {
            1 if self.per.subsec_nanos() == 0 => write!(f, "{}/s", self.count),
            60 if self.per.subsec_nanos() == 0 => write!(f, "{}/min", self.count),
            3600 if self.per.subsec_nanos() == 0 => write!(f, "{}/h", self.count),
            86_400 if self.per.subsec_nanos() == 0 => write!(f, "{}/d", self.count),
            _ => write!(f, "{}/{}ns", self.count, self.per.as_nanos()),
        }
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (count, unit) = text.split_once('/').ok_or_else(|| {
            format!("`{text}`: expected `<count>/<unit>` such as \"100/s\" or \"1000/h\"")
        })?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| format!("`{text}`: `{}` is not a whole number", count.trim()))?;
        let unit = unit.trim();
        let per = match unit {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            other => crate::config_util::parse_duration(other).map_err(|_| {
                format!(
                    "`{text}`: unknown unit `{other}` (use s, min, h, d or a duration such as 250ms)"
                )
            })?,
        };
        let rate = Rate::new(count, per);
        rate.validate()
            .map_err(|e| format!("`{text}`: {}", e.message()))?;
        Ok(rate)
    }
}

/// One limit of a layer: a [`Rate`], a burst, the key it is counted by and a
/// name (used in the `RateLimit` headers, in metrics and in refusals).
///
/// The burst is how many units may be taken at once from a full bucket; it
/// defaults to the rate's count (`100/s` allows a burst of 100). Requests
/// are admitted by GCRA (the `governor` crate): after a burst, one unit comes
/// back every `per / count`.
///
/// ```
/// use tower_rampart::rate_limit::{KeyExtractor, Quota};
///
/// // 10 per second per client IP, at most 20 at once.
/// let per_ip = Quota::per_second(10).burst(20).key(KeyExtractor::client_ip());
/// // 1000 per second for everybody together.
/// let global = Quota::per_second(1000).name("global");
/// # let _ = (per_ip, global);
/// ```
#[derive(Clone, Debug)]
pub struct Quota {
    pub(crate) rate: Rate,
    pub(crate) burst: Option<u32>,
    pub(crate) key: KeyExtractor,
    pub(crate) name: Option<Cow<'static, str>>,
}

impl Quota {
    /// A quota of `rate`, global key, burst = the rate's count.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            burst: None,
            key: KeyExtractor::global(),
            name: None,
        }
    }

    /// `count` per second.
    pub fn per_second(count: u32) -> Self {
        Self::new(Rate::per_second(count))
    }

    /// `count` per minute.
    pub fn per_minute(count: u32) -> Self {
        Self::new(Rate::per_minute(count))
    }

    /// `count` per hour.
    pub fn per_hour(count: u32) -> Self {
        Self::new(Rate::per_hour(count))
    }

    /// How many units may be taken at once (must be at least 1).
    #[must_use]
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// What the quota is counted by (default: [`KeyExtractor::global`]).
    #[must_use]
    pub fn key(mut self, key: KeyExtractor) -> Self {
        self.key = key;
        self
    }

    /// The quota's name (default: the key's name, such as `client-ip`).
    /// Printable ASCII without `"` or `\`.
    #[must_use]
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// The burst (the rate's count when not set).
    pub fn burst_size(&self) -> u32 {
        self.burst.unwrap_or(self.rate.count)
    }

    /// The name the quota is reported under.
    pub fn display_name(&self) -> Cow<'static, str> {
        self.name
            .clone()
            .unwrap_or_else(|| Cow::Owned(self.key.default_name()))
    }

    /// The quota's GCRA parameters (checked as [`governor_quota`] checks).
    ///
    /// [`governor_quota`]: Self::governor_quota
    pub(crate) fn gcra(&self) -> Result<super::gcra::Gcra, ConfigError> {
        let q = self.governor_quota()?;
        let t = u64::try_from(q.replenish_interval().as_nanos()).unwrap_or(u64::MAX);
        Ok(super::gcra::Gcra::new(t, q.burst_size().get()))
    }

    pub(crate) fn governor_quota(&self) -> Result<governor::Quota, ConfigError> {
        self.rate.validate()?;
        let burst = std::num::NonZeroU32::new(self.burst_size())
            .ok_or_else(|| ConfigError::new("burst", crate::config_util::MUST_BE_POSITIVE))?;
        let quota = governor::Quota::with_period(self.rate.replenish_one())
            .ok_or_else(|| ConfigError::new("rate", "the period must be greater than 0"))?;
        let name = self.display_name();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
        {
            return Err(ConfigError::new(
                "name",
                "must be non-empty printable ASCII without `\"` or `\\`",
            ));
        }
        Ok(quota.allow_burst(burst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!("100/s".parse(), Ok(Rate::per_second(100)));
        assert_eq!(" 10 / min ".parse(), Ok(Rate::per_minute(10)));
        assert_eq!("1000/h".parse(), Ok(Rate::per_hour(1000)));
        assert_eq!("7/day".parse(), Ok(Rate::per_day(7)));
        assert_eq!(
            "5/250ms".parse(),
            Ok(Rate::new(5, Duration::from_millis(250)))
        );
        for bad in ["", "100", "0/s", "x/s", "10/fortnight", "-1/s", "10/0s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?}");
        }
        assert_eq!(Rate::per_hour(3).to_string(), "3/h");
    }

    #[test]
    fn validates() {
        assert_eq!(
            Quota::per_second(0).governor_quota().unwrap_err().field(),
            "rate"
        );
        assert_eq!(
            Quota::per_second(5)
                .burst(0)
                .governor_quota()
                .unwrap_err()
                .field(),
            "burst"
        );
        assert_eq!(
            Quota::per_second(5)
                .name("a\"b")
                .governor_quota()
                .unwrap_err()
                .field(),
            "name"
        );
        let q = Quota::per_second(100).burst(20).governor_quota().unwrap();
        assert_eq!(q.burst_size().get(), 20);
        assert_eq!(q.replenish_interval(), Duration::from_millis(10));
    }
}
