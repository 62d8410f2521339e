//! Cluster roles of the binary: process 0 (`run … --cluster` or `--processes`)
//! and workers (`verity worker`). Process 0 sends each worker the job — the app
//! and its options — so a worker needs only the cluster file and its id.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use verity_apps::{drive_app, AppInput, AppName, AppOptions, Driver};
use verity_core::cluster::{ClusterFile, Control, ControlIn, Controller};
use verity_core::{
    run_in_cluster, ClusterRun, Dataflow, Key, Outputs, Placement, RunConfig, RunError, RunSummary,
    SourceSpec, Wire,
};
use verity_net::auth::{ClusterSecret, CLUSTER_SECRET_ENV};
use verity_net::liveness::LivenessConfig;
use verity_net::node::{Node, NodeConfig, PeerAddress};

/// Frames a channel may have unacked.
pub const WINDOW_FRAMES: usize = 16;
pub const WINDOW_BYTES: usize = 16 << 20;
const RECONNECT_BASE_MS: u64 = 20;
const RECONNECT_MAX_MS: u64 = 1_000;
/// How long process 0 waits for workers to take the last frames and exit.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a finished worker waits for process 0 to finish writing (a lost
/// process 0 is noticed sooner, after `--peer-lost-ms`).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Network settings shared by both roles.
#[derive(Debug, Clone)]
pub struct NetOptions {
    pub secret_file: Option<PathBuf>,
    pub peer_timeout_ms: u64,
    pub peer_lost_ms: u64,
}

impl NetOptions {
    fn secret(&self) -> Result<ClusterSecret> {
        if let Some(path) = &self.secret_file {
            return ClusterSecret::from_file(path)
                .with_context(|| format!("cluster secret {}", path.display()));
        }
        match ClusterSecret::from_env().context("cluster secret")? {
            Some(secret) => Ok(secret),
            None => {
                bail!("a cluster needs a shared secret: set {CLUSTER_SECRET_ENV} or pass --secret-file PATH")
            }
        }
    }

    fn start_node(&self, file: &ClusterFile, process_id: u32) -> Result<Node> {
        let peers = (0..file.processes.len() as u32)
            .filter(|id| *id != process_id)
            .map(|id| PeerAddress {
                id,
                address: file.address(id),
            })
            .collect();
        let config = NodeConfig {
            cluster_id: file.cluster_id.clone(),
            process_id,
            listen: file.listen(process_id),
            peers,
            secret: Arc::new(self.secret()?),
            liveness: LivenessConfig {
                peer_timeout_ms: self.peer_timeout_ms,
                heartbeat_interval_ms: (self.peer_timeout_ms / 4).max(1),
            },
            window_frames: WINDOW_FRAMES,
            window_bytes: WINDOW_BYTES,
            reconnect_base_ms: RECONNECT_BASE_MS,
            reconnect_max_ms: RECONNECT_MAX_MS,
            peer_lost_ms: self.peer_lost_ms,
            seed: process_id as u64,
        };
        Node::start(config).with_context(|| format!("process {process_id}"))
    }
}

/// Where a worker pins its shards.
#[derive(Debug, Clone, Copy)]
pub struct Pinning {
    pub enabled: bool,
    pub first_core: usize,
}

/// What process 0 tells workers to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub app: AppName,
    pub options: AppOptions,
    /// market-spread read as two streams (two sources).
    pub split_input: bool,
    pub batch_max: usize,
    pub queue_depth_batches: usize,
    /// The sink discards output (`--output null`): workers need not send it.
    pub discard_output: bool,
}

impl Job {
    fn encode(&self) -> Vec<u8> {
        format!(
            "app={}\nfinal={}\nsplit={}\nbatch_max={}\nqueue_depth={}\ndiscard={}\n",
            self.app.name(),
            self.options.final_counts,
            self.split_input,
            self.batch_max,
            self.queue_depth_batches,
            self.discard_output
        )
        .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Result<Job> {
        let text = std::str::from_utf8(bytes).context("job is not UTF-8")?;
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
                .with_context(|| format!("job without `{name}`"))
        };
        let app = AppName::from_name(field("app")?).context("job names an unknown app")?;
        Ok(Job {
            app,
            options: AppOptions {
                final_counts: field("final")?.parse()?,
            },
            split_input: field("split")?.parse()?,
            batch_max: field("batch_max")?.parse()?,
            queue_depth_batches: field("queue_depth")?.parse()?,
            discard_output: field("discard")?.parse()?,
        })
    }
}

/// This process's part of a cluster run, as a `Driver` of any app's dataflow.
struct ClusterDriver<'a> {
    config: &'a RunConfig,
    stop: verity_core::source::StopFlag,
    cluster: &'a ClusterRun<'a>,
    placement: Placement<'a>,
}

