//! What the rate-limit conformance modules share: a service over a layer,
//! requests with a key and a cost, and the IETF fields parsed with `sfv`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_rampart::rate_limit::{KeyExtractor, RateLimitBuilder, RateLimitLayer, RequestInfo};
use tower_rampart::rejection::ResponseBody;

use crate::common::{TestRequest, ok_service};

/// The response type of [`service`].
pub type Res = Response<ResponseBody<Full<Bytes>>>;

/// A builder with no background sweep (tests own time).
pub fn builder() -> RateLimitBuilder {
    RateLimitLayer::builder().idle_sweep(None)
}

/// The `x-key` header as a quota key (a redis-cell / redis_rate key).
pub fn by_key() -> KeyExtractor {
    KeyExtractor::header("x-key").unwrap()
}

/// The request's cost from `x-cost` (default 1): redis-cell's quantity,
/// redis_rate's `n`.
pub fn cost(r: &RequestInfo<'_>) -> u32 {
    r.headers
        .get("x-cost")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(1)
}

/// The layer's service over an always-ready "ok" service.
pub fn service(
    layer: &RateLimitLayer,
) -> impl Service<TestRequest, Response = Res, Error = Infallible> + Clone {
    layer.layer(ok_service())
}

/// A request for `key` costing `cost`, with extra headers.
pub fn request(key: &str, cost: u32, headers: &[(&str, &str)]) -> TestRequest {
    let mut b = Request::get("http://test/")
        .header("x-key", key)
        .header("x-cost", cost.to_string());
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

/// One answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    /// `Retry-After` in seconds, if sent.
    pub fn retry_after(&self) -> Option<u64> {
        self.headers
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse().unwrap())
    }

    /// The `RateLimit` items: name -> parameters.
    pub fn ratelimit(&self) -> Vec<(String, BTreeMap<String, i64>)> {
        sf_items(self.header("ratelimit"))
    }

    /// `r` of quota `name` in `RateLimit`.
    pub fn r(&self, name: &str) -> i64 {
        self.param(name, "r")
    }

    /// `t` of quota `name` in `RateLimit`.
    pub fn t(&self, name: &str) -> i64 {
        self.param(name, "t")
    }

    fn param(&self, name: &str, key: &str) -> i64 {
        let items = self.ratelimit();
        let (_, params) = items
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no `{name}` in {items:?}"));
        params[key]
    }
}

/// Sends `req` through `svc` and reads the answer.
pub async fn send<S>(svc: &mut S, req: TestRequest) -> Answer
where
    S: Service<TestRequest, Response = Res, Error = Infallible>,
{
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A structured-field list of string items with integer parameters (both
/// IETF fields), parsed with `sfv`; panics on anything else.
pub fn sf_items(value: &str) -> Vec<(String, BTreeMap<String, i64>)> {
    let list: sfv::List = sfv::Parser::new(value)
        .parse()
        .unwrap_or_else(|e| panic!("not a structured-field list ({e}): {value:?}"));
    list.into_iter()
        .map(|entry| match entry {
            sfv::ListEntry::Item(item) => {
                let name = item
                    .bare_item
                    .as_string()
                    .unwrap_or_else(|| panic!("not a string item in {value:?}"))
                    .as_str()
                    .to_owned();
                let params = item
                    .params
                    .iter()
                    .map(|(k, v)| {
                        let v = v.as_integer().unwrap_or_else(|| {
                            panic!("`{}` not an integer in {value:?}", k.as_str())
                        });
                        (k.as_str().to_owned(), i64::from(v))
                    })
                    .collect();
                (name, params)
            }
            sfv::ListEntry::InnerList(_) => panic!("an inner list in {value:?}"),
        })
        .collect()
}
