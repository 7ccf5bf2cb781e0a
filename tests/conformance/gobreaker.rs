//! gobreaker
