// Past ~500 lines: about 470 lines of code, the rest its parsing tests
// (every forwarding header's edge cases).
//! The client IP: the peer address, or behind trusted proxies the one
//! forwarding header the operator names, walked from the right.
//!
//! The client IP is the peer address of the connection (axum's
//! `ConnectInfo<SocketAddr>` with the `axum` feature, or a plain
//! `SocketAddr` request extension). Behind proxies, the operator names the
//! one forwarding header the proxies write ([`ClientIpHeader`]) and the
//! proxies' networks; that header is believed only when the peer is one of
//! those proxies, and every other forwarding header is ignored, so a client
//! cannot pick its key by sending a header the proxy does not write. A list
//! header is walked from the right, past trusted hops, up to a hop cap; the
//! first untrusted address is the client. Entries a client could have
//! written (everything left of the first untrusted hop) are never read. A
//! garbage entry stops the walk at the last trusted hop, as if the rest of
//! the header were absent. See [`ClientIp`] for the whole trust model.
//!
//! ```
//! use std::net::{IpAddr, SocketAddr};
//! use tower_rampart::rate_limit::{ClientIp, ClientIpHeader};
//!
//! let ip = ClientIp::new()
//!     .header(ClientIpHeader::XForwardedFor)
//!     .trusted_proxies(["10.0.0.0/8"])
//!     .unwrap();
//! let req = http::Request::builder()
//!     .header("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.2")
//!     .header("x-real-ip", "6.6.6.6") // not the named header: ignored
//!     .extension(SocketAddr::from(([10, 0, 0, 1], 40000)))
//!     .body(())
//!     .unwrap();
//! let client = ip.resolve(req.headers(), req.extensions());
//! assert_eq!(client, Some("203.0.113.7".parse::<IpAddr>().unwrap()));
//! ```

// Over ~500 lines because of its tests (about 380): the trust model's
// cases and the forged-header property test stay next to the parser they
// pin.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use http::header::{FORWARDED, HeaderName};
use http::{Extensions, HeaderMap};
use ipnet::IpNet;

use crate::ConfigError;

/// The one forwarding header the trusted proxies write, and how its value
/// is read. Every other forwarding header is ignored.
///
/// | variant | config value | value | read |
/// |---|---|---|---|
/// | [`Forwarded`](Self::Forwarded) | `forwarded` | RFC 7239 list of elements, proxies append | the `for=` of each element, from the right |
/// | [`XForwardedFor`](Self::XForwardedFor) | `x-forwarded-for` | list of addresses, proxies append | from the right |
/// | [`XRealIp`](Self::XRealIp) | `x-real-ip` | one address, the proxy sets it | as is |
/// | [`Custom`](Self::Custom) | any other name, e.g. `cf-connecting-ip` | one address, the proxy sets it | as is |
///
/// Several lines of a list header are one list, in order (RFC 9110
/// §5.3). A single-address header sent more than once, or any value that
/// is not an address, counts as absent.
///
/// ```
/// use tower_rampart::rate_limit::ClientIpHeader;
///
/// let xff: ClientIpHeader = "X-Forwarded-For".parse().unwrap();
/// assert_eq!(xff, ClientIpHeader::XForwardedFor);
/// let cf: ClientIpHeader = "cf-connecting-ip".parse().unwrap();
/// assert_eq!(cf.name().as_str(), "cf-connecting-ip");
/// assert!("bad header".parse::<ClientIpHeader>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientIpHeader {
    /// RFC 7239 `Forwarded`: `for=` of each element, walked from the right.
    /// Obfuscated (`for=_hidden`) and `for=unknown` nodes count as absent.
    Forwarded,
    /// `X-Forwarded-For`: a comma-separated list, walked from the right.
    XForwardedFor,
    /// `X-Real-IP`: one address, set (not appended to) by the proxy.
    XRealIp,
    /// Another header holding one address, set (not appended to) by the
    /// proxy: `CF-Connecting-IP`, `True-Client-IP`, `Fly-Client-IP`...
    /// [`ClientIp::header`] reads a standard name given here with that
    /// header's own rules.
    Custom(HeaderName),
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

impl ClientIpHeader {
    /// The header's name.
    pub fn name(&self) -> &HeaderName {
        match self {
            Self::Forwarded => &FORWARDED,
            Self::XForwardedFor => &X_FORWARDED_FOR,
            Self::XRealIp => &X_REAL_IP,
            Self::Custom(name) => name,
        }
    }

