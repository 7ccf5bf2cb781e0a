//! Criterion benches for `tower-rampart`, compared in one run with the bare
//! service and the crates people use instead (tower's own layers,
//! tower-http, failsafe, tower-resilience, tower_governor). The benches are
//! in `benches/`, their results in `../README.md`; this library holds only
//! what more than one bench needs.
//!
//! ```sh
//! cargo bench -p tower-rampart-benches                  # every bench
//! cargo bench -p tower-rampart-benches --bench timeout  # one of them
//! ```

use std::time::Duration;

/// CPU time (user + system) used so far by this process's threads named
/// `name`, from `/proc/self/task/*/stat` (Linux; clock ticks of 1/100 s,
/// the kernel's fixed `USER_HZ`); `None` where that is not readable.
pub fn threads_cpu(name: &str) -> Option<Duration> {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        ticks += fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    }
    Some(Duration::from_millis(ticks * 10))
}

/// tower_governor's configuration for an anchor that refuses nothing (a
/// cell per nanosecond, a burst of 10^9, as our own quotas are raised in
/// the same benches), keyed by the `KeyExtractor` given
/// (`GlobalKeyExtractor`, `PeerIpKeyExtractor`, ...). A macro, not a
/// function: tower_governor is a dev-dependency, which this library cannot
/// name.
#[macro_export]
macro_rules! roomy_governor {
    ($key:expr) => {
        ::tower_governor::governor::GovernorConfigBuilder::default()
            .per_nanosecond(1)
            .burst_size(1_000_000_000)
            .key_extractor($key)
            .finish()
            .expect("a valid tower_governor configuration")
    };
}
