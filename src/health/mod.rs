//! The health layer (in progress).