    /// The standard variant for a standard name, `self` otherwise.
    fn normalized(self) -> Self {
        match self {
            Self::Custom(name) if name == FORWARDED => Self::Forwarded,
            Self::Custom(name) if name == X_FORWARDED_FOR => Self::XForwardedFor,
            Self::Custom(name) if name == X_REAL_IP => Self::XRealIp,
            other => other,
        }
    }
}

impl FromStr for ClientIpHeader {
    type Err = ConfigError;

    /// A header name, case-insensitive: `forwarded`, `x-forwarded-for` and
    /// `x-real-ip` get their own rules, any other name holds one address.
    /// The error names `client_ip_header`.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let s = s.trim();
        HeaderName::from_bytes(s.as_bytes())
            .map(|name| Self::Custom(name).normalized())
            .map_err(|_| {
                ConfigError::new(
                    "client_ip_header",
                    format!(
                        "`{s}` is not a header name (use forwarded, x-forwarded-for, x-real-ip or a header such as cf-connecting-ip)"
                    ),
                )
            })
    }
}

impl fmt::Display for ClientIpHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name().as_str())
    }
}

/// How the client IP is found: the peer address, or, when the peer is a
/// trusted proxy, the one forwarding header the operator names.
///
/// The trust model, in full:
///
/// - With no header named ([`ClientIp::new`], the default), the client is
///   the connection's peer address. Every forwarding header is ignored.
/// - With a [`header`](Self::header) named and the peer inside
///   [`trusted_proxies`](Self::trusted_proxies), that header (and no other)
///   is read: a list header is walked from the right past trusted
///   addresses, up to [`max_hops`](Self::max_hops) entries, and the first
///   untrusted address is the client; a single-address header is taken as
///   is. Entries left of the first untrusted one are never read, so what a
///   client writes in front of its proxy's entry changes nothing. A
///   malformed entry (or a missing, duplicated or garbled single-address
///   header) stops the walk at the last trusted view: the proxy's own
///   address when nothing usable is there.
/// - A peer outside `trusted_proxies` is the client, whatever it sends.
///
/// A header without trusted proxies, trusted proxies without a header, or
/// a trusted network of every address (`0.0.0.0/0`, `::/0`) is refused
/// when the layer is built, naming `client_ip_header` or `trusted_proxies`.
///
/// What this cannot fix: the proxy must write the named header on every
/// request (append to a list header; set, never pass through, a
/// single-address header), and clients must not reach the server except
/// through the trusted proxies' addresses.
///
/// Defaults: peer only, hop cap 5, IPv6 keyed by the full address.
///
/// ```
/// use tower_rampart::rate_limit::{ClientIp, ClientIpHeader};
///
/// // Behind a load balancer in 10.0.0.0/8 that appends X-Forwarded-For.
/// let ip = ClientIp::new()
///     .header(ClientIpHeader::XForwardedFor)
///     .trusted_proxies(["10.0.0.0/8"])
///     .unwrap();
/// # let _ = ip;
/// ```
#[derive(Clone, Debug)]
pub struct ClientIp {
    header: Option<ClientIpHeader>,
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
            header: None,
            trusted: Vec::new(),
            max_hops: 5,
            ipv6_prefix: 128,
        }
    }

    /// The one forwarding header the trusted proxies write; every other is
    /// ignored. Needs [`trusted_proxies`](Self::trusted_proxies).
    pub fn header(mut self, header: ClientIpHeader) -> Self {
        self.header = Some(header.normalized());
        self
    }

    /// Proxies whose forwarding header is believed, as CIDRs (`10.0.0.0/8`)
    /// or single addresses. Needs a [`header`](Self::header). A network of
    /// every address (`/0`) is refused: any client could then choose its
    /// key.
    pub fn trusted_proxies<I, T>(mut self, cidrs: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let trusted = parse_cidrs(cidrs, "trusted_proxies")?;
        if let Some(i) = trusted.iter().position(|net| net.prefix_len() == 0) {
            return Err(ConfigError::new(
                format!("trusted_proxies[{i}]"),
                "trusts every address, so any client could choose its key: list the proxies' networks",
            ));
        }
        self.trusted = trusted;
        Ok(self)
    }

    /// At most this many forwarding entries are walked (default 5, at least 1).
    pub fn max_hops(mut self, hops: usize) -> Result<Self, ConfigError> {
        if hops == 0 {
            return Err(ConfigError::new(
                "max_hops",
                crate::config_util::MUST_BE_POSITIVE,
            ));
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

    /// When this resolution masks IPv6 clients to a prefix: the same one
    /// unmasked (allow-lists name addresses, not the networks keys are
    /// masked to).
    pub(crate) fn unmasked(&self) -> Option<ClientIp> {
        (self.ipv6_prefix < 128).then(|| ClientIp {
            ipv6_prefix: 128,
            ..self.clone()
        })
    }

    /// The forwarding header read from trusted proxies, if any.
    pub fn forwarding_header(&self) -> Option<&ClientIpHeader> {
        self.header.as_ref()
    }

    /// A header and trusted proxies go together: either alone is a
    /// mistake that would either do nothing or believe anyone.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match (&self.header, self.trusted.is_empty()) {
            (None, false) => Err(ConfigError::new(
                "client_ip_header",
                "required with trusted_proxies: name the one header the proxies write (forwarded, x-forwarded-for, x-real-ip or e.g. cf-connecting-ip)",
            )),
            (Some(h), true) => Err(ConfigError::new(
                "trusted_proxies",
                format!(
                    "required with client_ip_header: list the proxies that write `{h}` (believed from anyone, it would let every client choose its key)"
                ),
            )),
            _ => Ok(()),
        }
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
        let ip = match &self.header {
            Some(header) if self.is_trusted(peer) => self.read(header, peer, headers),
            _ => peer,
        };
        Some(self.mask(ip))
    }

    fn read(&self, header: &ClientIpHeader, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        match header {
            ClientIpHeader::Forwarded => self.walk(
                peer,
                list_rev(headers, &FORWARDED).map(parse_forwarded_element),
            ),
            ClientIpHeader::XForwardedFor => {
                self.walk(peer, list_rev(headers, &X_FORWARDED_FOR).map(parse_node))
            }
            ClientIpHeader::XRealIp => single(headers, &X_REAL_IP).unwrap_or(peer),
            ClientIpHeader::Custom(name) => single(headers, name).unwrap_or(peer),
        }
    }

    fn walk(&self, peer: IpAddr, entries: impl Iterator<Item = Option<IpAddr>>) -> IpAddr {
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

/// The elements of every line of a list header, rightmost first (later
/// lines are further right); empty elements are skipped (RFC 9110 §5.6.1).
fn list_rev<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .rev()
        .flat_map(|v| v.as_bytes().rsplit(|&c| c == b',').map(trim))
        .filter(|e| !e.is_empty())
}

