//! The shutdown layer (in progress).
