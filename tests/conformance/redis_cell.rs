//! redis-cell (brandur/redis-cell), the GCRA Redis module behind
//! `CL.THROTTLE <key> <max_burst> <count per period> <period> [<quantity>]`,
//! which answers `[limited, limit, remaining, retry_after, reset_after]`.
//!
//! How a `CL.THROTTLE` call maps here: `count per period` / `period` is the
//! [`Rate`], the bucket holds `max_burst + 1` units (redis-cell's `limit`),
//! which is our [`Quota::burst`], `quantity` is the request's cost
//! ([`RateLimitBuilder::cost`](tower_rampart::rate_limit::RateLimitBuilder::cost)).
//! `remaining` is the `RateLimit` field's `r`, `retry_after` is
//! `Retry-After` (whole seconds, rounded up; redis-cell's -1 is "no
//! `Retry-After`"), `reset_after` is [`QuotaState::reset`] exactly and
//! `x-ratelimit-reset` in whole seconds.

use std::time::Duration;

use tower_rampart::rate_limit::{Key, Quota, QuotaState, Rate};

use crate::rate_limit_support::{builder, by_key, cost, request, send, service};

/// Ours after each call of redis-cell's table.
fn state(layer: &tower_rampart::rate_limit::RateLimitLayer) -> QuotaState {
    layer.peek(&Key::from("foo")).unwrap().remove(0)
}

/// redis-cell `redis-cell-impl/src/lib.rs`, `tests::it_rate_limits` (the
/// same table as `src/cell/mod.rs` before the crate split): limit 5
/// (`max_burst` 4), 1 per second, the clock moved by hand. Every row:
/// (ms since start, quantity, remaining, reset_after ms, retry_after ms or
/// -1, limited).
#[tokio::test(start_paused = true)]
async fn it_rate_limits_table() {
    let layer = builder()
        .quota(Quota::per_second(1).burst(5).key(by_key()).name("foo"))
        .cost(cost)
        .admitted_headers(true)
        .legacy_headers(true)
        .build()
        .unwrap();
    let mut svc = service(&layer);
    #[rustfmt::skip]
    let table: [(u64, u32, i64, u64, i64, bool); 15] = [
        // You can never make a request larger than the maximum.
        (0, 6, 5, 0, -1, true),
        // Normal requests, then the sixth is limited for 1s.
        (0, 1, 4, 1000, -1, false),
        (0, 1, 3, 2000, -1, false),
        (0, 1, 2, 3000, -1, false),
        (0, 1, 1, 4000, -1, false),
        (0, 1, 0, 5000, -1, false),
        (0, 1, 0, 5000, 1000, true),
        // Time drips units back in.
        (3000, 1, 2, 3000, -1, false),
        (3100, 1, 1, 3900, -1, false),
        (4000, 1, 1, 4000, -1, false),
        (8000, 1, 4, 1000, -1, false),
        (9500, 1, 4, 1000, -1, false),
        // Quantity 0 only peeks (row 12; see `quantity_zero_peeks`).
        (9500, 0, 4, 1000, -1, false),
        // A larger quantity uses up more of the limit.
        (9500, 2, 2, 3000, -1, false),
        // ...and cannot exceed it: limited for the 3 units missing.
        (9500, 5, 2, 3000, 3000, true),
    ];
    let start = tokio::time::Instant::now();
    for (row, &(at, quantity, remaining, reset_ms, retry_ms, limited)) in table.iter().enumerate() {
        tokio::time::advance((start + Duration::from_millis(at)) - tokio::time::Instant::now())
            .await;
        let answer = send(&mut svc, request("foo", quantity, &[])).await;
        let s = state(&layer);
        let ctx = format!("row {row}: {answer:?} {s:?}");
        assert_eq!(answer.status == 429, limited, "{ctx}");
        assert_eq!(i64::from(s.remaining()), remaining, "{ctx}");
        assert_eq!(s.reset(), Duration::from_millis(reset_ms), "{ctx}");
        assert_eq!(s.limit(), 5, "{ctx}");
        if quantity == 0 {
            // Free: admitted without being counted, so without headers.
            assert_eq!(answer.status, 200, "{ctx}");
            continue;
        }
        // The same numbers on the wire.
        assert_eq!(answer.r("foo"), remaining, "{ctx}");
        let reset_secs = reset_ms.div_ceil(1000).to_string();
        assert_eq!(answer.header("x-ratelimit-reset"), reset_secs, "{ctx}");
        assert_eq!(
            answer.header("x-ratelimit-remaining"),
            remaining.to_string(),
            "{ctx}"
        );
        match retry_ms {
            -1 => assert_eq!(answer.retry_after(), None, "{ctx}"),
            ms => assert_eq!(
                answer.retry_after(),
                Some(u64::try_from(ms).unwrap().div_ceil(1000)),
                "{ctx}"
            ),
        }
    }
}