/// A single-address header: exactly one line holding one address.
fn single(headers: &HeaderMap, name: &HeaderName) -> Option<IpAddr> {
    let mut all = headers.get_all(name).iter();
    match (all.next(), all.next()) {
        (Some(v), None) => parse_node(v.as_bytes()).map(canonical),
        _ => None,
    }
}

/// One node: `ip`, `ipv4:port`, `[ipv6]` or `[ipv6]:port`, where a port may
/// be RFC 7239's obfuscated `_token`. Anything else (`unknown`, `_hidden`,
/// a zone id, a hostname) is `None`.
fn parse_node(b: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(trim(b)).ok()?;
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, tail) = rest.split_once(']')?;
        if !(tail.is_empty() || tail.strip_prefix(':').is_some_and(valid_port)) {
            return None;
        }
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    let (host, port) = s.rsplit_once(':')?;
    if !valid_port(port) {
        return None;
    }
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// A port number, or an RFC 7239 obfuscated port (`_` then letters,
/// digits, `.`, `_`, `-`).
fn valid_port(p: &str) -> bool {
    match p.strip_prefix('_') {
        Some(obf) => {
            !obf.is_empty()
                && obf
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        }
        None => {
            !p.is_empty()
                && p.len() <= 5
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u16>().is_ok()
        }
    }
}