impl Driver for ClusterDriver<'_> {
    type Out = RunSummary;
    fn drive<K, V, S, O>(self, flow: Dataflow<K, V, S, O>) -> Result<RunSummary, RunError>
    where
        K: Key + Wire,
        V: Wire + Send + 'static,
        S: Default + Send + 'static,
        O: 'static,
    {
        run_in_cluster(flow, self.config, self.placement, self.stop, self.cluster)
    }
}

/// Runs process 0 of the cluster in `file`: sends the job, runs, then tells
/// the workers to exit.
#[allow(clippy::too_many_arguments)]
pub fn run_leader_process(
    file: &ClusterFile,
    net: &NetOptions,
    job: &Job,
    input: AppInput,
    config: &RunConfig,
    outputs: &Outputs,
    stop: verity_core::source::StopFlag,
    local: Option<&LocalCluster>,
) -> Result<RunSummary> {
    let layout = file.layout(0)?;
    let node = net.start_node(file, 0)?;
    let run_over = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        if let Some(local) = local {
            scope.spawn(|| local.watch(&node, &run_over));
        }
        let result = lead(&node, layout, job, input, config, outputs, stop);
        run_over.store(true, std::sync::atomic::Ordering::Relaxed);
        result
    })
    .map(|(summary, workers)| {
        node.wait_sent(SHUTDOWN_GRACE);
        node.stop();
        RunSummary { workers, ..summary }
    })
}

/// Process 0's part once its node runs: the job, the run, the shutdown.
/// Returns the summary and the cluster's shard count.
fn lead(
    node: &Node,
    layout: verity_core::cluster::Layout,
    job: &Job,
    input: AppInput,
    config: &RunConfig,
    outputs: &Outputs,
    stop: verity_core::source::StopFlag,
) -> Result<(RunSummary, usize)> {
    let mut controller = Controller::new(node, &layout, WINDOW_FRAMES);
    controller.broadcast(&Control::Job(job.encode()))?;
    let cluster = ClusterRun {
        layout,
        node,
        window_frames: WINDOW_FRAMES,
    };
    let config = RunConfig {
        workers: cluster.layout.workers[0] as usize,
        ..config.clone()
    };
    let summary = drive_app(
        job.app,
        input,
        job.options,
        ClusterDriver {
            config: &config,
            stop,
            cluster: &cluster,
            placement: Placement::Leader(outputs),
        },
    );
    let summary = summary.with_context(|| format!("{} cluster run failed", job.app.name()))?;
    controller.broadcast(&Control::Shutdown)?;
    node.closing();
    Ok((summary, cluster.layout.total_shards() as usize))
}

