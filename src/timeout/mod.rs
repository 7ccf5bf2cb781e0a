//! The timeout layer (in progress).
