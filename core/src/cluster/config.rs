//! `cluster.toml`: where each process of a cluster listens and how many shard
//! workers it runs. Every process reads the same file.
//!
//! ```toml
//! cluster_id = "prod-eu"
//!
//! [[process]]            # process 0: reads the sources, writes the sinks
//! address = "10.0.0.1:7100"
//! workers = 4
//!
//! [[process]]
//! address = "10.0.0.2:7100"
//! listen = "0.0.0.0:7100"  # optional: bind here, peers dial `address`
//! workers = 4
//! ```

use super::{ClusterError, Layout};
use serde::Deserialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Peers of another cluster are refused at the handshake.
    #[serde(default = "default_cluster_id")]
    pub cluster_id: String,
    #[serde(rename = "process", alias = "processes")]
    pub processes: Vec<ProcessEntry>,
}

fn default_cluster_id() -> String {
    "verity".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessEntry {
    /// Optional; if given, it must be the entry's position (0, 1, ...), which
    /// is what `verity worker --id` names.
    pub id: Option<u32>,
    /// Where peers reach this process (host:port).
    #[serde(alias = "addr")]
    pub address: String,
    /// Where it binds, if not `address` (e.g. 0.0.0.0, or behind a proxy).
    pub listen: Option<String>,
    pub workers: u32,
}

impl ClusterFile {
    pub fn load(path: &Path) -> Result<ClusterFile, ClusterError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ClusterError::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| ClusterError::Config(format!("{}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Result<ClusterFile, String> {
        let file: ClusterFile = toml::from_str(text).map_err(|e| e.message().to_string())?;
        if file.cluster_id.is_empty() {
            return Err("cluster_id must not be empty".into());
        }
        if file.processes.is_empty() {
            return Err("no [[process]] entries".into());
        }
        for (id, process) in file.processes.iter().enumerate() {
            if let Some(claimed) = process.id.filter(|claimed| *claimed as usize != id) {
                return Err(format!(
                    "[[process]] entry {id} says id = {claimed}: entries are numbered by their order, from 0"
                ));
            }
            resolve(&process.address).map_err(|e| format!("process {id}: {e}"))?;
            if let Some(listen) = &process.listen {
                resolve(listen).map_err(|e| format!("process {id}: {e}"))?;
            }
        }
        Ok(file)
    }

    pub fn layout(&self, process_id: u32) -> Result<Layout, ClusterError> {
        Layout::new(self.processes.iter().map(|p| p.workers).collect(), process_id)
    }

    /// Where process `id` dials.
    pub fn address(&self, id: u32) -> SocketAddr {
        resolve(&self.processes[id as usize].address).expect("validated at parse")
    }

    /// Where process `id` binds.
    pub fn listen(&self, id: u32) -> SocketAddr {
        let entry = &self.processes[id as usize];
        resolve(entry.listen.as_deref().unwrap_or(&entry.address)).expect("validated at parse")
    }

    /// A file for `workers.len()` processes on loopback at `ports`.
    pub fn local(cluster_id: &str, workers: &[u32], ports: &[u16]) -> String {
        let mut text = format!("cluster_id = \"{cluster_id}\"\n");
        for (w, port) in workers.iter().zip(ports) {
            text.push_str(&format!(
                "\n[[process]]\naddress = \"127.0.0.1:{port}\"\nworkers = {w}\n"
            ));
        }
        text
    }
}

fn resolve(address: &str) -> Result<SocketAddr, String> {
    address
        .to_socket_addrs()
        .map_err(|e| format!("bad address `{address}`: {e}"))?
        .next()
        .ok_or_else(|| format!("address `{address}` resolves to nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_lays_out() {
        let text = ClusterFile::local("t", &[2, 1], &[7100, 7101]);
        let file = ClusterFile::parse(&text).unwrap();
        assert_eq!(file.layout(1).unwrap().local_shards(), 2..3);
        assert_eq!(file.address(1).port(), 7101);
        assert_eq!(file.listen(0), file.address(0));
    }

    #[test]
    fn rejects_bad_files() {
        for bad in [
            "",
            "cluster_id = \"x\"",
            "cluster_id = \"x\"\n[[process]]\naddress = \"nowhere\"\nworkers = 1",
            "cluster_id = \"x\"\n[[process]]\naddress = \"127.0.0.1:1\"\nworkers = 1\ncolour = 3",
            "[[process]]\nid = 1\naddress = \"127.0.0.1:1\"\nworkers = 1",
        ] {
            assert!(ClusterFile::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn accepts_common_spellings() {
        let text = "[[processes]]\nid = 0\naddr = \"127.0.0.1:7100\"\nworkers = 2\n\n\
                    [[processes]]\nid = 1\naddress = \"127.0.0.1:7101\"\nworkers = 1\n";
        let file = ClusterFile::parse(text).unwrap();
        assert_eq!(file.cluster_id, "verity");
        assert_eq!(file.address(0).port(), 7100);
        assert_eq!(file.layout(0).unwrap().local_shards(), 0..2);
    }
}
