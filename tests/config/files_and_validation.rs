//! The config file format: the shipped TOML files parse and validate (so
//! they never rot), every problem is reported at once with its key path,
//! unknown keys are errors, environment overrides follow one scheme.
#![cfg(feature = "config")]

use std::time::Duration;

use crate::common;

use tower_rampart::circuit_breaker::SlidingWindow;
use tower_rampart::config::{BreakerReadiness, RampartConfig};

fn shipped(name: &str) -> RampartConfig {
    let path = format!("{}/examples/configs/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    RampartConfig::from_toml(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn errors(toml: &str) -> Vec<String> {
    RampartConfig::from_toml(toml)
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn production_toml_is_valid() {
    let c = shipped("production.toml");
    assert_eq!(c.listen, "0.0.0.0:8080");
    assert_eq!(c.shutdown.shutdown_delay, Duration::from_secs(5));
    assert_eq!(c.shutdown.drain_timeout, Duration::from_secs(20));
    assert_eq!(c.timeout.timeout, Duration::from_secs(5));
    assert_eq!(c.health.breaker_readiness, BreakerReadiness::Warn);
    let rl = c.rate_limit.as_ref().expect("production limits requests");
    assert_eq!(rl.quotas.len(), 2);
    assert_eq!(rl.quotas[0].rate, "50/s");
    assert_eq!(
        c.circuit_breaker.window,
        SlidingWindow::Time {
            duration: Duration::from_secs(30),
            buckets: 10
        }
    );
    assert!(!c.circuit_breaker.auto_half_open);
    assert_eq!(c.circuit_breaker.ignore_statuses, [429]);
    c.circuit_breaker.clone().build().unwrap();
    assert_eq!(c.shutdown_budget(), Duration::from_secs(26));
    // The layers build from it too (the rate limit's quotas, the timeout's
    // header name and status).
    rl.build().unwrap();
    c.timeout.build().unwrap();
}

#[test]
fn development_toml_is_valid() {
    let c = shipped("development.toml");
    assert_eq!(c.listen_addr().to_string(), "127.0.0.1:3000");
    assert!(c.rate_limit.is_none());
    assert_eq!(c.shutdown.shutdown_delay, Duration::ZERO);
    assert_eq!(c.probes.startup_path, "");
}

/// The Kubernetes manifest's grace period covers the production timings.
#[test]
fn manifest_grace_period_covers_the_shutdown() {
    let c = shipped("production.toml");
    let path = format!(
        "{}/examples/k8s/deployment.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let yaml = std::fs::read_to_string(path).unwrap();
    let grace: u64 = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .expect("terminationGracePeriodSeconds")
        .trim()
        .parse()
        .unwrap();
    let needed = c.shutdown_budget() + c.shutdown.hook_timeout;
    assert!(
        Duration::from_secs(grace) > needed,
        "grace {grace}s must exceed {needed:?}"
    );
    for path in [
        &c.probes.liveness_path,
        &c.probes.readiness_path,
        &c.probes.startup_path,
    ] {
        assert!(yaml.contains(&format!("path: {path}")), "{path} not probed");
    }
    assert!(yaml.contains("containerPort: 8080"));
}

#[test]
fn an_empty_file_is_the_defaults() {
    let c = RampartConfig::from_toml("").unwrap();
    assert_eq!(c.listen, "0.0.0.0:8080");
    assert!(c.rate_limit.is_none());
    assert_eq!(c.timeout.timeout, Duration::from_secs(10));
    assert_eq!(c.probes.readiness_path, "/readyz");
}

#[test]
fn every_problem_at_once_with_key_paths() {
    let errs = errors(
        r#"
        listen = "localhost"
        [probes]
        readiness_path = "readyz"
        [health]
        grpc_poll_interval = "0s"
        [shutdown]
        drain_timeout = "1s"
        [rate_limit]
        quotas = [
            { rate = "10/s" },
            { rate = "10/s", burst = 0 },
            { rate = "ten per second" },
        ]
        [circuit_breaker]
        failure_rate_threshold = 0.0
        [timeout]
        timeout = "2s"
        status = 200
        "#,
    );
    assert_eq!(
        errs,
        [
            "listen: must be an address such as 0.0.0.0:8080",
            "probes.readiness_path: must start with `/`, not end with `/`, and not be `/` alone",
            "health.grpc_poll_interval: must be greater than 0",
            "rate_limit.quotas[2].rate: `ten per second`: expected `<count>/<unit>` such as \"100/s\" or \"1000/h\"",
            "rate_limit.quotas[1].burst: must be greater than 0",
            // Three unnamed global quotas share the default name.
            "rate_limit.quotas[1].name: `global` is already the name of another quota",
            "rate_limit.quotas[2].name: `global` is already the name of another quota",
            "circuit_breaker.failure_rate_threshold: must be in (0, 100]",
            "timeout.status: must be a 4xx or 5xx status",
            "shutdown.drain_timeout: must be at least timeout.timeout (2s), so a request admitted before draining can finish",
        ],
        "{errs:#?}"
    );
    // One line each, ready to print.
    let all = RampartConfig::from_toml("listen = \"x\"\n[timeout]\ntimeout = \"0s\"")
        .unwrap_err()
        .to_string();
    assert_eq!(
        all,
        "invalid configuration (2 problems)\n  listen: must be an address such as 0.0.0.0:8080\n  timeout.timeout: must be greater than 0"
    );
}

#[test]
fn unknown_keys_and_bad_types_name_the_key() {
    let e = errors("[timeout]\ntimout = \"2s\"\ntimeout = \"1s\"");
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("timeout.timout: unknown field `timout`"),
        "{e:?}"
    );

    let e = errors("[shutdown]\ndrain_timeout = \"20 parsecs\"");
    assert!(
        e[0].starts_with("shutdown.drain_timeout: `20 parsecs`: unknown unit"),
        "{e:?}"
    );

    let e = errors("[rate_limit]\nquotas = [{ rate = \"1/s\" }, { rate = \"1/s\", brust = 2 }]");
    assert!(
        e[0].starts_with("rate_limit.quotas[1].brust: unknown field"),
        "{e:?}"
    );

    let e = errors("[circuit_breaker]\nwindow = { type = \"count\", size = \"ten\" }");
    assert!(e[0].starts_with("circuit_breaker.window"), "{e:?}");

    let e = errors("[health]\nbreaker_readiness = \"maybe\"");
    assert!(
        e[0].starts_with("health.breaker_readiness: unknown variant `maybe`"),
        "{e:?}"
    );

    let e = errors("nonsense = 1");
    assert!(
        e[0].starts_with("nonsense: unknown field `nonsense`"),
        "{e:?}"
    );

    let e = errors("listen = ");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with(": line 1, column 10: "), "{e:?}");
}

/// Issue 12: parse and type problems come all at once too, like the
/// validation problems, each at its key path (syntax errors at their line
/// and column), so fixing a file takes one round, not one per mistake.
#[test]
fn type_and_syntax_problems_all_at_once() {
    let e = errors(
        r#"
        listen = 5
        [timeout]
        timeout = 3
        bogus = 1
        [shutdown]
        drain_timeout = "ten"
        [circuit_breaker]
        minimum_calls = "x"
        [rate_limit]
        quotas = [{ rate = "1/s", burst = "x" }, { rate = "1/s", nme = "a" }]
        max_keys = "many"
        "#,
    );
    assert_eq!(
        e,
        [
            "circuit_breaker.minimum_calls: invalid type: string \"x\", expected u32",
            "listen: invalid type: integer `5`, expected a string",
            "rate_limit.max_keys: invalid type: string \"many\", expected usize",
            "rate_limit.quotas[0].burst: invalid type: string \"x\", expected u32",
            "rate_limit.quotas[1].nme: unknown field `nme`, expected one of `rate`, `burst`, `key`, `name`",
            "shutdown.drain_timeout: `ten`: expected a number and a unit, such as \"250ms\" or \"5s\"",
            "timeout.bogus: unknown field `bogus`, expected one of `name`, `timeout`, `safety_margin`, `grpc_timeout`, `budget_header`, `status`, `deadline_extension`",
            "timeout.timeout: invalid type: integer `3`, expected a string",
        ],
        "{e:#?}"
    );

    // A required key with a bad type is reported once, not again as
    // missing once it is set aside.
    let e = errors(
        "[rate_limit]
quotas = [{ rate = 5 }]",
    );
    assert_eq!(
        e,
        ["rate_limit.quotas[0].rate: invalid type: integer `5`, expected a string"]
    );

    // Every syntax error the parser can recover from, in file order.
    let e = errors(
        "listen = 
[timeout
x = = 1
",
    );
    assert_eq!(e.len(), 4, "{e:#?}");
    assert!(e[0].starts_with(": line 1, column 10: "), "{e:#?}");
    assert!(e[1].starts_with(": line 2, column 9: "), "{e:#?}");
    assert!(e[3].starts_with(": line 3, column "), "{e:#?}");

    // Set by the environment: the variable is named.
    let errs = RampartConfig::from_toml_with_env(
        "[timeout]
timeout = 3",
        [("RAMPART_SHUTDOWN__SIGNALS", "maybe")],
    )
    .unwrap_err();
    let e: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].ends_with("(set by RAMPART_SHUTDOWN__SIGNALS)"),
        "{e:#?}"
    );
    assert!(e[1].starts_with("timeout.timeout: invalid type"), "{e:#?}");
}

