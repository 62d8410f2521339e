//! The fault-injecting proxy forwards faithfully without faults and injects
//! the faults it is asked for; its fault plan is a function of the seed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};
use verity_verify::proxy::{connection_plan, parse_corrupt_rate, Proxy, ProxyConfig};

/// An echo server on loopback; returns its address.
fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 8192];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    address
}

fn config(to: String) -> ProxyConfig {
    ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        to,
        seed: 5,
        drop_conn_every_ms: None,
        delay_ms: None,
        corrupt_rate: 0.0,
    }
}

/// Sends `payload` through and reads back as many bytes (or until EOF/timeout).
fn round_trip(proxy: &Proxy, payload: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(proxy.local_addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let owned = payload.to_vec();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&owned);
    });
    let mut received = Vec::with_capacity(payload.len());
    let mut buf = [0u8; 65536];
    while received.len() < payload.len() {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
    let _ = sender.join();
    received
}

fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn forwards_intact_without_faults() {
    let proxy = Proxy::start(config(echo_server())).unwrap();
    let data = payload(4 << 20);
    assert!(round_trip(&proxy, &data) == data);
    assert_eq!(proxy.stats().cuts, 0);
    proxy.stop();
}

#[test]
fn delays_keep_data_intact_and_in_order() {
    let proxy = Proxy::start(ProxyConfig {
        delay_ms: Some(2),
        ..config(echo_server())
    })
    .unwrap();
    let data = payload(256 << 10);
    assert!(round_trip(&proxy, &data) == data);
    proxy.stop();
}

#[test]
fn corruption_changes_bytes_not_length() {
    let proxy = Proxy::start(ProxyConfig {
        corrupt_rate: 1.0,
        ..config(echo_server())
    })
    .unwrap();
    let data = payload(64 << 10);
    let received = round_trip(&proxy, &data);
    assert_eq!(received.len(), data.len());
    assert!(received != data);
    assert!(proxy.stats().corrupted_chunks > 0);
    proxy.stop();
}

#[test]
fn connections_are_cut() {
    let proxy = Proxy::start(ProxyConfig {
        drop_conn_every_ms: Some(100),
        ..config(echo_server())
    })
    .unwrap();
    let mut stream = TcpStream::connect(proxy.local_addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let closed = loop {
        if started.elapsed() > Duration::from_secs(5) {
            break false;
        }
        let _ = stream.write_all(b"ping");
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Err(e)
                if e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut =>
            {
                break true
            }
            _ => {}
        }
    };
    assert!(closed, "the proxy should cut the connection");
    assert!(proxy.stats().cuts >= 1);
    proxy.stop();
}

#[test]
fn fault_plans_follow_the_seed() {
    let config = ProxyConfig {
        drop_conn_every_ms: Some(300),
        ..config("127.0.0.1:1".into())
    };
    let plans: Vec<_> = (1..20).map(|i| connection_plan(&config, i)).collect();
    assert_eq!(
        plans,
        (1..20).map(|i| connection_plan(&config, i)).collect::<Vec<_>>()
    );
    assert!(plans
        .iter()
        .all(|p| (150..=450).contains(&p.cut_after_ms.unwrap())));
    let other = ProxyConfig { seed: 6, ..config };
    assert_ne!(plans[0], connection_plan(&other, 1));
}

#[test]
fn corrupt_rate_is_checked() {
    assert_eq!(parse_corrupt_rate("0.25"), Ok(0.25));
    for bad in ["2", "-1", "x", ""] {
        assert!(parse_corrupt_rate(bad).is_err(), "{bad}");
    }
}
