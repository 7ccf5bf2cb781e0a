//! Small crate-private utilities, each written once and used by every layer
//! that needs it. One file per utility.

pub(crate) mod clock;
pub(crate) mod digits;
pub(crate) mod header;
pub(crate) mod keyed_map;
pub(crate) mod lanes;
pub(crate) mod poison;
pub(crate) mod round;
pub(crate) mod route_paths;
pub(crate) mod sampled;
pub(crate) mod tally;

pub(crate) use poison::lock;