/// Issue 12: the rate limit's idle sweep can be switched off from a file
/// (`"off"` or `"0s"`); leaving the key out keeps the 60 s default.
#[test]
fn idle_sweep_can_be_switched_off() {
    let base = "[rate_limit]
quotas = [{ rate = \"1/s\", key = \"client_ip\" }]
";
    for (value, expected) in [
        ("\"off\"", Some(Duration::ZERO)),
        ("\"OFF\"", Some(Duration::ZERO)),
        ("\"0s\"", Some(Duration::ZERO)),
        ("\"30s\"", Some(Duration::from_secs(30))),
    ] {
        let c = RampartConfig::from_toml(&format!("{base}idle_sweep = {value}\n")).unwrap();
        assert_eq!(
            c.rate_limit.as_ref().unwrap().idle_sweep,
            expected,
            "{value}"
        );
        c.rate_limit.unwrap().build().unwrap();
    }
    let c = RampartConfig::from_toml(base).unwrap();
    assert_eq!(c.rate_limit.unwrap().idle_sweep, None);
    let e = errors(&format!("{base}idle_sweep = \"never\"\n"));
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("rate_limit.idle_sweep: "), "{e:?}");
    assert!(e[0].contains("\"off\""), "{e:?}");
}

#[test]
fn environment_overrides() {
    let file = r#"
        listen = "0.0.0.0:8080"
        [rate_limit]
        quotas = [{ rate = "10/s", key = "client_ip" }]
    "#;
    let c = RampartConfig::from_toml_with_env(
        file,
        [
            ("RAMPART_LISTEN", "127.0.0.1:9000"),
            ("RAMPART_TIMEOUT__TIMEOUT", "2s"),
            ("RAMPART_SHUTDOWN__SIGNALS", "false"),
            ("RAMPART_SHUTDOWN__DRAIN_TIMEOUT", "30s"),
            ("RAMPART_RATE_LIMIT__QUOTAS__0__RATE", "200/s"),
            ("RAMPART_RATE_LIMIT__QUOTAS__1__RATE", "5000/s"),
            ("RAMPART_CIRCUIT_BREAKER__MINIMUM_CALLS", "20"),
            ("RAMPART_CIRCUIT_BREAKER__FAILURE_RATE_THRESHOLD", "25"),
            ("RAMPART_HEALTH__BREAKER_READINESS", "fail"),
            ("HOME", "/root"),
        ],
    )
    .unwrap();
    assert_eq!(c.listen, "127.0.0.1:9000");
    assert_eq!(c.timeout.timeout, Duration::from_secs(2));
    assert!(!c.shutdown.signals);
    assert_eq!(c.shutdown.drain_timeout, Duration::from_secs(30));
    let rl = c.rate_limit.unwrap();
    assert_eq!(rl.quotas[0].rate, "200/s");
    assert_eq!(rl.quotas[0].key.as_deref(), Some("client_ip"));
    assert_eq!(rl.quotas[1].rate, "5000/s");
    assert_eq!(c.circuit_breaker.minimum_calls, 20);
    assert_eq!(c.circuit_breaker.failure_rate_threshold, 25.0);
    assert_eq!(c.health.breaker_readiness, BreakerReadiness::Fail);

    // A typo in a variable is an unknown key, and the error names it.
    let e = RampartConfig::from_toml_with_env("", [("RAMPART_TIMEOUT__TIMOUT", "2s")]).unwrap_err();
    let e: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    assert!(
        e[0].starts_with("timeout.timout: unknown field `timout`"),
        "{e:?}"
    );
    assert!(e[0].ends_with("(set by RAMPART_TIMEOUT__TIMOUT)"), "{e:?}");

    // Values from the environment are validated like the file's.
    let e = RampartConfig::from_toml_with_env("", [("RAMPART_LISTEN", "nowhere")]).unwrap_err();
    assert_eq!(e.iter().next().unwrap().field(), "listen");

    // Every bad variable at once.
    let e = RampartConfig::from_toml_with_env(
        "listen = \"0.0.0.0:1\"\n[rate_limit]\nquotas = [{ rate = \"1/s\" }]",
        [
            ("RAMPART_RATE_LIMIT__QUOTAS__5__RATE", "1/s"),
            ("RAMPART_LISTEN__HOST", "x"),
        ],
    )
    .unwrap_err();
    assert_eq!(e.len(), 2, "{e}");
}

#[test]
fn the_load_path_reads_files() {
    let path = format!(
        "{}/examples/configs/development.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    // The test process has no RAMPART_* variables.
    let c = RampartConfig::load(path).unwrap();
    assert_eq!(c.timeout.timeout, Duration::from_secs(2));
    let e = RampartConfig::load("/nonexistent/rampart.toml").unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot read /nonexistent/rampart.toml"),
        "{e}"
    );
}

/// The guide's Redis snippet (`docs/production.md`): switching a limiter
/// to Redis is one `store` table, and a typo in it is an error like
/// anywhere else.
#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_store_section_from_toml() {
    use tower_rampart::rate_limit::StoreConfig;
    let base = r#"
[rate_limit]
name = "api"
quotas = [{ rate = "100/s", key = "client_ip" }]

[rate_limit.store]
type = "redis"
url = "redis://127.0.0.1:6379/"
prefix = "myapp"
timeout = "50ms"
failure = "fallback"
fallback_share = 0.25
"#;
    let c = RampartConfig::from_toml(base).unwrap_or_else(|e| panic!("{e}"));
    let store = &c.rate_limit.as_ref().unwrap().store;
    assert!(matches!(store, StoreConfig::Redis(_)), "{store:?}");
    assert!(format!("{store:?}").contains("myapp"), "{store:?}");

    let typo = base.replace("fallback_share", "fallback_shar");
    let errs = errors(&typo);
    assert!(errs.iter().any(|e| e.contains("fallback_shar")), "{errs:?}");

    let default =
        RampartConfig::from_toml("[rate_limit]\nquotas = [{ rate = \"10/s\" }]\n").unwrap();
    assert!(matches!(
        default.rate_limit.unwrap().store,
        StoreConfig::InProcess
    ));
}

