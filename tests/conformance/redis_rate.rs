//! go-redis/redis_rate (v10), GCRA in a Redis Lua script:
//! `Allow`/`AllowN(ctx, key, limit, n)`/`AllowAtMost`, answering
//! `Result{Allowed, Remaining, RetryAfter, ResetAfter}`.
//!
//! How a `Limit{Rate, Period, Burst}` maps here: `Quota::new(Rate::new(rate,
//! period)).burst(burst)`, `n` is the request's cost. `Remaining` is the
//! `RateLimit` field's `r`, `RetryAfter` is `Retry-After` (whole seconds)
//! and [`QuotaState::retry_after`] (exact, for cost 1), `ResetAfter` is
//! [`QuotaState::reset`]; `AllowN(.., 0)` (peek) is
//! [`RateLimitLayer::peek`].

use std::time::Duration;

use tower_rampart::rate_limit::{Key, Quota, QuotaState, Rate, RateLimitLayer};

use crate::rate_limit_support::{builder, by_key, cost, request, send, service};

/// `redis_rate.PerSecond(10)`: 10 per second, burst 10.
fn per_second_10() -> RateLimitLayer {
    builder()
        .quota(Quota::per_second(10).key(by_key()).name("test_id"))
        .cost(cost)
        .admitted_headers(true)
        .build()
        .unwrap()
}

fn peek(layer: &RateLimitLayer) -> QuotaState {
    layer.peek(&Key::from("test_id")).unwrap().remove(0)
}

/// go-redis/redis_rate `rate_test.go`, `TestAllow`.
#[tokio::test(start_paused = true)]
async fn test_allow() {
    let layer = per_second_10();
    let mut svc = service(&layer);
    let mut allow_n = async |n: u32| send(&mut svc, request("test_id", n, &[])).await;

    // Allow: Allowed 1, Remaining 9, RetryAfter -1, ResetAfter 100ms.
    let a = allow_n(1).await;
    assert_eq!((a.status, a.r("test_id"), a.retry_after()), (200, 9, None));
    assert_eq!(peek(&layer).reset(), Duration::from_millis(100));
    // AllowN 2: Remaining 7, ResetAfter 300ms.
    let a = allow_n(2).await;
    assert_eq!((a.status, a.r("test_id"), a.retry_after()), (200, 7, None));
    assert_eq!(peek(&layer).reset(), Duration::from_millis(300));
    // AllowN 7: Remaining 0, ResetAfter ~1s (exactly 1s on a paused clock).
    let a = allow_n(7).await;
    assert_eq!((a.status, a.r("test_id"), a.retry_after()), (200, 0, None));
    assert_eq!(peek(&layer).reset(), Duration::from_secs(1));
    // AllowN 1000: Allowed 0, Remaining 0, ResetAfter ~1s, RetryAfter ~99s.
    //
    // Deliberate difference: redis_rate says "retry in 99s", but a burst of
    // 10 never holds 1000: a client that obeys is refused again, forever.
    // Ours refuses it as never admissible, without Retry-After (redis-cell
    // answers -1 here too), and says why.
    let a = allow_n(1000).await;
    assert_eq!((a.status, a.r("test_id"), a.retry_after()), (429, 0, None));
    assert!(a.body.contains("can never be admitted"), "{}", a.body);
    assert_eq!(peek(&layer).reset(), Duration::from_secs(1));
}

/// go-redis/redis_rate `rate_test.go`, `TestAllowN_IncrementZero`: `AllowN`
/// with 0 reads (Remaining 10, ResetAfter 0 for a row that is not there;
/// 9 and 100ms after one Allow) and changes nothing.
#[tokio::test(start_paused = true)]
async fn test_allow_n_increment_zero() {
    let layer = per_second_10();
    let mut svc = service(&layer);
    let fresh = peek(&layer);
    assert_eq!((fresh.remaining(), fresh.reset()), (10, Duration::ZERO));
    assert_eq!(fresh.retry_after(), Duration::ZERO);
    // A request of cost 0 is free: admitted, nothing counted.
    assert_eq!(send(&mut svc, request("test_id", 0, &[])).await.status, 200);
    assert_eq!(peek(&layer), fresh);

    let a = send(&mut svc, request("test_id", 1, &[])).await;
    assert_eq!((a.status, a.r("test_id")), (200, 9));
    let after = peek(&layer);
    assert_eq!(
        (after.remaining(), after.reset()),
        (9, Duration::from_millis(100))
    );
    assert_eq!(send(&mut svc, request("test_id", 0, &[])).await.status, 200);
    assert_eq!(peek(&layer), after);
}

