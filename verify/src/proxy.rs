//! A fault-injecting TCP proxy: forwards bytes both ways between a client and
//! an upstream, and cuts connections, delays and corrupts bytes on a schedule
//! drawn from a seed. It knows nothing of the protocol it carries, so it tests
//! the framing layer's checksums, reconnects and retransmits from outside.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use verity_core::{Rng, SplitMix64};

/// Connections proxied at once; more are closed at accept.
pub const PROXY_CONNECTIONS_MAX: usize = 64;
/// How often blocked threads look at stop and cut flags.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const CHUNK_SIZE_BYTES: usize = 64 << 10;

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// Upstream `HOST:PORT`.
    pub to: String,
    pub seed: u64,
    /// Cut each connection after a seeded time in [N/2, 3N/2] ms.
    pub drop_conn_every_ms: Option<u64>,
    /// Hold each forwarded chunk about this long (order kept per direction).
    pub delay_ms: Option<u64>,
    /// Chance per forwarded chunk of flipping one seeded byte in it.
    pub corrupt_rate: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    pub connections: u64,
    pub cuts: u64,
    pub corrupted_chunks: u64,
    pub bytes_forwarded: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    cuts: AtomicU64,
    corrupted_chunks: AtomicU64,
    bytes_forwarded: AtomicU64,
    active: AtomicUsize,
}

/// A running proxy.
pub struct Proxy {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    acceptor: Option<JoinHandle<()>>,
}

/// The faults one connection gets, fixed by (seed, connection index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionPlan {
    pub cut_after_ms: Option<u64>,
    /// Seeds the corruption choices of each direction.
    pub rng_seed: u64,
}

pub fn connection_plan(config: &ProxyConfig, index: u64) -> ConnectionPlan {
    let mut rng = SplitMix64::new(config.seed ^ index.wrapping_mul(0xA24B_AED4_963E_E407));
    let cut_after_ms = config
        .drop_conn_every_ms
        .map(|every| every / 2 + rng.below(every + 1));
    ConnectionPlan {
        cut_after_ms,
        rng_seed: rng.next_u64(),
    }
}

/// `0..=1`, or a clear error.
pub fn parse_corrupt_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("corrupt rate must be a number from 0 to 1, not `{text}`")),
    }
}

impl Proxy {
    pub fn start(config: ProxyConfig) -> io::Result<Proxy> {
        let listener = TcpListener::bind(config.listen).map_err(|e| {
            io::Error::new(e.kind(), format!("proxy cannot listen on {}: {e}", config.listen))
        })?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (thread_stop, thread_counters) = (Arc::clone(&stop), Arc::clone(&counters));
        let acceptor = std::thread::Builder::new()
            .name("verity-proxy".into())
            .spawn(move || accept_loop(&listener, &config, &thread_stop, &thread_counters))?;
        Ok(Proxy {
            local_addr,
            stop,
            counters,
            acceptor: Some(acceptor),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        ProxyStats {
            connections: c.connections.load(Ordering::Relaxed),
            cuts: c.cuts.load(Ordering::Relaxed),
            corrupted_chunks: c.corrupted_chunks.load(Ordering::Relaxed),
            bytes_forwarded: c.bytes_forwarded.load(Ordering::Relaxed),
        }
    }

    /// Closes the listener and every connection; returns once they are gone.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.counters.active.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// For the CLI: proxies until `stop` is set, logging each fault.
pub fn run_until(config: ProxyConfig, stop: &AtomicBool) -> io::Result<ProxyStats> {
    let proxy = Proxy::start(config.clone())?;
    eprintln!(
        "verity proxy: {} -> {} (seed {})",
        proxy.local_addr(),
        config.to,
        config.seed
    );
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(POLL_INTERVAL);
    }
    let stats = proxy.stats();
    proxy.stop();
    Ok(stats)
}

fn accept_loop(
    listener: &TcpListener,
    config: &ProxyConfig,
    stop: &Arc<AtomicBool>,
    counters: &Arc<Counters>,
) {
    let mut index = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(POLL_INTERVAL / 4);
                continue;
            }
            Err(e) => {
                eprintln!("verity proxy: accept failed: {e}");
                std::thread::sleep(POLL_INTERVAL);
                continue;
            }
        };
        if counters.active.load(Ordering::Relaxed) >= PROXY_CONNECTIONS_MAX {
            continue; // dropping `client` closes it
        }
        let Some(upstream) = connect(&config.to) else {
            continue;
        };
        index += 1;
        counters.connections.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = start_connection(client, upstream, index, config, stop, counters) {
            eprintln!("verity proxy: connection {index} failed to start: {e}");
        }
    }
}

