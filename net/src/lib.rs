//! Framing and the channel protocol between processes (multi-process cluster: not built yet).
#![forbid(unsafe_code)]
