//! `--metrics-addr HOST:PORT`: a small HTTP/1.1 server thread that answers
//! `GET /metrics` with the process's metrics in Prometheus' text format
//! (0.0.4) and anything else with 404. It serves one connection at a time,
//! each bounded by read and write timeouts, so a stuck client holds it for
//! at most a few seconds; a scrape only reads atomics the shards publish.

use anyhow::{Context, Result};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;
use verity_core::metrics::Metrics;

/// How long a client may take to send its request, or to take the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request head read.
const REQUEST_MAX_BYTES: usize = 8 * 1024;

/// Binds `address` and serves `metrics` on a thread of its own for the
/// rest of the process; returns the bound address.
pub fn serve(address: &str, metrics: Arc<Metrics>) -> Result<SocketAddr> {
    let listener = TcpListener::bind(address)
        .with_context(|| format!("--metrics-addr {address}: cannot listen there"))?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("verity-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(stream, &metrics) {
                    log::debug!("metrics: a scrape failed: {e}");
                }
            }
        })?;
    Ok(bound)
}

fn answer(mut stream: TcpStream, metrics: &Metrics) -> io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < REQUEST_MAX_BYTES {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let request = String::from_utf8_lossy(&head);
    let mut words = request.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = if method == "GET" && path == "/metrics" {
        (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        )
    } else {
        (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: metrics are at GET /metrics\n".to_string(),
        )
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