/// Issue 12: nested probe paths are accepted from a file; one that would
/// hide a check of another probe is refused when the stack is built, named
/// by its key path.
#[tokio::test]
async fn nested_probe_paths_from_a_file() {
    let config = RampartConfig::from_toml(
        "[probes]\nreadiness_path = \"/health\"\nliveness_path = \"/health/live\"\nstartup_path = \"\"\n[shutdown]\nsignals = false\n",
    )
    .unwrap();
    assert!(config.stack().build().is_ok());
    let hidden =
        tower_rampart::health::Check::sync("live", tower_rampart::health::Kind::Readiness, || {
            Ok::<(), String>(())
        });
    let errs = config.stack().check(hidden).build().unwrap_err();
    let fields: Vec<&str> = errs.iter().map(|e| e.field()).collect();
    assert_eq!(fields, ["probes.liveness_path"], "{errs}");
}

/// A process exit status is one byte: a forced-exit code outside 0..=255
/// would be truncated by the OS (256 exits 0, "success").
#[test]
fn exit_codes_outside_a_byte_are_refused() {
    for code in ["256", "-1", "1000"] {
        let e = errors(&format!("[shutdown]\nforce_exit_code = {code}"));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("shutdown.force_exit_code: must be in 0..=255"),
            "{e:?}"
        );
    }
    for code in [0, 255] {
        let c = RampartConfig::from_toml(&format!("[shutdown]\nforce_exit_code = {code}")).unwrap();
        assert_eq!(c.shutdown.force_exit_code, code);
    }
    // From the environment too, naming the variable's key.
    let e = RampartConfig::from_toml_with_env("", [("RAMPART_SHUTDOWN__FORCE_EXIT_CODE", "256")])
        .unwrap_err();
    assert_eq!(e.iter().next().unwrap().field(), "shutdown.force_exit_code");
}