/// `verity worker`: joins the cluster, waits for the job, runs its shards.
pub fn run_worker_process(file_path: &Path, id: u32, net: &NetOptions, pinning: Pinning) -> Result<i32> {
    let file = ClusterFile::load(file_path)?;
    if id == 0 {
        bail!("process 0 runs the sources and sinks: start it with `verity run <app> --cluster FILE`");
    }
    let layout = file.layout(id)?;
    let node = net.start_node(&file, id)?;
    let control = ControlIn::new(&node, &layout, WINDOW_FRAMES);
    let wait = Duration::from_millis(net.peer_lost_ms);
    let job = match control
        .next(&node, wait)
        .context("waiting for the job from process 0")?
    {
        Control::Job(bytes) => Job::decode(&bytes)?,
        Control::Shutdown => return Ok(0),
    };
    let config = RunConfig {
        workers: layout.workers[id as usize] as usize,
        limits: verity_core::ShardLimits {
            batch_max: job.batch_max,
            ..Default::default()
        },
        queue_depth_batches: job.queue_depth_batches,
        pin_cores: pinning.enabled,
        first_core: pinning.first_core,
        progress: false,
        ..RunConfig::default()
    };
    // Sources live on process 0; the worker's dataflow only needs their count.
    let placeholder = |name: &str| SourceSpec::memory(name, bytes::Bytes::new());
    let input = if job.split_input {
        AppInput::QuotesAndOrders {
            quotes: placeholder("quotes"),
            orders: placeholder("orders"),
        }
    } else {
        AppInput::Single(placeholder("input"))
    };
    let cluster = ClusterRun {
        layout,
        node: &node,
        window_frames: WINDOW_FRAMES,
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let summary = drive_app(
        job.app,
        input,
        job.options,
        ClusterDriver {
            config: &config,
            stop,
            cluster: &cluster,
            placement: Placement::Member {
                discard_lines: job.discard_output,
            },
        },
    )
    .with_context(|| format!("worker {id} failed"))?;
    eprintln!(
        "verity: worker {id}: {} records in, {} out, {} dead-lettered ({} shards)",
        summary.records_in, summary.records_out, summary.dead_lettered, summary.workers
    );
    drop(cluster);
    // Stay until process 0 has everything: it says so.
    let last = control
        .next(&node, SHUTDOWN_WAIT)
        .context("waiting for process 0 to finish")?;
    if last != Control::Shutdown {
        bail!("process 0 sent a second job");
    }
    node.closing();
    node.wait_sent(SHUTDOWN_GRACE);
    node.stop();
    Ok(0)
}

/// A cluster of `processes` local processes on loopback: this process is 0,
/// the others are spawned `verity worker`s.
pub struct LocalCluster {
    pub file: ClusterFile,
    path: PathBuf,
    children: Mutex<Vec<Child>>,
}

impl LocalCluster {
    pub fn spawn(
        processes: u32,
        workers: u32,
        net: &NetOptions,
        pin_cores: bool,
    ) -> Result<(LocalCluster, NetOptions)> {
        let ports = free_ports(processes as usize)?;
        let cluster_id = format!("local-{}", std::process::id());
        let text = ClusterFile::local(&cluster_id, &vec![workers; processes as usize], &ports);
        // A random part in the names: a file left by a killed run whose pid
        // comes round again must not be in the way.
        let stem = format!("verity-{cluster_id}-{}", &random_secret_hex()[..8]);
        let path = std::env::temp_dir().join(format!("{stem}.toml"));
        std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
        let file = ClusterFile::parse(&text).map_err(anyhow::Error::msg)?;
        let secret_path = path.with_extension("secret");
        write_private_file(&secret_path, random_secret_hex().as_bytes())
            .with_context(|| format!("cannot write {}", secret_path.display()))?;
        let net = NetOptions {
            secret_file: Some(secret_path),
            ..net.clone()
        };
        let exe = std::env::current_exe().context("cannot find the verity binary to spawn workers")?;
        let cluster = LocalCluster {
            file,
            path,
            children: Mutex::new(Vec::new()),
        };
        for id in 1..processes {
            let mut command = Command::new(&exe);
            command
                .args(["worker", "--cluster"])
                .arg(&cluster.path)
                .args([
                    "--id",
                    &id.to_string(),
                    "--peer-timeout-ms",
                    &net.peer_timeout_ms.to_string(),
                ])
                .arg("--secret-file")
                .arg(net.secret_file.as_ref().expect("set above"))
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            if !pin_cores {
                command.arg("--no-pin");
            }
            // Processes on one machine pin their shards to different cores.
            command.args(["--first-core", &(id * workers).to_string()]);
            let child = command.spawn().context("cannot spawn a worker process")?;
            cluster.children().push(child);
        }
        Ok((cluster, net))
    }

    fn children(&self) -> std::sync::MutexGuard<'_, Vec<Child>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Until the run is over: a worker that exits fails the run at once,
    /// rather than after `--peer-lost-ms`.
    fn watch(&self, node: &Node, run_over: &std::sync::atomic::AtomicBool) {
        while !run_over.load(std::sync::atomic::Ordering::Relaxed) {
            for (index, child) in self.children().iter_mut().enumerate() {
                if let Ok(Some(status)) = child.try_wait() {
                    node.report_failure(format!("worker {} exited early ({status})", index + 1));
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the workers to exit; kills any that outstay the grace period.
    pub fn join(self) -> Result<()> {
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        let mut failed = Vec::new();
        for (index, child) in self.children().iter_mut().enumerate() {
            loop {
                match child.try_wait()? {
                    Some(status) if status.success() => break,
                    Some(status) => {
                        failed.push(format!("worker {} exited with {status}", index + 1));
                        break;
                    }
                    None if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        failed.push(format!("worker {} did not exit; killed", index + 1));
                        break;
                    }
                    None => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        if !failed.is_empty() {
            bail!("{}", failed.join("; "));
        }
        Ok(())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in self.children().iter_mut() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(self.path.with_extension("secret"));
    }
}

/// Ports free right now on loopback (the OS picks them).
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot find free loopback ports")?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()?)
}

/// Writes a new file only its owner can read (a secret in a shared temp
/// directory); refuses to follow or reuse anything already at `path`.
fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)
}

fn random_secret_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).expect("the OS has a random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_are_owner_only_and_never_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.secret");
        write_private_file(&path, b"0123456789abcdef").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(write_private_file(&path, b"again").is_err());
    }

    #[test]
    fn job_round_trips() {
        let job = Job {
            app: AppName::Wordcount,
            options: AppOptions { final_counts: true },
            split_input: false,
            batch_max: 7,
            queue_depth_batches: 9,
            discard_output: true,
        };
        assert_eq!(Job::decode(&job.encode()).unwrap(), job);
        assert!(Job::decode(b"app=nope\n").is_err());
    }
}
