//! Crate-private utilities, one copy of each.

pub(crate) mod keyed_map;
