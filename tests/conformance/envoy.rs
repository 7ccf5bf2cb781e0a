//! Envoy's local rate limit (`envoy.filters.http.local_ratelimit`): a token
//! bucket, `type.v3.TokenBucket{max_tokens, tokens_per_fill,
//! fill_interval}` (envoyproxy/envoy `api/envoy/type/v3/token_bucket.proto`:
//! the bucket starts full with `max_tokens`, a timer adds `tokens_per_fill`
//! every `fill_interval`, never above `max_tokens`).
//!
//! How a bucket maps here: `Quota::new(Rate::new(tokens_per_fill,
//! fill_interval)).burst(max_tokens)` (see [`bucket`]). Where GCRA differs:
//! Envoy adds `tokens_per_fill` at once at each tick of its timer; GCRA
//! returns the same tokens continuously, one every `fill_interval /
//! tokens_per_fill`. At every tick both have the same count (the tests
//! below check Envoy's sequences at its ticks); between ticks ours may
//! already have a token Envoy has not (no herd of clients released by one
//! timer tick, and a refused client is told the exact wait, not "next
//! tick").

use std::time::Duration;

use tower_rampart::rate_limit::{Key, KeyExtractor, MissingKey, Quota, Rate};

use crate::rate_limit_support::{builder, request, send, service};

/// An Envoy token bucket as a quota.
fn bucket(max_tokens: u32, tokens_per_fill: u32, fill_interval: Duration) -> Quota {
    Quota::new(Rate::new(tokens_per_fill, fill_interval))
        .burst(max_tokens)
        .name("local")
}

/// Sends one request through a fresh-layer service and says whether it
/// was admitted.
macro_rules! allowed {
    ($svc:expr) => {
        send(&mut $svc, request("k", 1, &[])).await.status == 200
    };
    ($svc:expr, $($h:expr),+) => {
        send(&mut $svc, request("k", 1, &[$($h),+])).await.status == 200
    };
}

/// envoyproxy/envoy
/// `test/extensions/filters/common/local_ratelimit/local_ratelimit_test.cc`,
/// `LocalRateLimiterImplTest.TokenBucket`: (200ms, max 1, 1 per fill).
#[tokio::test(start_paused = true)]
async fn token_bucket() {
    let layer = builder()
        .quota(bucket(1, 1, Duration::from_millis(200)))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    // 1 -> 0 tokens
    assert!(allowed!(svc));
    assert!(!allowed!(svc));
    assert!(!allowed!(svc));
    // 0 -> 1 tokens
    tokio::time::advance(Duration::from_millis(200)).await;
    assert!(allowed!(svc));
    assert!(!allowed!(svc));
    // 0 -> 1 -> 1 tokens (two fills: never above max_tokens)
    tokio::time::advance(Duration::from_millis(400)).await;
    assert!(allowed!(svc));
    assert!(!allowed!(svc));
}

/// `local_ratelimit_test.cc`, `TokenBucketMultipleTokensPerFill`: (200ms,
/// max 2, 2 per fill).
#[tokio::test(start_paused = true)]
async fn token_bucket_multiple_tokens_per_fill() {
    let layer = builder()
        .quota(bucket(2, 2, Duration::from_millis(200)))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    // 2 -> 0 tokens
    assert!(allowed!(svc));
    assert!(allowed!(svc));
    assert!(!allowed!(svc));
    // 0 -> 2 tokens
    tokio::time::advance(Duration::from_millis(200)).await;
    // 2 -> 1 tokens
    assert!(allowed!(svc));
    // 1 -> 2 tokens
    tokio::time::advance(Duration::from_millis(200)).await;
    // 2 -> 0 tokens
    assert!(allowed!(svc));
    assert!(allowed!(svc));
    assert!(!allowed!(svc));
}

/// `local_ratelimit_test.cc`, `TokenBucketMaxTokensGreaterThanTokensPerFill`:
/// (200ms, max 2, 1 per fill).
#[tokio::test(start_paused = true)]
async fn token_bucket_max_tokens_greater_than_tokens_per_fill() {
    let layer = builder()
        .quota(bucket(2, 1, Duration::from_millis(200)))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    // 2 -> 0 tokens
    assert!(allowed!(svc));
    assert!(allowed!(svc));
    assert!(!allowed!(svc));
    // 0 -> 1 tokens
    tokio::time::advance(Duration::from_millis(200)).await;
    assert!(allowed!(svc));
    assert!(!allowed!(svc));
}