/// redis-cell `it_rate_limits`, row 12: "Zero-volume request just peeks at
/// the state". Here reading is [`RateLimitLayer::peek`](tower_rampart::rate_limit::RateLimitLayer::peek);
/// a request of cost 0 is free: admitted, and it changes nothing.
#[tokio::test(start_paused = true)]
async fn quantity_zero_peeks() {
    let layer = builder()
        .quota(Quota::per_second(1).burst(5).key(by_key()).name("foo"))
        .cost(cost)
        .build()
        .unwrap();
    let mut svc = service(&layer);
    assert_eq!(state(&layer).remaining(), 5);
    assert_eq!(state(&layer).reset(), Duration::ZERO);
    assert_eq!(send(&mut svc, request("foo", 3, &[])).await.status, 200);
    let before = state(&layer);
    for _ in 0..10 {
        assert_eq!(send(&mut svc, request("foo", 0, &[])).await.status, 200);
    }
    assert_eq!(state(&layer), before);
    assert_eq!(
        (before.remaining(), before.reset()),
        (2, Duration::from_secs(3))
    );
}

/// redis-cell README, "Usage": `CL.THROTTLE user123 15 30 60 1` answers
/// `0, 16, 15, -1, 2` (allowed, limit 16, 15 remaining, no retry, full
/// again in 2s). Over a real server and client.
#[tokio::test]
async fn readme_example_over_a_real_server() {
    let layer = builder()
        .quota(
            Quota::new(Rate::new(30, Duration::from_secs(60)))
                .burst(16)
                .key(by_key())
                .name("user"),
        )
        .admitted_headers(true)
        .legacy_headers(true)
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .layer(layer);
    let addr = crate::common::serve(app).await;
    let call = || crate::common::get_with(addr, "/", &[("x-key", "user123")]);
    let first = call().await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("retry-after"), "");
    let items = crate::rate_limit_support::sf_items(first.header("ratelimit"));
    assert_eq!(items[0].0, "user");
    assert_eq!(items[0].1["r"], 15);
    assert_eq!(first.header("x-ratelimit-remaining"), "15");
    assert_eq!(first.header("x-ratelimit-reset"), "2");
    // Deliberate difference: redis-cell's `limit` is the bucket (16); our
    // `x-ratelimit-limit` and `RateLimit-Policy` give the rate's quota per
    // window (30 per 60s), which is what the IETF `q`/`w` pair means.
    assert_eq!(first.header("x-ratelimit-limit"), "30");
    assert_eq!(first.header("ratelimit-policy"), r#""user";q=30;w=60"#);
    // The other 15 of the bucket, then limited until one unit drips in (2s).
    for _ in 0..15 {
        assert_eq!(call().await.status, 200);
    }
    let limited = call().await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("retry-after"), "2");
    assert_eq!(limited.header("x-ratelimit-remaining"), "0");
    assert_eq!(limited.header("x-ratelimit-reset"), "32");
}

/// redis-cell `redis-cell-impl/src/lib.rs`, `it_creates_rates_from_days`,
/// `_hours`, `_minutes`, `_periods`, `_seconds`: a rate is one unit per
/// `period / count`. Ours: a burst-1 quota refuses for exactly that long.
#[tokio::test(start_paused = true)]
async fn rates_from_periods() {
    let cases = [
        (Rate::per_day(24), Duration::from_secs(3600)),
        (Rate::per_hour(6), Duration::from_secs(600)),
        (Rate::per_minute(6), Duration::from_secs(10)),
        (
            Rate::new(6, Duration::from_secs(120)),
            Duration::from_secs(20),
        ),
        (Rate::per_second(5), Duration::from_millis(200)),
    ];
    for (rate, interval) in cases {
        let layer = builder()
            .quota(Quota::new(rate).burst(1).key(by_key()).name("foo"))
            .build()
            .unwrap();
        let mut svc = service(&layer);
        assert_eq!(send(&mut svc, request("foo", 1, &[])).await.status, 200);
        assert_eq!(state(&layer).retry_after(), interval, "{rate}");
        tokio::time::advance(interval - Duration::from_nanos(1)).await;
        assert_eq!(
            send(&mut svc, request("foo", 1, &[])).await.status,
            429,
            "{rate}"
        );
        tokio::time::advance(Duration::from_nanos(1)).await;
        assert_eq!(
            send(&mut svc, request("foo", 1, &[])).await.status,
            200,
            "{rate}"
        );
    }
}

/// redis-cell `it_does_not_support_zero_rates`: "Zero rates are not
/// supported" at call time. Ours refuses them when the layer is built,
/// naming the field.
#[test]
fn zero_rates_are_a_build_error() {
    let err = builder()
        .quota(Quota::new(Rate::new(0, Duration::from_secs(1))))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "quotas[0].rate");
    let err = builder()
        .quota(Quota::new(Rate::new(1, Duration::ZERO)))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "quotas[0].rate");
}

/// redis-cell keys are independent: one key's use never shows in
/// another's answer (`CL.THROTTLE` per key).
#[tokio::test(start_paused = true)]
async fn keys_are_independent() {
    let layer = builder()
        .quota(Quota::per_second(1).burst(5).key(by_key()).name("foo"))
        .cost(cost)
        .admitted_headers(true)
        .build()
        .unwrap();
    let mut svc = service(&layer);
    assert_eq!(send(&mut svc, request("a", 5, &[])).await.r("foo"), 0);
    assert_eq!(send(&mut svc, request("a", 1, &[])).await.status, 429);
    assert_eq!(send(&mut svc, request("b", 1, &[])).await.r("foo"), 4);
}