/// Every duration has an upper bound for its key: `"100h"` where `"100ms"`
/// was meant is refused, naming the key and the bound, all at once.
#[test]
fn absurd_durations_are_refused_with_their_key() {
    let errs = errors(
        r#"
        [health]
        grpc_poll_interval = "1h"
        [shutdown]
        shutdown_delay = "100h"
        drain_timeout = "2h"
        retry_after = "2h"
        [rate_limit]
        quotas = [{ rate = "10/s" }]
        idle_sweep = "1000h"
        [rate_limit.store]
        type = "redis"
        url = "redis://127.0.0.1:1/"
        timeout = "10m"
        [circuit_breaker]
        open_duration = "1000h"
        "#,
    );
    assert_eq!(
        errs,
        [
            "health.grpc_poll_interval: must be at most 10m (found 1h)",
            "shutdown.shutdown_delay: must be at most 10m (found 100h)",
            "rate_limit.idle_sweep: must be at most 1h (found 1000h)",
            "rate_limit.store.timeout: must be at most 1m (found 10m)",
            "circuit_breaker.open_duration: must be at most 1h (found 1000h)",
        ],
        "{errs:#?}"
    );
    let errs = errors("[timeout]\ntimeout = \"100h\"");
    assert!(
        errs.contains(&"timeout.timeout: must be at most 1h (found 100h)".to_owned()),
        "{errs:#?}"
    );
    // At the bound is fine.
    RampartConfig::from_toml(
        "[shutdown]\nshutdown_delay = \"10m\"\ndrain_timeout = \"1h\"\n[timeout]\ntimeout = \"1h\"",
    )
    .unwrap();
}

