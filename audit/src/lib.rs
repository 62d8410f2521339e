//! Audit log: record types and the side-thread segment writer (not built yet).
#![forbid(unsafe_code)]
