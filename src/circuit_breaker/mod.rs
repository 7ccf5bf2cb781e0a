//! The circuit_breaker layer (in progress).
