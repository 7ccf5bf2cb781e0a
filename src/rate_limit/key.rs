//! What a quota is counted by: key extractors and the trusted-proxy client IP.
//!
//! The client IP is the peer address of the connection (axum's
//! `ConnectInfo<SocketAddr>` with the `axum` feature, or a plain
//! `SocketAddr` request extension). Forwarding headers are believed only
//! when that peer is inside a trusted-proxy CIDR: then `Forwarded`
//! (RFC 7239), else `X-Forwarded-For`, else `X-Real-IP` is walked from the
//! right, past trusted hops, up to a hop cap; the first untrusted address is
//! the client. Entries a client could have written (everything left of the
//! first untrusted hop) are never read, so prepending fake entries does not
//! change the key. A garbage entry stops the walk at the last trusted hop,
//! as if the rest of the header were absent.
//!
//! ```
//! use std::net::{IpAddr, SocketAddr};
//! use tower_rampart::rate_limit::ClientIp;
//!
//! let ip = ClientIp::new().trusted_proxies(["10.0.0.0/8"]).unwrap();
//! let req = http::Request::builder()
//!     .header("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.2")
//!     .extension(SocketAddr::from(([10, 0, 0, 1], 40000)))
//!     .body(())
//!     .unwrap();
//! let client = ip.resolve(req.headers(), req.extensions());
//! assert_eq!(client, Some("203.0.113.7".parse::<IpAddr>().unwrap()));
//! ```

use std::borrow::Cow;
use std::cell::OnceCell;
use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use http::header::{FORWARDED, HeaderName};
use http::{Extensions, HeaderMap, Method, Uri};
use ipnet::IpNet;