/// Where GCRA deliberately differs from Envoy's timer: with (200ms, max 2,
/// 2 per fill), Envoy has no token 100ms after emptying the bucket and
/// then 2 at once; ours has one at 100ms and the second at 200ms, and the
/// refusal at 50ms says so exactly (Envoy's client only learns "later").
#[tokio::test(start_paused = true)]
async fn gcra_refills_continuously_between_ticks() {
    let layer = builder()
        .quota(bucket(2, 2, Duration::from_millis(200)))
        .legacy_headers(true)
        .build()
        .unwrap();
    let mut svc = service(&layer);
    assert!(allowed!(svc));
    assert!(allowed!(svc));
    tokio::time::advance(Duration::from_millis(50)).await;
    assert!(!allowed!(svc));
    let wait = layer.peek(&Key::from("k")).unwrap()[0].retry_after();
    assert_eq!(wait, Duration::from_millis(50));
    tokio::time::advance(Duration::from_millis(50)).await;
    assert!(allowed!(svc), "a token at 100ms (Envoy: none until 200ms)");
    assert!(!allowed!(svc));
    tokio::time::advance(Duration::from_millis(100)).await;
    assert!(allowed!(svc));
    assert!(!allowed!(svc));
}

/// `local_ratelimit_test.cc`, `TooFastFillRate`: Envoy refuses a fill
/// interval under 50ms (its timer). Ours has no timer: any rate down to
/// one unit per nanosecond is exact; only a faster one is refused, at
/// build, naming the field.
#[tokio::test(start_paused = true)]
async fn fast_fill_rates() {
    let layer = builder()
        .quota(bucket(100, 1, Duration::from_millis(49)))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    for _ in 0..100 {
        assert!(allowed!(svc));
    }
    assert!(!allowed!(svc));
    tokio::time::advance(Duration::from_millis(49)).await;
    assert!(allowed!(svc));
    let err = builder()
        .quota(bucket(100, 2, Duration::from_nanos(1)))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "quotas[0].rate");
}

/// `local_ratelimit_test.cc`,
/// `LocalRateLimiterDescriptorImplTest.TokenBucketDifferentDescriptorDifferentRateLimits`:
/// two descriptors, each with its own bucket ({hello=world, foo=bar}: 1
/// token per 50ms; {foo2=bar2}: 1 per 1000s). Here a descriptor is a quota
/// whose key only matching requests have ([`MissingKey::Allow`]: the
/// others are not counted by it).
#[tokio::test(start_paused = true)]
async fn different_descriptors_different_rate_limits() {
    let descriptor = |entries: &'static [(&'static str, &'static str)]| {
        KeyExtractor::custom(move |r| {
            entries
                .iter()
                .all(|(k, v)| r.headers.get(*k).is_some_and(|h| h == v))
                .then(|| Key::from("descriptor"))
        })
    };
    let layer = builder()
        .quota(
            Quota::new(Rate::new(1, Duration::from_millis(50)))
                .burst(1)
                .key(descriptor(&[("hello", "world"), ("foo", "bar")]))
                .name("hello-foo"),
        )
        .quota(
            Quota::new(Rate::new(1, Duration::from_secs(1000)))
                .burst(1)
                .key(descriptor(&[("foo2", "bar2")]))
                .name("foo2"),
        )
        .missing_key(MissingKey::Allow)
        .build()
        .unwrap();
    let mut svc = service(&layer);
    let d2 = [("hello", "world"), ("foo", "bar")];
    // 1 -> 0 tokens for descriptor and descriptor2
    assert!(allowed!(svc, d2[0], d2[1]));
    assert!(!allowed!(svc, d2[0], d2[1]));
    assert!(allowed!(svc, ("foo2", "bar2")));
    assert!(!allowed!(svc, ("foo2", "bar2")));
    // 0 -> 1 tokens for descriptor2
    tokio::time::advance(Duration::from_millis(50)).await;
    // 1 -> 0 tokens for descriptor2 and 0 only for descriptor
    assert!(allowed!(svc, d2[0], d2[1]));
    assert!(!allowed!(svc, d2[0], d2[1]));
    assert!(!allowed!(svc, ("foo2", "bar2")));
    // A request matching no descriptor is not limited by either.
    for _ in 0..5 {
        assert!(allowed!(svc));
    }
}

/// Envoy's refusal is `429 Too Many Requests` by default (the filter's
/// `status`); ours too, with the bucket's state: `RateLimit-Policy` gives
/// `tokens_per_fill` per `fill_interval` (scaled to whole seconds),
/// `RateLimit` what remains, `Retry-After` the wait.
#[tokio::test(start_paused = true)]
async fn refusal_status_and_fields() {
    let layer = builder()
        .quota(bucket(10, 5, Duration::from_secs(2)))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    for _ in 0..10 {
        assert!(allowed!(svc));
    }
    let a = send(&mut svc, request("k", 1, &[])).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("ratelimit-policy"), r#""local";q=5;w=2"#);
    assert_eq!(a.r("local"), 0);
    // One token every 400ms.
    assert_eq!(a.retry_after(), Some(1));
    assert_eq!(a.t("local"), 1);
}