fn connect(to: &str) -> Option<TcpStream> {
    let address = to.to_socket_addrs().ok()?.next()?;
    TcpStream::connect_timeout(&address, CONNECT_TIMEOUT).ok()
}

/// One proxied connection: a thread per direction, sharing the cut deadline.
fn start_connection(
    client: TcpStream,
    upstream: TcpStream,
    index: u64,
    config: &ProxyConfig,
    stop: &Arc<AtomicBool>,
    counters: &Arc<Counters>,
) -> io::Result<()> {
    let plan = connection_plan(config, index);
    let cut_at = plan
        .cut_after_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let cut = Arc::new(AtomicBool::new(false));
    for stream in [&client, &upstream] {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(POLL_INTERVAL))?;
        let _ = stream.set_nodelay(true);
    }
    let directions = [
        (client.try_clone()?, upstream.try_clone()?, plan.rng_seed),
        (upstream, client, plan.rng_seed.rotate_left(17) ^ 0x5555),
    ];
    for (from, to, rng_seed) in directions {
        let pump = Pump {
            from,
            to,
            rng: SplitMix64::new(rng_seed),
            index,
            cut_at,
            cut: Arc::clone(&cut),
            delay: config.delay_ms.map(Duration::from_millis),
            corrupt_rate: config.corrupt_rate,
            stop: Arc::clone(stop),
            counters: Arc::clone(counters),
        };
        counters.active.fetch_add(1, Ordering::Relaxed);
        std::thread::Builder::new()
            .name(format!("verity-proxy-{index}"))
            .spawn(move || pump.run())?;
    }
    Ok(())
}

struct Pump {
    from: TcpStream,
    to: TcpStream,
    rng: SplitMix64,
    index: u64,
    cut_at: Option<Instant>,
    cut: Arc<AtomicBool>,
    delay: Option<Duration>,
    corrupt_rate: f64,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

impl Pump {
    fn run(mut self) {
        let started = Instant::now();
        let mut buf = vec![0u8; CHUNK_SIZE_BYTES];
        loop {
            if self.stop.load(Ordering::Relaxed) || self.cut.load(Ordering::Relaxed) {
                break;
            }
            if self.cut_at.is_some_and(|at| Instant::now() >= at) {
                if !self.cut.swap(true, Ordering::Relaxed) {
                    self.counters.cuts.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "verity proxy: cut connection {} after {} ms",
                        self.index,
                        started.elapsed().as_millis()
                    );
                }
                break;
            }
            let read = match self.from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let chunk = &mut buf[..read];
            if let Some(delay) = self.delay {
                std::thread::sleep(delay);
            }
            if self.corrupt_rate > 0.0 && unit_interval(&mut self.rng) < self.corrupt_rate {
                let at = self.rng.below(read as u64) as usize;
                chunk[at] ^= 1 << self.rng.below(8);
                self.counters.corrupted_chunks.fetch_add(1, Ordering::Relaxed);
            }
            if self.to.write_all(chunk).is_err() {
                break;
            }
            self.counters
                .bytes_forwarded
                .fetch_add(read as u64, Ordering::Relaxed);
        }
        // Closing both sides of both sockets ends the other direction too.
        self.cut.store(true, Ordering::Relaxed);
        let _ = self.from.shutdown(Shutdown::Both);
        let _ = self.to.shutdown(Shutdown::Both);
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A uniform number in [0, 1) from the connection's generator.
fn unit_interval(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}
