//! Adaptive concurrency limiting: admit at most *limit* requests in flight,
//! refuse the rest at once, and learn the limit from latency.
//!
//! (Being built: the layer, the algorithms and their docs land together.)

pub mod limit;

pub use limit::{Aimd, Fixed, Gradient2, LimitAlgorithm, Outcome, Sample, Vegas};
