//! `grpc-timeout` parsing: a table of valid and invalid values, and a
//! property test that arbitrary bytes never panic.

use std::time::Duration;

use proptest::prelude::*;
use tower_rampart::timeout::{format_grpc_timeout, parse_grpc_timeout};

#[test]
fn valid_values() {
    let h = |n: u64| Duration::from_secs(n * 3600);
    for (value, expected) in [
        ("1H", h(1)),
        ("99999999H", h(99_999_999)),
        ("2M", Duration::from_secs(120)),
        ("3S", Duration::from_secs(3)),
        ("0S", Duration::ZERO),
        ("250m", Duration::from_millis(250)),
        ("00000250m", Duration::from_millis(250)),
        ("1500u", Duration::from_micros(1500)),
        ("1n", Duration::from_nanos(1)),
        ("0n", Duration::ZERO),
        ("12345678n", Duration::from_nanos(12_345_678)),
    ] {
        assert_eq!(
            parse_grpc_timeout(value.as_bytes()),
            Some(expected),
            "{value:?}"
        );
    }
}

#[test]
fn invalid_values() {
    for value in [
        &b""[..],
        b"S",
        b"10",
        b"123456789S", // nine digits
        b"000000001S", // nine digits, even with leading zeros
        b"10s",        // lower-case s is not a unit
        b"10h",
        b"10ms",
        b"10 S",
        b" 10S",
        b"10S ",
        b"-1S",
        b"+1S",
        b"1.5S",
        b"1e3m",
        b"0x10S",
        b"\xff\xfeS",
        b"10\0S",
        b"\xef\xbc\x91S", // a full-width digit
    ] {
        assert_eq!(
            parse_grpc_timeout(value),
            None,
            "{:?}",
            String::from_utf8_lossy(value)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2048,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
        let parsed = parse_grpc_timeout(&bytes);
        // Anything accepted has the documented shape.
        if parsed.is_some() {
            prop_assert!((2..=9).contains(&bytes.len()));
            prop_assert!(bytes[..bytes.len() - 1].iter().all(u8::is_ascii_digit));
            prop_assert!(b"HMSmun".contains(bytes.last().unwrap()));
        }
    }

    #[test]
    fn near_miss_bytes_never_panic(
        bytes in proptest::collection::vec(prop::sample::select(b"0123456789HMSmunhs +-.\xff".to_vec()), 0..12)
    ) {
        let parsed = parse_grpc_timeout(&bytes);
        let well_formed = (2..=9).contains(&bytes.len())
            && bytes[..bytes.len() - 1].iter().all(u8::is_ascii_digit)
            && b"HMSmun".contains(bytes.last().unwrap());
        prop_assert_eq!(parsed.is_some(), well_formed);
    }

    #[test]
    fn well_formed_values_parse(n in 0u64..=99_999_999, unit in prop::sample::select(b"HMSmun".to_vec())) {
        let text = format!("{n}{}", unit as char);
        let parsed = parse_grpc_timeout(text.as_bytes()).unwrap();
        let nanos: u128 = match unit {
            b'H' => 3_600_000_000_000,
            b'M' => 60_000_000_000,
            b'S' => 1_000_000_000,
            b'm' => 1_000_000,
            b'u' => 1_000,
            _ => 1,
        };
        prop_assert_eq!(parsed.as_nanos(), u128::from(n) * nanos);
    }

    #[test]
    fn formatting_round_trips_rounding_up(nanos in any::<u64>()) {
        let budget = Duration::from_nanos(nanos);
        let value = format_grpc_timeout(budget);
        let back = parse_grpc_timeout(value.as_bytes()).unwrap();
        prop_assert!(back >= budget);
        // Rounded up by less than one unit of the chosen precision: the
        // finest unit that fits keeps at least 5 significant digits (units
        // are at most 1000 apart), so the error is below 1 part in 10^5.
        prop_assert!(back - budget <= budget / 100_000 + Duration::from_nanos(1));
    }
}
