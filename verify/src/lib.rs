//! Oracles and output verification for the reference apps.
#![forbid(unsafe_code)]