/// go-redis/redis_rate `rate_test.go`, `TestRetryAfter`: 1 per millisecond,
/// burst 1, 1000 calls; every refusal's RetryAfter is at most 1ms.
///
/// Ours: the exact wait is at most 1ms as well ([`QuotaState::retry_after`],
/// and gRPC's `grpc-retry-pushback-ms`), but HTTP's `Retry-After` is whole
/// seconds (RFC 9110 delay-seconds), so it says 1: rounded up, never early.
#[tokio::test(start_paused = true)]
async fn test_retry_after() {
    let layer = builder()
        .quota(
            Quota::new(Rate::new(1, Duration::from_millis(1)))
                .burst(1)
                .key(by_key())
                .name("test_id"),
        )
        .build()
        .unwrap();
    let mut svc = service(&layer);
    let mut refused = 0;
    for i in 0..1000u64 {
        // Some calls a little apart, most at the same instant.
        if i % 7 == 0 {
            tokio::time::advance(Duration::from_micros(300)).await;
        }
        let grpc = [("content-type", "application/grpc")];
        let a = send(
            &mut svc,
            request("test_id", 1, if i % 2 == 0 { &grpc } else { &[] }),
        )
        .await;
        // A gRPC refusal is HTTP 200 with `grpc-status: 8` (trailers-only).
        if a.status == 200 && a.header("grpc-status").is_empty() {
            continue;
        }
        refused += 1;
        assert!(peek(&layer).retry_after() <= Duration::from_millis(1));
        if i % 2 == 0 {
            assert_eq!(a.header("grpc-status"), "8");
            assert_eq!(a.header("grpc-retry-pushback-ms"), "1");
        } else {
            assert_eq!((a.status, a.retry_after()), (429, Some(1)));
        }
    }
    assert!(refused > 500, "{refused}");
}

/// go-redis/redis_rate `rate_test.go`, `TestAllowAtMost`: `AllowAtMost(n)`
/// admits what is there, up to n (7 of 10 asked), partially.
///
/// Deliberate difference: a request here is one unit of work with one
/// cost, admitted whole or not at all (HTTP cannot run 7/10 of a request).
/// With 7 left, a cost-10 request is refused, takes nothing, and is told
/// the truth: `r=7`, and to come back when 3 more units are in (300ms, so
/// `Retry-After: 1`).
#[tokio::test(start_paused = true)]
async fn test_allow_at_most_is_all_or_nothing() {
    let layer = per_second_10();
    let mut svc = service(&layer);
    assert_eq!(
        send(&mut svc, request("test_id", 1, &[]))
            .await
            .r("test_id"),
        9
    );
    assert_eq!(
        send(&mut svc, request("test_id", 2, &[]))
            .await
            .r("test_id"),
        7
    );
    assert_eq!(peek(&layer).reset(), Duration::from_millis(300));

    let a = send(&mut svc, request("test_id", 10, &[])).await;
    assert_eq!(
        (a.status, a.r("test_id"), a.retry_after()),
        (429, 7, Some(1))
    );
    // Nothing taken.
    let s = peek(&layer);
    assert_eq!((s.remaining(), s.reset()), (7, Duration::from_millis(300)));
    // 300ms later the whole request fits (its wait, exactly).
    tokio::time::advance(Duration::from_millis(299)).await;
    assert_eq!(
        send(&mut svc, request("test_id", 10, &[])).await.status,
        429
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    let a = send(&mut svc, request("test_id", 10, &[])).await;
    assert_eq!((a.status, a.r("test_id")), (200, 0));
    assert_eq!(peek(&layer).reset(), Duration::from_secs(1));
}

/// go-redis/redis_rate `rate.go`: `PerMinute(10)` is 10 per minute with
/// `Burst` = `Rate`; the policy a client sees is the same rate.
#[tokio::test(start_paused = true)]
async fn per_minute_limit_and_policy() {
    let layer = builder()
        .quota(Quota::per_minute(10).key(by_key()).name("test_id"))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    for n in 0..10 {
        assert_eq!(
            send(&mut svc, request("test_id", 1, &[])).await.status,
            200,
            "{n}"
        );
    }
    let a = send(&mut svc, request("test_id", 1, &[])).await;
    assert_eq!((a.status, a.retry_after()), (429, Some(6)));
    assert_eq!(a.header("ratelimit-policy"), r#""test_id";q=10;w=60"#);
    assert_eq!(peek(&layer).limit(), 10);
}

/// go-redis/redis_rate `rate.go`, the doc comments of `Result`:
/// `Remaining` — 10 per second with 6 requests received this second leaves
/// 4; `ResetAfter` — one request 200ms ago under a per-second limit resets
/// in 800ms.
#[tokio::test(start_paused = true)]
async fn result_doc_examples() {
    let layer = per_second_10();
    let mut svc = service(&layer);
    for _ in 0..5 {
        send(&mut svc, request("test_id", 1, &[])).await;
    }
    assert_eq!(
        send(&mut svc, request("test_id", 1, &[]))
            .await
            .r("test_id"),
        4
    );

    let layer = builder()
        .quota(Quota::per_second(1).burst(5).key(by_key()).name("test_id"))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    send(&mut svc, request("test_id", 1, &[])).await;
    tokio::time::advance(Duration::from_millis(200)).await;
    assert_eq!(peek(&layer).reset(), Duration::from_millis(800));
}