use crate::ConfigError;

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
#[derive(Hash)]
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
/// (xor, odd multiply, murmur3's finaliser): distinct addresses never
/// collide, and it costs a few instructions instead of a SipHash. Everything
/// else is SipHash-1-3 (`RandomState`).
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
        *self
            .resolved
            .get_or_init(|| self.client_ip.resolve(self.headers, self.extensions))
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
    Route,
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
    /// the layer inside the router), else the path.
    pub fn route() -> Self {
        Self(KeyKind::Route)
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
            KeyKind::Route => "route".into(),
            KeyKind::Custom(_) => "custom".into(),
        }
    }

    /// The key's fingerprint, or `None` when the request has no such key.
    /// Never called for a global key.
    pub(crate) fn fingerprint(&self, req: &RequestInfo<'_>, hasher: &Fingerprinter) -> Option<u64> {
        match &self.0 {
            KeyKind::Global => Some(0),
            KeyKind::ClientIp => req
                .client_ip()
                .map(|ip| fingerprint(hasher, KeyRef::Ip(ip))),
            KeyKind::Header(name) => req
                .headers
                .get(name)
                .map(|v| v.as_bytes())
                .filter(|b| !b.is_empty())
                .map(|b| fingerprint(hasher, KeyRef::Bytes(b))),
            KeyKind::Path => Some(fingerprint(
                hasher,
                KeyRef::Bytes(req.uri.path().as_bytes()),
            )),
            KeyKind::Route => {
                #[cfg(feature = "axum")]
                if let Some(m) = req.extensions.get::<axum::extract::MatchedPath>() {
                    return Some(fingerprint(hasher, KeyRef::Bytes(m.as_str().as_bytes())));
                }
                Some(fingerprint(
                    hasher,
                    KeyRef::Bytes(req.uri.path().as_bytes()),
                ))
            }
            KeyKind::Custom(f) => f(req).map(|k| fingerprint(hasher, k.as_ref())),
        }
    }

    /// The key itself, handed to `f` (the Redis store names keys by it), or
    /// `None` when the request has no such key. Mirrors
    /// [`fingerprint`](Self::fingerprint).
    #[cfg(feature = "redis")]
    pub(crate) fn with_key<R>(
        &self,
        req: &RequestInfo<'_>,
        f: impl FnOnce(KeyRef<'_>) -> R,
    ) -> Option<R> {
        match &self.0 {
            KeyKind::Global => Some(f(KeyRef::Bytes(b""))),
            KeyKind::ClientIp => req.client_ip().map(|ip| f(KeyRef::Ip(ip))),
            KeyKind::Header(name) => req
                .headers
                .get(name)
                .map(|v| v.as_bytes())
                .filter(|b| !b.is_empty())
                .map(|b| f(KeyRef::Bytes(b))),
            KeyKind::Path => Some(f(KeyRef::Bytes(req.uri.path().as_bytes()))),
            KeyKind::Route => {
                #[cfg(feature = "axum")]
                if let Some(m) = req.extensions.get::<axum::extract::MatchedPath>() {
                    return Some(f(KeyRef::Bytes(m.as_str().as_bytes())));
                }
                Some(f(KeyRef::Bytes(req.uri.path().as_bytes())))
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

/// How the client IP is found: the peer address, or behind trusted proxies
/// the forwarding headers walked from the right.
///
/// Defaults: no trusted proxies (forwarding headers are ignored), hop cap 5,
/// IPv6 keyed by the full address.
#[derive(Clone, Debug)]
pub struct ClientIp {
    trusted: Vec<IpNet>,
    max_hops: usize,
    ipv6_prefix: u8,
}

impl Default for ClientIp {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientIp {
    /// The peer address only.
    pub fn new() -> Self {
        Self {
            trusted: Vec::new(),
            max_hops: 5,
            ipv6_prefix: 128,
        }
    }

    /// Proxies whose forwarding headers are believed, as CIDRs (`10.0.0.0/8`)
    /// or single addresses.
    pub fn trusted_proxies<I, T>(mut self, cidrs: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        self.trusted = parse_cidrs(cidrs, "trusted_proxies")?;
        Ok(self)
    }

    /// At most this many forwarding entries are walked (default 5, at least 1).
    pub fn max_hops(mut self, hops: usize) -> Result<Self, ConfigError> {
        if hops == 0 {
            return Err(ConfigError::new("max_hops", "must be greater than 0"));
        }
        self.max_hops = hops;
        Ok(self)
    }

    /// Key IPv6 clients by their `/prefix` network (e.g. 64: one key per
    /// customer subnet). Default 128 (the full address).
    pub fn ipv6_prefix(mut self, prefix: u8) -> Result<Self, ConfigError> {
        if prefix == 0 || prefix > 128 {
            return Err(ConfigError::new("ipv6_prefix", "must be in 1..=128"));
        }
        self.ipv6_prefix = prefix;
        Ok(self)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The connection's peer address, from the request extensions.
    pub fn peer(extensions: &Extensions) -> Option<IpAddr> {
        #[cfg(feature = "axum")]
        if let Some(ci) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
            return Some(ci.0.ip());
        }
        extensions.get::<SocketAddr>().map(SocketAddr::ip)
    }

    /// The client IP of a request with these headers and extensions.
    pub fn resolve(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<IpAddr> {
        let peer = canonical(Self::peer(extensions)?);
        let ip = if self.trusted.is_empty() || !self.is_trusted(peer) {
            peer
        } else {
            self.walk(peer, headers)
        };
        Some(self.mask(ip))
    }

    fn walk(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if headers.contains_key(FORWARDED) {
            let entries = headers
                .get_all(FORWARDED)
                .iter()
                .rev()
                .flat_map(|v| split_rev(v.as_bytes()))
                .map(parse_forwarded_element);
            return self.walk_entries(peer, entries);
        }
        let xff = HeaderName::from_static("x-forwarded-for");
        if headers.contains_key(&xff) {
            let entries = headers
                .get_all(&xff)
                .iter()
                .rev()
                .flat_map(|v| split_rev(v.as_bytes()))
                .map(parse_node);
            return self.walk_entries(peer, entries);
        }
        let real = HeaderName::from_static("x-real-ip");
        let mut all = headers.get_all(&real).iter();
        match (all.next(), all.next()) {
            (Some(v), None) => parse_node(v.as_bytes()).map_or(peer, canonical),
            _ => peer,
        }
    }

    fn walk_entries(&self, peer: IpAddr, entries: impl Iterator<Item = Option<IpAddr>>) -> IpAddr {
        let mut current = peer;
        for (hop, entry) in entries.enumerate() {
            let Some(ip) = entry.map(canonical) else {
                return current;
            };
            if !self.is_trusted(ip) {
                return ip;
            }
            current = ip;
            if hop + 1 >= self.max_hops {
                break;
            }
        }
        current
    }

    fn mask(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) if self.ipv6_prefix < 128 => {
                let bits = u128::from(v6);
                let mask = u128::MAX << (128 - u32::from(self.ipv6_prefix));
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
            other => other,
        }
    }
}

pub(crate) fn parse_cidrs<I, T>(cidrs: I, field: &str) -> Result<Vec<IpNet>, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: AsRef<str>,
{
    cidrs
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let c = c.as_ref().trim();
            c.parse::<IpNet>()
                .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    ConfigError::new(
                        format!("{field}[{i}]"),
                        format!("`{c}` is not a CIDR or IP address"),
                    )
                })
        })
        .collect()
}

fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

fn split_rev(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.rsplit(|&c| c == b',').map(trim)
}

/// One `X-Forwarded-For` / `X-Real-IP` node: `ip`, `ipv4:port`,
/// `[ipv6]` or `[ipv6]:port`.
fn parse_node(b: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(trim(b)).ok()?;
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, tail) = rest.split_once(']')?;
        if !(tail.is_empty() || tail.starts_with(':')) {
            return None;
        }
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    s.parse::<SocketAddr>().ok().map(|sa| sa.ip())
}

