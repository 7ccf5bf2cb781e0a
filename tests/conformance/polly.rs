//! polly