/// The `for=` node of one RFC 7239 `Forwarded` element; `None` when it has
/// none, more than one, or one that is not an address.
fn parse_forwarded_element(b: &[u8]) -> Option<IpAddr> {
    let mut found = None;
    for pair in b.split(|&c| c == b';') {
        let pair = trim(pair);
        let Some(eq) = pair.iter().position(|&c| c == b'=') else {
            continue;
        };
        if !pair[..eq].trim_ascii().eq_ignore_ascii_case(b"for") {
            continue;
        }
        if found.is_some() {
            return None;
        }
        let mut value = trim(&pair[eq + 1..]);
        if value.first() == Some(&b'"') {
            if value.len() < 2 || value.last() != Some(&b'"') {
                return None;
            }
            value = &value[1..value.len() - 1];
        }
        found = Some(value);
    }
    parse_node(found?)
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

    fn via(header: ClientIpHeader) -> ClientIp {
        ClientIp::new()
            .header(header)
            .trusted_proxies(["10.0.0.0/8", "192.168.1.1"])
            .unwrap()
    }

    #[test]
    fn nodes() {
        assert_eq!(parse_node(b"1.2.3.4"), Some(ip("1.2.3.4")));
        assert_eq!(parse_node(b" 1.2.3.4:80 "), Some(ip("1.2.3.4")));
        assert_eq!(parse_node(b"[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(parse_node(b"[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_node(b"2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(parse_node(b"::ffff:1.2.3.4"), Some(ip("::ffff:1.2.3.4")));
        // RFC 7239 §6.3 obfuscated ports keep the address.
        assert_eq!(parse_node(b"1.2.3.4:_x9-y"), Some(ip("1.2.3.4")));
        assert_eq!(parse_node(b"[2001:db8::1]:_abc"), Some(ip("2001:db8::1")));
        for bad in [
            &b"unknown"[..],
            b"_hidden",
            b"_SEVKISEK",
            b"",
            b"[::1",
            b"[::1]x",
            b"[::1]:",
            b"[::1]:65536",
            b"[1.2.3.4]",
            b"1.2.3.4:",
            b"1.2.3.4:+80",
            b"1.2.3.4:_",
            b"1.2.3.4:_a b",
            b"2001:db8::1:80:1:2:3:4:5",
            b"fe80::1%eth0",
            b"010.0.0.1",
            b"1.2.3",
            b"example.com:80",
            b"1.2.3.4 5.6.7.8",
            b"\xff\xfe",
        ] {
            assert_eq!(parse_node(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn forwarded_elements() {
        let el = parse_forwarded_element;
        assert_eq!(
            el(b"proto=https; For=\"[2001:db8:cafe::17]:4711\""),
            Some(ip("2001:db8:cafe::17"))
        );
        assert_eq!(el(b"for=192.0.2.43"), Some(ip("192.0.2.43")));
        assert_eq!(
            el(b"for=\"192.0.2.43:_gazonk\";by=10.0.0.1"),
            Some(ip("192.0.2.43"))
        );
        // Obfuscated and unknown nodes are absent (RFC 7239 §6.2, §6.3).
        assert_eq!(el(b"for=_hidden"), None);
        assert_eq!(el(b"for=\"_SEVKISEK\""), None);
        assert_eq!(el(b"for=unknown"), None);
        // No `for`, two `for`s, broken quoting: malformed.
        assert_eq!(el(b"by=1.2.3.4"), None);
        assert_eq!(el(b"proto=https"), None);
        assert_eq!(el(b"for=1.2.3.4;for=5.6.7.8"), None);
        assert_eq!(el(b"for=\"1.2.3.4"), None);
        assert_eq!(el(b"for=\""), None);
        assert_eq!(el(b"for="), None);
    }

    #[test]
    fn header_names() {
        assert_eq!(
            "Forwarded".parse::<ClientIpHeader>().unwrap(),
            ClientIpHeader::Forwarded
        );
        assert_eq!(
            " x-forwarded-for ".parse::<ClientIpHeader>().unwrap(),
            ClientIpHeader::XForwardedFor
        );
        assert_eq!(
            "X-Real-IP".parse::<ClientIpHeader>().unwrap(),
            ClientIpHeader::XRealIp
        );
        let cf = "CF-Connecting-IP".parse::<ClientIpHeader>().unwrap();
        assert_eq!(cf.to_string(), "cf-connecting-ip");
        for bad in ["", "x forwarded", "x-forwarded-for,", "é"] {
            assert_eq!(
                bad.parse::<ClientIpHeader>().unwrap_err().field(),
                "client_ip_header"
            );
        }
        // A standard name given as a custom header keeps its own rules.
        let c = ClientIp::new().header(ClientIpHeader::Custom(X_FORWARDED_FOR.clone()));
        assert_eq!(c.forwarding_header(), Some(&ClientIpHeader::XForwardedFor));
    }

    #[test]
    fn header_and_proxies_go_together() {
        assert!(ClientIp::new().validate().is_ok());
        let proxies_only = ClientIp::new().trusted_proxies(["10.0.0.0/8"]).unwrap();
        assert_eq!(
            proxies_only.validate().unwrap_err().field(),
            "client_ip_header"
        );
        let header_only = ClientIp::new().header(ClientIpHeader::XRealIp);
        assert_eq!(
            header_only.validate().unwrap_err().field(),
            "trusted_proxies"
        );
        assert!(via(ClientIpHeader::Forwarded).validate().is_ok());
        for everyone in ["0.0.0.0/0", "::/0"] {
            assert_eq!(
                ClientIp::new()
                    .trusted_proxies(["10.0.0.0/8", everyone])
                    .unwrap_err()
                    .field(),
                "trusted_proxies[1]"
            );
        }
        // Resolution never believes a header it cannot tie to a proxy, even
        // when used without a layer (which would refuse these configs).
        let h = [("x-forwarded-for", "1.1.1.1"), ("forwarded", "for=2.2.2.2")];
        assert_eq!(resolve(&proxies_only, "10.0.0.1", &h), Some(ip("10.0.0.1")));
        assert_eq!(
            resolve(&header_only, "10.0.0.1", &[("x-real-ip", "3.3.3.3")]),
            Some(ip("10.0.0.1"))
        );
    }

    #[test]
    fn untrusted_peer_headers_ignored() {
        let c = via(ClientIpHeader::XForwardedFor);
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
    fn only_the_named_header_counts() {
        let all = [
            ("forwarded", "for=1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-real-ip", "3.3.3.3"),
            ("cf-connecting-ip", "4.4.4.4"),
            ("true-client-ip", "5.5.5.5"),
        ];
        let cf = ClientIpHeader::Custom(HeaderName::from_static("cf-connecting-ip"));
        for (header, want) in [
            (ClientIpHeader::Forwarded, "1.1.1.1"),
            (ClientIpHeader::XForwardedFor, "2.2.2.2"),
            (ClientIpHeader::XRealIp, "3.3.3.3"),
            (cf, "4.4.4.4"),
        ] {
            let c = via(header.clone());
            assert_eq!(resolve(&c, "10.0.0.1", &all), Some(ip(want)), "{header}");
            // Without the named header, the others are not a fallback.
            let others: Vec<_> = all
                .iter()
                .copied()
                .filter(|(k, _)| *k != header.name().as_str())
                .collect();
            assert_eq!(
                resolve(&c, "10.0.0.1", &others),
                Some(ip("10.0.0.1")),
                "{header}"
            );
        }
    }

    #[test]
    fn walks_right_to_left() {
        let c = via(ClientIpHeader::XForwardedFor);
        let h = |v| resolve(&c, "10.0.0.1", &[("x-forwarded-for", v)]);
        assert_eq!(h("1.1.1.1, 2.2.2.2, 10.9.9.9"), Some(ip("2.2.2.2")));
        assert_eq!(h("2.2.2.2"), Some(ip("2.2.2.2")));
        assert_eq!(h("garbage, 10.1.1.1"), Some(ip("10.1.1.1")));
        assert_eq!(h("2.2.2.2, garbage"), Some(ip("10.0.0.1")));
        assert_eq!(h("10.1.1.1, 192.168.1.1"), Some(ip("10.1.1.1")));
        assert_eq!(h("[2001:db8::7]:443, 10.1.1.1"), Some(ip("2001:db8::7")));
        assert_eq!(h("::ffff:203.0.113.1"), Some(ip("203.0.113.1")));
        // Empty list elements are skipped (RFC 9110 §5.6.1), not garbage.
        assert_eq!(h("1.1.1.1,, 2.2.2.2 , ,"), Some(ip("2.2.2.2")));
        assert_eq!(h(""), Some(ip("10.0.0.1")));
        assert_eq!(h("unknown"), Some(ip("10.0.0.1")));
        // Two header lines are one list: the later line is to the right.
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
        assert_eq!(
            resolve(
                &c,
                "10.0.0.1",
                &[
                    ("x-forwarded-for", "6.6.6.6"),
                    ("x-forwarded-for", "4.4.4.4")
                ]
            ),
            Some(ip("4.4.4.4"))
        );

        let f = via(ClientIpHeader::Forwarded);
        let h = |v| resolve(&f, "10.0.0.1", &[("forwarded", v)]);
        assert_eq!(
            h("for=9.9.9.9, for=\"4.4.4.4:80\";proto=https"),
            Some(ip("4.4.4.4"))
        );
        assert_eq!(
            h("for=9.9.9.9, for=\"[2001:db8:cafe::17]:4711\", for=10.0.0.9;by=10.0.0.1"),
            Some(ip("2001:db8:cafe::17"))
        );
        // An obfuscated client is unknown: the last trusted view is the key.
        assert_eq!(
            h("for=9.9.9.9, for=_hidden, for=10.3.3.3"),
            Some(ip("10.3.3.3"))
        );
        assert_eq!(h("for=unknown"), Some(ip("10.0.0.1")));
        // A comma in a client's quoted string only breaks elements to the
        // left of the proxy's.
        assert_eq!(
            h("for=\"1.1.1.1, for=2.2.2.2\", for=4.4.4.4"),
            Some(ip("4.4.4.4"))
        );
        assert_eq!(h("for=\", for=4.4.4.4"), Some(ip("4.4.4.4")));
    }

    #[test]
    fn single_address_headers() {
        for header in [
            ClientIpHeader::XRealIp,
            ClientIpHeader::Custom(HeaderName::from_static("cf-connecting-ip")),
        ] {
            let c = via(header.clone());
            let name = header.name().as_str();
            let h = |vals: &[&str]| {
                let hs: Vec<_> = vals.iter().map(|v| (name, *v)).collect();
                resolve(&c, "10.0.0.1", &hs)
            };
            assert_eq!(h(&["6.6.6.6"]), Some(ip("6.6.6.6")), "{name}");
            assert_eq!(h(&[" 6.6.6.6:1234 "]), Some(ip("6.6.6.6")), "{name}");
            assert_eq!(h(&["[2001:db8::5]:80"]), Some(ip("2001:db8::5")), "{name}");
            assert_eq!(h(&["2001:db8::5"]), Some(ip("2001:db8::5")), "{name}");
            // A trusted-looking address is still the client's: no walk.
            assert_eq!(h(&["10.7.7.7"]), Some(ip("10.7.7.7")), "{name}");
            // Malformed, a list, or duplicated: absent, so the peer.
            for bad in [
                &["nonsense"][..],
                &["1.1.1.1, 2.2.2.2"],
                &["1.1.1.1", "2.2.2.2"],
                &[""],
            ] {
                assert_eq!(h(bad), Some(ip("10.0.0.1")), "{name} {bad:?}");
            }
            assert_eq!(h(&[]), Some(ip("10.0.0.1")), "{name}");
        }
    }

    proptest::proptest! {
        /// Whatever a client writes (any forwarding header the proxy does
        /// not write, any number of lines, and anything in front of the
        /// proxy's entry in a list header), the key is the address the
        /// trusted proxy wrote.
        #[test]
        fn forged_headers_never_change_the_key(
            named in 0usize..4,
            forged in proptest::collection::vec((0usize..4, "[ -~]{0,30}"), 0..6),
            in_front in proptest::collection::vec("[ -~]{0,30}", 0..3),
            last in 1u8..255,
        ) {
            const NAMES: [&str; 4] = ["forwarded", "x-forwarded-for", "x-real-ip", "cf-connecting-ip"];
            let header: ClientIpHeader = NAMES[named].parse().unwrap();
            let c = via(header);
            let client = IpAddr::from([203, 0, 113, last]);
            let mut headers = HeaderMap::new();
            for (i, value) in &forged {
                if *i == named {
                    continue;
                }
                if let Ok(v) = http::HeaderValue::from_str(value) {
                    headers.append(NAMES[*i], v);
                }
            }
            let list = named < 2;
            if list {
                // Client-written lines of the list header, then the
                // proxy's line: what the client sent, its own entry appended.
                let mut lines: Vec<String> = in_front.clone();
                let mine = if named == 0 { format!("for={client}") } else { client.to_string() };
                let last_line = lines.pop().map_or(mine.clone(), |l| format!("{l}, {mine}"));
                lines.push(last_line);
                for l in lines {
                    let Ok(v) = http::HeaderValue::from_str(&l) else {
                        return Ok(());
                    };
                    headers.append(NAMES[named], v);
                }
            } else {
                headers.insert(NAMES[named], client.to_string().parse().unwrap());
            }
            let mut ext = Extensions::new();
            ext.insert(SocketAddr::new(ip("10.0.0.1"), 4000));
            proptest::prop_assert_eq!(c.resolve(&headers, &ext), Some(client));
        }
    }

    #[test]
    fn hop_cap_and_masking() {
        let c = ClientIp::new()
            .header(ClientIpHeader::XForwardedFor)
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