/// The `for=` node of one RFC 7239 `Forwarded` element.
fn parse_forwarded_element(b: &[u8]) -> Option<IpAddr> {
    for pair in b.split(|&c| c == b';') {
        let pair = trim(pair);
        let Some(eq) = pair.iter().position(|&c| c == b'=') else {
            continue;
        };
        if !pair[..eq].trim_ascii().eq_ignore_ascii_case(b"for") {
            continue;
        }
        let mut value = trim(&pair[eq + 1..]);
        if value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"' {
            value = &value[1..value.len() - 1];
        }
        return parse_node(value);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn resolve(c: &ClientIp, peer: &str, headers: &[(&str, &str)]) -> Option<IpAddr> {
        let mut b = http::Request::builder();
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut req = b.body(()).unwrap();
        req.extensions_mut().insert(SocketAddr::new(ip(peer), 1234));
        c.resolve(req.headers(), req.extensions())
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

    #[test]
    fn nodes() {
        assert_eq!(parse_node(b"1.2.3.4"), Some(ip("1.2.3.4")));
        assert_eq!(parse_node(b" 1.2.3.4:80 "), Some(ip("1.2.3.4")));
        assert_eq!(parse_node(b"[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(parse_node(b"2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(parse_node(b"unknown"), None);
        assert_eq!(parse_node(b"[::1"), None);
        assert_eq!(parse_node(b"\xff\xfe"), None);
        assert_eq!(
            parse_forwarded_element(b"proto=https; For=\"[2001:db8:cafe::17]:4711\""),
            Some(ip("2001:db8:cafe::17"))
        );
        assert_eq!(parse_forwarded_element(b"for=_hidden"), None);
        assert_eq!(parse_forwarded_element(b"by=1.2.3.4"), None);
    }

    #[test]
    fn untrusted_peer_headers_ignored() {
        let c = ClientIp::new().trusted_proxies(["10.0.0.0/8"]).unwrap();
        assert_eq!(
            resolve(&c, "203.0.113.9", &[("x-forwarded-for", "1.1.1.1")]),
            Some(ip("203.0.113.9"))
        );
        let none = ClientIp::new();
        assert_eq!(
            resolve(&none, "10.0.0.1", &[("x-forwarded-for", "1.1.1.1")]),
            Some(ip("10.0.0.1"))
        );
    }

    #[test]
    fn walks_right_to_left() {
        let c = ClientIp::new()
            .trusted_proxies(["10.0.0.0/8", "192.168.1.1"])
            .unwrap();
        let h = |v| resolve(&c, "10.0.0.1", &[("x-forwarded-for", v)]);
        assert_eq!(h("1.1.1.1, 2.2.2.2, 10.9.9.9"), Some(ip("2.2.2.2")));
        assert_eq!(h("2.2.2.2"), Some(ip("2.2.2.2")));
        assert_eq!(h("garbage, 10.1.1.1"), Some(ip("10.1.1.1")));
        assert_eq!(h("2.2.2.2, garbage"), Some(ip("10.0.0.1")));
        assert_eq!(h("10.1.1.1, 192.168.1.1"), Some(ip("10.1.1.1")));
        // Two header lines: the later one is to the right.
        assert_eq!(
            resolve(
                &c,
                "10.0.0.1",
                &[
                    ("x-forwarded-for", "3.3.3.3"),
                    ("x-forwarded-for", "10.2.2.2")
                ]
            ),
            Some(ip("3.3.3.3"))
        );
        // Forwarded wins over X-Forwarded-For.
        assert_eq!(
            resolve(
                &c,
                "10.0.0.1",
                &[
                    ("forwarded", "for=9.9.9.9, for=\"4.4.4.4:80\";proto=https"),
                    ("x-forwarded-for", "5.5.5.5")
                ]
            ),
            Some(ip("4.4.4.4"))
        );
        assert_eq!(
            resolve(&c, "10.0.0.1", &[("x-real-ip", "6.6.6.6")]),
            Some(ip("6.6.6.6"))
        );
        assert_eq!(
            resolve(&c, "10.0.0.1", &[("x-real-ip", "nonsense")]),
            Some(ip("10.0.0.1"))
        );
    }

    #[test]
    fn hop_cap_and_masking() {
        let c = ClientIp::new()
            .trusted_proxies(["10.0.0.0/8"])
            .unwrap()
            .max_hops(2)
            .unwrap();
        assert_eq!(
            resolve(
                &c,
                "10.0.0.1",
                &[("x-forwarded-for", "1.1.1.1, 10.0.0.4, 10.0.0.3, 10.0.0.2")]
            ),
            Some(ip("10.0.0.3"))
        );
        let v6 = ClientIp::new().ipv6_prefix(64).unwrap();
        assert_eq!(
            resolve(&v6, "2001:db8:1:2:3:4:5:6", &[]),
            Some(ip("2001:db8:1:2::"))
        );
        assert_eq!(resolve(&v6, "::ffff:1.2.3.4", &[]), Some(ip("1.2.3.4")));
        assert!(ClientIp::new().trusted_proxies(["10.0.0.0/33"]).is_err());
        assert_eq!(
            ClientIp::new()
                .trusted_proxies(["10.0.0.0/8", "nope"])
                .unwrap_err()
                .field(),
            "trusted_proxies[1]"
        );
    }
}
