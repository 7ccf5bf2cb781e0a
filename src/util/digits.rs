//! The ASCII digits of a header value. Parsing, strictly: digits only (no
//! sign, space or `+`), at least one and at most `max_len` of them, so the
//! value always fits a `u64` and a hostile header cannot overflow it.
//! Writing: a number's digits as bytes, and as a header value made with
//! one allocation (`HeaderValue::from(u64)` makes two: a buffer of 20
//! bytes, then the shared handle `Bytes` needs when its buffer is not
//! full).

use http::HeaderValue;

/// The number written by `digits`, or `None` if it is empty, longer than
/// `max_len` (at most 19: `u64` holds every 19-digit number) or holds
/// anything but ASCII digits.
#[inline]
pub(crate) fn parse_u64(digits: &[u8], max_len: usize) -> Option<u64> {
    debug_assert!(max_len <= 19, "u64 holds every number of 19 digits");
    if digits.is_empty() || digits.len() > max_len {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(d - b'0');
    }
    Some(n)
}

/// `n`'s decimal digits, and how many of the 20 bytes they take (from
/// the end).
#[inline]
fn write(mut n: u64, buf: &mut [u8; 20]) -> usize {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    i
}

/// How many decimal digits `n` has.
#[inline]
pub(crate) fn count(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |l| l as usize + 1)
}

/// Appends `n`'s decimal digits to `out`, as bytes (pushing them as
/// `char`s, or validating them as UTF-8, costs several times as much).
#[inline]
pub(crate) fn push(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 20];
    let i = write(n, &mut buf);
    out.extend_from_slice(&buf[i..]);
}

/// `n` as a header value, in one allocation of exactly its digits.
pub(crate) fn header_value(n: u64) -> HeaderValue {
    let mut buf = [0u8; 20];
    let i = write(n, &mut buf);
    // Digits are valid header bytes.
    HeaderValue::from_bytes(&buf[i..]).expect("ASCII digits")
}

#[cfg(test)]
mod tests {
    use super::{HeaderValue, count, header_value, parse_u64, push};

    #[test]
    fn writes_like_to_string() {
        for n in [0, 1, 7, 9, 10, 99, 100, 1234, 999_999, 1_000_000, u64::MAX] {
            let s = n.to_string();
            let mut out = b"x".to_vec();
            push(&mut out, n);
            assert_eq!(&out[1..], s.as_bytes());
            assert_eq!(count(n), s.len(), "{n}");
            assert_eq!(header_value(n), HeaderValue::from(n));
        }
    }

    #[test]
    fn digits_only_and_bounded() {
        assert_eq!(parse_u64(b"0", 3), Some(0));
        assert_eq!(parse_u64(b"007", 3), Some(7));
        assert_eq!(parse_u64(b"999", 3), Some(999));
        assert_eq!(parse_u64(b"1000", 3), None);
        assert_eq!(
            parse_u64(b"9999999999999999999", 19),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b" 1",
            b"1 ",
            b"1.0",
            b"1e3",
            b"\xff",
        ] {
            assert_eq!(parse_u64(bad, 19), None, "{bad:?}");
        }
    }
}
