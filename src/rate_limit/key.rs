//! What a quota is counted by: the key extractors, the keys they yield,
//! and the fingerprints the in-process store keeps instead of the keys.
//! How the client IP is found (the trusted-proxy walk) is
//! [`client_ip`](super::client_ip)'s.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use http::header::HeaderName;
use http::{Extensions, HeaderMap, Method, Uri};

use super::client_ip::ClientIp;
use crate::ConfigError;
use crate::util::route_paths::{self, RoutePaths};

/// A key a [`KeyExtractor::custom`] closure (or an allow-list) names.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// An IP address (equal to what [`KeyExtractor::client_ip`] extracts).
    Ip(IpAddr),
    /// A number (a tenant id, ...).
    Number(u64),
    /// Text (equal to what [`KeyExtractor::header`], [`KeyExtractor::path`]
    /// and [`KeyExtractor::route`] extract for the same bytes).
    Text(Cow<'static, str>),
}

impl From<IpAddr> for Key {
    fn from(ip: IpAddr) -> Self {
        Key::Ip(ip)
    }
}

impl From<u64> for Key {
    fn from(n: u64) -> Self {
        Key::Number(n)
    }
}

impl From<&'static str> for Key {
    fn from(s: &'static str) -> Self {
        Key::Text(Cow::Borrowed(s))
    }
}

impl From<String> for Key {
    fn from(s: String) -> Self {
        Key::Text(Cow::Owned(s))
    }
}

/// The borrowed form keys are hashed in (so a header key costs no
/// allocation).
#[derive(Hash, Clone, Copy)]
pub(crate) enum KeyRef<'a> {
    Ip(IpAddr),
    Number(u64),
    Bytes(&'a [u8]),
}

impl Key {
    pub(crate) fn as_ref(&self) -> KeyRef<'_> {
        match self {
            Key::Ip(ip) => KeyRef::Ip(*ip),
            Key::Number(n) => KeyRef::Number(*n),
            Key::Text(t) => KeyRef::Bytes(t.as_bytes()),
        }
    }
}

/// Turns keys into 64-bit fingerprints with per-layer random seeds. The
/// in-memory store keeps fingerprints, not keys: constant size per key, no
/// allocation, and not predictable by a client.
///
/// IPv4 addresses (the common client-IP key) go through a seeded bijection
/// (xor, odd multiply, murmur3's finaliser) so that distinct addresses
/// never collide: two IPv4 clients never share a bucket, whatever their
/// number. That guarantee is why it is kept; no bench row isolates its
/// speed against SipHash. Everything else is SipHash-1-3 (`RandomState`),
/// whose 64-bit collisions are unpredictable (per-layer random seed) and
/// rare (about 3 in 10^8 at 10^6 keys).
#[derive(Debug, Clone)]
pub(crate) struct Fingerprinter {
    sip: RandomState,
    k0: u64,
    k1: u64,
}

impl Fingerprinter {
    pub(crate) fn new() -> Self {
        let sip = RandomState::new();
        let k0 = sip.hash_one(0x5eed_u64) | 1;
        let k1 = sip.hash_one(0xfeed_u64);
        Self { sip, k0, k1 }
    }

    #[inline]
    pub(crate) fn of(&self, key: KeyRef<'_>) -> u64 {
        match key {
            KeyRef::Ip(IpAddr::V4(v4)) => {
                let mut h = (u64::from(u32::from(v4)) ^ self.k1).wrapping_mul(self.k0);
                h ^= h >> 33;
                h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
                h ^= h >> 33;
                h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
                h ^ (h >> 33)
            }
            other => self.sip.hash_one(other),
        }
    }
}

/// The fingerprint of `key`.
#[inline]
pub(crate) fn fingerprint(hasher: &Fingerprinter, key: KeyRef<'_>) -> u64 {
    hasher.of(key)
}

/// What a request looks like to a key extractor or cost closure.
pub struct RequestInfo<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request URI.
    pub uri: &'a Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The request extensions.
    pub extensions: &'a Extensions,
    client_ip: &'a ClientIp,
    resolved: OnceCell<Option<IpAddr>>,
}

impl<'a> RequestInfo<'a> {
    pub(crate) fn new<B>(req: &'a http::Request<B>, client_ip: &'a ClientIp) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
            client_ip,
            resolved: OnceCell::new(),
        }
    }

    /// The client IP, resolved with the layer's trusted-proxy settings
    /// (computed once per request).
    pub fn client_ip(&self) -> Option<IpAddr> {
        // Not `get_or_init` with a closure: the closure's two references,
        // copied as one 16-byte value just after they were written as two
        // 8-byte ones, stalled on store forwarding (about 40 ns per keyed
        // request in `benches/compare/benches/rate_limit.rs`).
        if let Some(ip) = self.resolved.get() {
            return *ip;
        }
        let ip = self.client_ip.resolve(self.headers, self.extensions);
        let _ = self.resolved.set(ip);
        ip
    }
}

impl fmt::Debug for RequestInfo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestInfo")
            .field("method", self.method)
            .field("uri", self.uri)
            .finish_non_exhaustive()
    }
}

