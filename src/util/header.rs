//! One header read from a request's or a response's map, by comparing
//! names when the map is small.
//!
//! `HeaderMap::get` hashes the name it is given (byte by byte for a custom
//! name such as `x-request-timeout-ms`) and then probes the map: 80 to 160
//! instructions per lookup whatever the map holds. The maps the stack reads
//! on every request are mostly small (an HTTP/2 request from a service
//! client carries a handful of headers, a gRPC call four to six, a handler's
//! response one or two), and comparing a name with each entry's is cheap:
//! a standard name is one byte, a custom one a length and then its bytes.
//! Above [`SCAN_MAX`] values the hash lookup is faster (the
//! `header_read` bench of `benches/compare` decides the threshold).
//!
//! Same answer as `HeaderMap::get`: the first value of the name.

use http::{HeaderMap, HeaderName, HeaderValue};

/// The most values a map may hold for [`get`] to compare names rather than
/// hash (a browser's request, 10 to 20 headers, is looked up by hash). The
/// `header_read` bench: comparing is faster up to 6 values whether the name
/// is there or not, slower from 8 on a miss (the common case for a custom
/// header).
pub(crate) const SCAN_MAX: usize = 6;

/// The first value of `name` in `headers`, like `HeaderMap::get`.
#[inline]
pub(crate) fn get<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    match headers.len() {
        // No iterator to set up for an empty map (a request built by hand).
        0 => None,
        1..=SCAN_MAX => headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v),
        _ => headers.get(name),
    }
}

#[cfg(test)]
mod tests {
    use http::header::{ACCEPT, CONTENT_TYPE, HOST};

    use super::*;

    fn map(n: usize) -> HeaderMap {
        let mut m = HeaderMap::new();
        for i in 0..n {
            m.append(
                HeaderName::try_from(format!("x-filler-{i}")).unwrap(),
                HeaderValue::from(i),
            );
        }
        m
    }

    /// Whatever the map's size, duplicates or names, `get` answers what
    /// `HeaderMap::get` does.
    #[test]
    fn answers_like_the_map() {
        let budget = HeaderName::from_static("x-request-timeout-ms");
        let close = HeaderName::from_static("x-request-timeout-mt");
        for n in [0, 1, 3, SCAN_MAX - 2, SCAN_MAX - 1, SCAN_MAX, SCAN_MAX + 4] {
            let mut m = map(n);
            for name in [&budget, &close, &CONTENT_TYPE, &HOST] {
                assert_eq!(get(&m, name), m.get(name), "{n} {name}");
            }
            m.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            m.append(budget.clone(), HeaderValue::from_static("first"));
            m.append(budget.clone(), HeaderValue::from_static("second"));
            m.append(ACCEPT, HeaderValue::from_static("*/*"));
            for name in [&budget, &close, &CONTENT_TYPE, &HOST, &ACCEPT] {
                assert_eq!(get(&m, name), m.get(name), "{n} {name}");
            }
            assert_eq!(get(&m, &budget).unwrap(), "first");
            assert!(get(&m, &close).is_none());
        }
    }
}
