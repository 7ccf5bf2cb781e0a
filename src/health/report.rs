//! Probe verdicts and their two formats: kube-apiserver text and
//! `application/health+json`.

use crate::rejection::push_json_escaped;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::check::{ComponentType, Kind, Status};

/// The measurement every check reports in `application/health+json`: the
/// run's duration, so the key is `<name>:responseTime` (a measurement name
/// the draft predefines) and `observedValue` is in milliseconds.
const MEASUREMENT: &str = ":responseTime";

/// The verdict on one check.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The check's name.
    pub name: Arc<str>,
    /// The check's kind.
    pub kind: Kind,
    /// `pass`, `warn` (non-critical and failing) or `fail`.
    pub status: Status,
    /// Is the check critical?
    pub critical: bool,
    /// What the check looks at (`componentType` in
    /// `application/health+json`).
    pub component_type: ComponentType,
    /// Was it excluded from this probe (`?exclude=name`)?
    pub excluded: bool,
    /// Why it fails (`None` when passing).
    pub error: Option<Arc<str>>,
    /// How long its last run took.
    pub duration: Duration,
    /// When its last run finished (wall clock), if it ran.
    pub checked_at: Option<SystemTime>,
}

/// The verdict on a probe.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// Which probe.
    pub probe: Kind,
    /// `fail` if a critical check fails, `warn` if only non-critical ones
    /// do, else `pass`. Excluded checks do not count.
    pub status: Status,
    /// Every check of the probe, in registration order, excluded ones too.
    pub checks: Vec<CheckReport>,
    /// `?exclude=` names that match no check.
    pub unknown_excludes: Vec<String>,
}

impl ProbeReport {
    /// Does the probe pass (status `pass` or `warn`)?
    pub fn passed(&self) -> bool {
        self.status != Status::Fail
    }

    /// The kube-apiserver text: `ok` when passing and not verbose;
    /// otherwise one line per check (`[+]name ok`, `[+]name excluded: ok`,
    /// `[!]name warn: reason withheld`, `[-]name failed: reason withheld`),
    /// a warning line for unknown excludes, and the closing
    /// `<probe> check passed|failed` line.
    pub fn to_text(&self, verbose: bool) -> String {
        if self.passed() && !verbose {
            return "ok".to_owned();
        }
        let mut out = String::with_capacity(32 * (self.checks.len() + 2));
        for c in &self.checks {
            let _ = match (c.excluded, c.status) {
                (true, _) => writeln!(out, "[+]{} excluded: ok", c.name),
                (false, Status::Pass) => writeln!(out, "[+]{} ok", c.name),
                (false, Status::Warn) => writeln!(out, "[!]{} warn: reason withheld", c.name),
                (false, Status::Fail) => writeln!(out, "[-]{} failed: reason withheld", c.name),
            };
        }
        if !self.unknown_excludes.is_empty() {
            let quoted: Vec<String> = self
                .unknown_excludes
                .iter()
                .map(|n| format!("{n:?}"))
                .collect();
            let _ = writeln!(
                out,
                "warn: some health checks cannot be excluded: no matches for {}",
                quoted.join(",")
            );
        }
        let _ = writeln!(
            out,
            "{} check {}",
            self.probe.probe_name(),
            if self.passed() { "passed" } else { "failed" }
        );
        out
    }

    /// The `application/health+json` document
    /// (draft-inadarei-api-health-check): `status`, `description` (the
    /// probe), `checks` keyed `<name>:responseTime` (each an array of one
    /// object with `componentId` (the name), `componentType`
    /// ([`ComponentType`]: `component`, `datastore`, `system` or a URI),
    /// `status`, `time`, `observedValue`/`observedUnit` (the last run's
    /// duration in ms), `output` (`reason withheld` when failing); excluded
    /// checks are left out) and `notes` for unknown excludes.
    pub fn to_health_json(&self) -> String {
        let mut out = String::with_capacity(128 + 160 * self.checks.len());
        out.push_str("{\"status\":\"");
        out.push_str(self.status.as_str());
        out.push_str("\",\"description\":\"");
        out.push_str(self.probe.probe_name());
        out.push_str("\",\"checks\":{");
        let mut first = true;
        for c in self.checks.iter().filter(|c| !c.excluded) {
            if !first {
                out.push(',');
            }
            first = false;
            out.push('"');
            push_json_escaped(&mut out, &c.name);
            out.push_str(MEASUREMENT);
            out.push_str("\":[");
            c.push_json(&mut out, false);
            out.push(']');
        }
        out.push('}');
        if !self.unknown_excludes.is_empty() {
            out.push_str(",\"notes\":[");
            for (i, n) in self.unknown_excludes.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("\"cannot exclude `");
                push_json_escaped(&mut out, n);
                out.push_str("`: no such check\"");
            }
            out.push(']');
        }
        out.push('}');
        out
    }
}

impl CheckReport {
    /// Does the check pass? (A failing non-critical check does not.)
    pub fn passed(&self) -> bool {
        self.status == Status::Pass
    }

    /// The text of `/<probe>/<name>`: `ok`, or `[-]name failed: <error>`
    /// with the real error.
    pub fn to_text(&self) -> String {
        match &self.error {
            None => "ok".to_owned(),
            Some(e) => format!("[-]{} failed: {e}\n", self.name),
        }
    }

    /// The `application/health+json` document of `/<probe>/<name>`, with
    /// the real error as `output`.
    pub fn to_health_json(&self) -> String {
        let mut out = String::with_capacity(256);
        out.push_str("{\"status\":\"");
        out.push_str(self.status.as_str());
        out.push_str("\",\"description\":\"");
        push_json_escaped(&mut out, &self.name);
        out.push_str("\",\"checks\":{\"");
        push_json_escaped(&mut out, &self.name);
        out.push_str(MEASUREMENT);
        out.push_str("\":[");
        self.push_json(&mut out, true);
        out.push_str("]}}");
        out
    }

    fn push_json(&self, out: &mut String, reveal: bool) {
        out.push_str("{\"componentId\":\"");
        push_json_escaped(out, &self.name);
        out.push_str("\",\"componentType\":\"");
        push_json_escaped(out, self.component_type.as_str());
        out.push_str("\",\"status\":\"");
        out.push_str(self.status.as_str());
        out.push('"');
        if let Some(t) = self.checked_at {
            out.push_str(",\"time\":\"");
            out.push_str(&rfc3339(t));
            out.push('"');
        }
        let _ = write!(
            out,
            ",\"observedValue\":{:.3},\"observedUnit\":\"ms\"",
            self.duration.as_secs_f64() * 1000.0
        );
        if let Some(e) = &self.error {
            out.push_str(",\"output\":\"");
            if reveal {
                push_json_escaped(out, e);
            } else {
                out.push_str("reason withheld");
            }
            out.push('"');
        }
        out.push('}');
    }
}

/// `2026-11-21T21:45:53.123Z` (UTC, milliseconds).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_250); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.250Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_297_553);
        assert_eq!(rfc3339(t), "2026-11-21T21:45:53.000Z");
    }
}