type CustomFn = dyn Fn(&RequestInfo<'_>) -> Option<Key> + Send + Sync;

#[derive(Clone)]
enum KeyKind {
    Global,
    ClientIp,
    Header(HeaderName),
    Path,
    /// With the stack's declared routes (`routes.paths`), when it has any.
    Route(Option<Arc<RoutePaths>>),
    Custom(Arc<CustomFn>),
}

/// What a [`Quota`](super::Quota) is counted by.
///
/// In config files: `"global"`, `"client_ip"`, `"path"`, `"route"` or
/// `"header:<name>"`.
///
/// ```
/// use tower_rampart::rate_limit::{Key, KeyExtractor};
///
/// let by_tenant = KeyExtractor::header("x-tenant").unwrap();
/// let by_user = KeyExtractor::custom(|req| {
///     req.headers.get("x-user").and_then(|v| v.to_str().ok()).map(|s| Key::from(s.to_owned()))
/// });
/// let parsed: KeyExtractor = "header:x-api-key".parse().unwrap();
/// # let _ = (by_tenant, by_user, parsed);
/// ```
#[derive(Clone)]
pub struct KeyExtractor(KeyKind);

impl KeyExtractor {
    /// One key for every request.
    pub fn global() -> Self {
        Self(KeyKind::Global)
    }

    /// The client IP (see [`ClientIp`] for proxies).
    pub fn client_ip() -> Self {
        Self(KeyKind::ClientIp)
    }

    /// The value of a request header (API key, tenant). A missing or empty
    /// header is a missing key.
    pub fn header(name: &str) -> Result<Self, ConfigError> {
        HeaderName::from_str(name)
            .map(|h| Self(KeyKind::Header(h)))
            .map_err(|_| ConfigError::new("key", format!("`{name}` is not a header name")))
    }

    /// The request path.
    pub fn path() -> Self {
        Self(KeyKind::Path)
    }

    /// The matched route (axum's `MatchedPath`, with the `axum` feature and
    /// the layer inside the router), else the path. In a stack built from a
    /// config that declares `routes.paths`: the declared template the path
    /// matches, else axum's matched path, else the one route `unmatched`
    /// (never the path, which a client could vary to get a bucket per
    /// path).
    pub fn route() -> Self {
        Self(KeyKind::Route(None))
    }

    /// Counts a `route` key by the declared templates `paths` first.
    #[cfg(feature = "config")]
    pub(crate) fn declare_routes(&mut self, paths: &Arc<RoutePaths>) {
        if let KeyKind::Route(declared) = &mut self.0 {
            *declared = Some(Arc::clone(paths));
        }
    }

    /// A closure; `None` is a missing key.
    pub fn custom<F>(f: F) -> Self
    where
        F: Fn(&RequestInfo<'_>) -> Option<Key> + Send + Sync + 'static,
    {
        Self(KeyKind::Custom(Arc::new(f)))
    }

    pub(crate) fn is_global(&self) -> bool {
        matches!(self.0, KeyKind::Global)
    }

    pub(crate) fn default_name(&self) -> String {
        match &self.0 {
            KeyKind::Global => "global".into(),
            KeyKind::ClientIp => "client-ip".into(),
            KeyKind::Header(h) => format!("header-{}", h.as_str()),
            KeyKind::Path => "path".into(),
            KeyKind::Route(_) => "route".into(),
            KeyKind::Custom(_) => "custom".into(),
        }
    }

    /// The key itself, handed to `f` (the engine fingerprints it, the
    /// Redis store also names its keys by it), or `None` when the request
    /// has no such key.
    #[inline]
    pub(crate) fn with_key<R>(
        &self,
        req: &RequestInfo<'_>,
        f: impl FnOnce(KeyRef<'_>) -> R,
    ) -> Option<R> {
        match &self.0 {
            KeyKind::Global => Some(f(KeyRef::Bytes(b""))),
            KeyKind::ClientIp => req.client_ip().map(|ip| f(KeyRef::Ip(ip))),
            KeyKind::Header(name) => crate::util::header::get(req.headers, name)
                .map(|v| v.as_bytes())
                .filter(|b| !b.is_empty())
                .map(|b| f(KeyRef::Bytes(b))),
            KeyKind::Path => Some(f(KeyRef::Bytes(req.uri.path().as_bytes()))),
            KeyKind::Route(declared) => {
                let path = req.uri.path();
                if let Some(t) = declared.as_ref().and_then(|d| d.find(path)) {
                    return Some(f(KeyRef::Bytes(t.as_bytes())));
                }
                #[cfg(feature = "axum")]
                if let Some(m) = req.extensions.get::<axum::extract::MatchedPath>() {
                    return Some(f(KeyRef::Bytes(m.as_str().as_bytes())));
                }
                let route = match declared {
                    Some(_) => route_paths::UNMATCHED,
                    None => path,
                };
                Some(f(KeyRef::Bytes(route.as_bytes())))
            }
            KeyKind::Custom(c) => c(req).map(|k| f(k.as_ref())),
        }
    }
}

impl fmt::Debug for KeyExtractor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyExtractor({})", self.default_name())
    }
}

impl FromStr for KeyExtractor {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.trim() {
            "global" => Ok(Self::global()),
            "client_ip" | "client-ip" | "ip" => Ok(Self::client_ip()),
            "path" => Ok(Self::path()),
            "route" => Ok(Self::route()),
            other => match other.strip_prefix("header:") {
                Some(name) => Self::header(name.trim()),
                None => Err(ConfigError::new(
                    "key",
                    format!("`{other}`: expected global, client_ip, path, route or header:<name>"),
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_fingerprints_are_distinct() {
        let f = Fingerprinter::new();
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000u32 {
            assert!(seen.insert(f.of(KeyRef::Ip(IpAddr::from(i.to_be_bytes())))));
        }
        assert!(!seen.contains(&f.of(KeyRef::Bytes(b"0.0.0.1"))));
        assert_eq!(
            f.of(KeyRef::Ip(ip("1.2.3.4"))),
            f.of(Key::Ip(ip("1.2.3.4")).as_ref())
        );
    }
}