/// What Kubernetes injects into every pod of a namespace that has a
/// Service named `rampart` (service links are on by default).
const KUBERNETES_SERVICE_VARS: [(&str, &str); 9] = [
    ("RAMPART_PORT", "tcp://10.0.0.1:80"),
    ("RAMPART_PORT_80_TCP", "tcp://10.0.0.1:80"),
    ("RAMPART_PORT_80_TCP_PROTO", "tcp"),
    ("RAMPART_PORT_80_TCP_PORT", "80"),
    ("RAMPART_PORT_80_TCP_ADDR", "10.0.0.1"),
    ("RAMPART_PORT_8080_TCP_ADDR", "10.0.0.1"),
    ("RAMPART_SERVICE_HOST", "10.0.0.1"),
    ("RAMPART_SERVICE_PORT", "80"),
    ("RAMPART_SERVICE_PORT_HTTP", "80"),
];

#[test]
fn kubernetes_service_variables_do_not_stop_the_pod() {
    let mut vars = KUBERNETES_SERVICE_VARS.to_vec();
    vars.push(("RAMPART_LISTEN", "127.0.0.1:9000"));
    vars.push(("RAMPART_TIMEOUT__TIMEOUT", "2s"));
    let loaded = RampartConfig::loader()
        .from_toml_with_env("", vars.iter().copied())
        .unwrap_or_else(|e| panic!("{e}"));
    // The real keys are applied...
    assert_eq!(loaded.config.listen, "127.0.0.1:9000");
    assert_eq!(loaded.config.timeout.timeout, Duration::from_secs(2));
    // ...and every injected variable is a warning naming it.
    let mut warned: Vec<&str> = loaded.warnings.iter().map(|w| w.variable()).collect();
    warned.sort_unstable();
    let mut injected: Vec<&str> = KUBERNETES_SERVICE_VARS.iter().map(|(k, _)| *k).collect();
    injected.sort_unstable();
    assert_eq!(warned, injected);
    assert!(
        loaded.warnings[0]
            .message()
            .contains("names no config section"),
        "{}",
        loaded.warnings[0]
    );
    // `from_toml_with_env` (and `load`) tolerate them too.
    RampartConfig::from_toml_with_env("", KUBERNETES_SERVICE_VARS).unwrap();

    // A variable naming a known key with a bad value is still an error,
    // naming the key and the variable.
    let mut bad = KUBERNETES_SERVICE_VARS.to_vec();
    bad.push(("RAMPART_TIMEOUT__TIMEOUT", "banana"));
    let e = RampartConfig::from_toml_with_env("", bad).unwrap_err();
    assert_eq!(e.len(), 1, "{e}");
    let e = e.iter().next().unwrap();
    assert_eq!(e.field(), "timeout.timeout");
    assert!(
        e.message().ends_with("(set by RAMPART_TIMEOUT__TIMEOUT)"),
        "{e}"
    );
    // So is an unknown key inside a known section.
    let e = RampartConfig::from_toml_with_env("", [("RAMPART_SHUTDOWN__PORT", "80")]).unwrap_err();
    assert_eq!(e.iter().next().unwrap().field(), "shutdown.port");
}

