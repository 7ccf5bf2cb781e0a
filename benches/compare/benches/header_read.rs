//! One header read from a small map: `HeaderMap::get` (hash the name, then
//! probe) against comparing the names in place, as `src/util/header.rs`
//! does below its `SCAN_MAX` values. This bench decides that threshold.
//!
//! The maps hold `n` headers (standard names first, as a client sends
//! them: `host`, `user-agent`, `accept`, ..., then custom ones). Each
//! iteration reads two names: a custom one that is absent (the timeout's
//! budget header on most requests) and `content-type`, absent (`miss`) or
//! present with the budget header too (`hit`).
//!
//! Run: `cargo bench -p tower-rampart-benches --bench header_read -- --warm-up-time 1 --measurement-time 2`
//! Instructions: `HEADER_READ=<scan|map>,<n>,<miss|hit>,<calls>` under
//! `valgrind --tool=cachegrind --cache-sim=no` (two call counts differenced).

use std::hint::black_box;

use criterion::{Criterion, criterion_group};
use http::header::{
    ACCEPT, ACCEPT_ENCODING, ACCEPT_LANGUAGE, CACHE_CONTROL, CONTENT_TYPE, COOKIE, HOST, ORIGIN,
    REFERER, USER_AGENT,
};
use http::{HeaderMap, HeaderName, HeaderValue};

/// `src/util/header.rs`'s comparison, without its threshold (the crate's
/// helper is private; these are the same lines).
#[inline]
fn scan<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
}

#[inline]
fn map<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    headers.get(name)
}

const BUDGET: HeaderName = HeaderName::from_static("x-request-timeout-ms");

fn headers(n: usize, hit: bool) -> HeaderMap {
    let standard = [
        HOST,
        USER_AGENT,
        ACCEPT,
        ACCEPT_ENCODING,
        ACCEPT_LANGUAGE,
        COOKIE,
        REFERER,
        CACHE_CONTROL,
        ORIGIN,
    ];
    let mut m = HeaderMap::new();
    for i in 0..n {
        let name = match standard.get(i) {
            Some(s) => s.clone(),
            None => HeaderName::try_from(format!("x-custom-{i}")).unwrap(),
        };
        m.insert(name, HeaderValue::from(i));
    }
    if hit {
        // Replaces the last two, so the map still holds `n` (at least 2).
        let keys: Vec<_> = m.keys().cloned().collect();
        for k in keys.iter().rev().take(2) {
            m.remove(k);
        }
        m.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        m.insert(BUDGET, HeaderValue::from_static("250"));
    }
    m
}

type Read = for<'a> fn(&'a HeaderMap, &HeaderName) -> Option<&'a HeaderValue>;

#[inline]
fn both(read: Read, m: &HeaderMap) -> usize {
    usize::from(read(black_box(m), black_box(&BUDGET)).is_some())
        + usize::from(read(black_box(m), black_box(&CONTENT_TYPE)).is_some())
}

const SIZES: [usize; 9] = [0, 1, 2, 3, 4, 5, 6, 8, 12];

fn bench(c: &mut Criterion) {
    for hit in [false, true] {
        let mut g = c.benchmark_group(if hit { "hit" } else { "miss" });
        for n in SIZES {
            if hit && n < 2 {
                continue;
            }
            let m = headers(n, hit);
            g.bench_function(format!("map/{n}"), |b| b.iter(|| both(map, &m)));
            g.bench_function(format!("scan/{n}"), |b| b.iter(|| both(scan, &m)));
        }
        g.finish();
    }
}

/// `HEADER_READ=<scan|map>,<n>,<miss|hit>,<calls>`: that many calls and
/// exit, for an instruction count.
fn fixed(spec: &str) {
    let parts: Vec<&str> = spec.split(',').collect();
    let [how, n, hit, calls] = parts[..] else {
        panic!("HEADER_READ=<scan|map>,<n>,<miss|hit>,<calls>");
    };
    let read: Read = if how == "scan" { scan } else { map };
    let m = headers(n.parse().unwrap(), hit == "hit");
    let mut found = 0;
    for _ in 0..calls.parse::<u32>().unwrap() {
        found += both(read, &m);
    }
    println!("{found}");
}

criterion_group!(benches, bench);

fn main() {
    if let Ok(spec) = std::env::var("HEADER_READ") {
        return fixed(&spec);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
