//! Parsing the ASCII digits of a header value, strictly: digits only (no
//! sign, space or `+`), at least one and at most `max_len` of them, so the
//! value always fits a `u64` and a hostile header cannot overflow it.

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

#[cfg(test)]
mod tests {
    use super::parse_u64;

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