/// The shipped manifest's Service (`rampart-api`) makes Kubernetes inject
/// `RAMPART_API_*` variables next to the manifest's own `RAMPART_*` key:
/// the shipped config still loads, with a warning for each.
#[test]
fn the_shipped_manifest_and_config_load_together() {
    let yaml = std::fs::read_to_string(format!(
        "{}/examples/k8s/deployment.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let service = yaml
        .split("kind: Service")
        .nth(1)
        .and_then(|rest| rest.lines().find_map(|l| l.trim().strip_prefix("name: ")))
        .expect("a Service")
        .trim()
        .to_owned();
    let svc = service.to_uppercase().replace('-', "_");
    let injected = [
        (format!("{svc}_SERVICE_HOST"), "10.96.0.7".to_owned()),
        (format!("{svc}_SERVICE_PORT"), "80".to_owned()),
        (format!("{svc}_SERVICE_PORT_HTTP"), "80".to_owned()),
        (format!("{svc}_PORT"), "tcp://10.96.0.7:80".to_owned()),
        (
            format!("{svc}_PORT_80_TCP"),
            "tcp://10.96.0.7:80".to_owned(),
        ),
        (format!("{svc}_PORT_80_TCP_PROTO"), "tcp".to_owned()),
        (format!("{svc}_PORT_80_TCP_PORT"), "80".to_owned()),
        (format!("{svc}_PORT_80_TCP_ADDR"), "10.96.0.7".to_owned()),
    ];
    assert!(svc.starts_with("RAMPART_"), "{svc}");
    let mut vars = injected.to_vec();
    vars.push((
        "RAMPART_RATE_LIMIT__QUOTAS__0__RATE".to_owned(),
        "50/s".to_owned(),
    ));
    let text = std::fs::read_to_string(format!(
        "{}/examples/configs/production.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let loaded = RampartConfig::loader()
        .from_toml_with_env(&text, vars)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.warnings.len(), injected.len());
    assert_eq!(loaded.config.rate_limit.unwrap().quotas[0].rate, "50/s");
}

#[test]
fn the_environment_prefix_is_configurable() {
    let vars = [
        ("CHECKOUT_TIMEOUT__TIMEOUT", "3s"),
        ("CHECKOUT_SHUTDOWN__DRAIN_TIMEOUT", "40s"),
        ("CHECKOUT_SERVICE_HOST", "10.0.0.9"),
        // The default prefix is not read any more: no override, no warning.
        ("RAMPART_TIMEOUT__TIMEOUT", "banana"),
        ("RAMPART_PORT", "tcp://10.0.0.1:80"),
    ];
    let loader = RampartConfig::loader().env_prefix("CHECKOUT").unwrap();
    assert_eq!(loader.prefix(), "CHECKOUT_");
    let loaded = loader.from_toml_with_env("", vars).unwrap();
    assert_eq!(loaded.config.timeout.timeout, Duration::from_secs(3));
    assert_eq!(
        loaded.config.shutdown.drain_timeout,
        Duration::from_secs(40)
    );
    let warned: Vec<&str> = loaded.warnings.iter().map(|w| w.variable()).collect();
    assert_eq!(warned, ["CHECKOUT_SERVICE_HOST"]);
    let e = loader
        .from_toml_with_env("", [("CHECKOUT_TIMEOUT__TIMEOUT", "banana")])
        .unwrap_err();
    assert_eq!(e.iter().next().unwrap().field(), "timeout.timeout");
    assert_eq!(
        RampartConfig::loader()
            .env_prefix("check-out")
            .unwrap_err()
            .field(),
        "env_prefix"
    );
    // `load` reads the file with the loader's prefix (this process has no
    // CHECKOUT_* variables).
    let path = format!(
        "{}/examples/configs/development.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let loaded = loader.load(path).unwrap();
    assert!(loaded.warnings.is_empty());
    assert_eq!(loaded.config.timeout.timeout, Duration::from_secs(2));
}

/// Over a real server: a pod with the Kubernetes variables and a
/// `client_ip_header` from its config starts, answers its probes, and
/// keys its rate limit by the named header only.
#[cfg(feature = "axum")]
#[tokio::test]
async fn a_pod_with_kubernetes_variables_starts_and_trusts_one_header() {
    let file = r#"
        listen = "0.0.0.0:8080"
        [shutdown]
        shutdown_delay = "0s"
        drain_timeout = "10s"
        signals = false
        [rate_limit]
        client_ip_header = "forwarded"
        trusted_proxies = ["10.0.0.0/8"]
        quotas = [{ rate = "2/m", burst = 2, key = "client_ip" }]
    "#;
    let mut vars = KUBERNETES_SERVICE_VARS.to_vec();
    vars.push(("RAMPART_LISTEN", "127.0.0.1:0"));
    // The operator's proxy is this test's client: 127.0.0.1.
    vars.push(("RAMPART_RATE_LIMIT__TRUSTED_PROXIES", "[\"127.0.0.1\"]"));
    vars.push(("RAMPART_RATE_LIMIT__CLIENT_IP_HEADER", "x-forwarded-for"));
    let loaded = RampartConfig::loader()
        .from_toml_with_env(file, vars)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.warnings.len(), KUBERNETES_SERVICE_VARS.len());
    let config = loaded.config;
    let stack = config.stack().build().unwrap_or_else(|e| panic!("{e}"));
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .layer(stack.layer());
    let listener = tokio::net::TcpListener::bind(config.listen_addr())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap();
    });
    assert_eq!(common::get(addr, "/readyz").await.status, 200);
    // The proxy appends X-Forwarded-For; the client forges Forwarded (the
    // header the file named, overridden from the environment).
    let mut statuses = Vec::new();
    for i in 0..4 {
        let forged = format!("for=198.51.100.{i}");
        let xff = format!("198.51.100.{i}, 203.0.113.7");
        let reply = common::get_with(
            addr,
            "/",
            &[("forwarded", &forged), ("x-forwarded-for", &xff)],
        )
        .await;
        statuses.push(reply.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    let other = common::get_with(addr, "/", &[("x-forwarded-for", "203.0.113.8")]).await;
    assert_eq!(other.status, 200);
}
