//! A process's audit log in the threaded runtime: its side thread, the
//! records only the runtime knows (who started the run and how, recovery,
//! how it ended), and the handles its shards, readers and output thread
//! write through.

use super::RunError;
use crate::env::Clock;
use std::path::PathBuf;
use std::sync::Arc;
use verity_audit::record::{Recovery, RunEnd};
use verity_audit::{AuditHandle, AuditLog, AuditStats, Record, WriterLimits};
use verity_state::storage::DirStorage;

/// `--audit DIR` and its options.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub dir: PathBuf,
    pub limits: WriterLimits,
    /// The command line that started the process, program first.
    pub command_line: Vec<String>,
    /// Drawn at process start (in a cluster, the one the handshake carries).
    pub incarnation: u64,
}

pub(super) struct ProcessAudit {
    log: AuditLog,
    clock: Arc<dyn Clock>,
}

impl ProcessAudit {
    /// Opens (or continues) this process's chain in the audit dir and
    /// records the run's start.
    pub fn start(
        settings: &AuditSettings,
        layout: &crate::cluster::Layout,
        batch_max: usize,
        clock: Arc<dyn Clock>,
    ) -> Result<ProcessAudit, RunError> {
        let process = layout.process_id;
        let cannot = |e: std::io::Error| {
            RunError::Audit(format!(
                "cannot open the audit log in {}: {e}",
                settings.dir.display()
            ))
        };
        let storage = DirStorage::open(&settings.dir).map_err(cannot)?;
        let log = AuditLog::start(Box::new(storage), process, settings.limits).map_err(cannot)?;
        let audit = ProcessAudit { log, clock };
        let identity = crate::audit::RunIdentity {
            incarnation: settings.incarnation,
            args: settings.command_line.clone(),
            user: std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .unwrap_or_else(|_| "unknown".into()),
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
        };
        audit.record(&crate::audit::run_start(
            identity,
            layout,
            batch_max,
            &*audit.clock,
        ))?;
        Ok(audit)
    }

    pub fn handle(&self) -> AuditHandle {
        self.log.handle()
    }

    /// The side thread's queue, for live metrics.
    pub fn gauge(&self) -> verity_audit::AuditGauge {
        self.log.gauge()
    }

    pub fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.clock)
    }

    pub fn recovered(&self, checkpoint: u64, store_id: u64) -> Result<(), RunError> {
        self.record(&Record::Recovery(Recovery {
            utc_us: self.clock.now_us(),
            checkpoint,
            store_id,
        }))
    }

    fn record(&self, record: &Record) -> Result<(), RunError> {
        self.log
            .handle()
            .record(record)
            .map_err(|e| RunError::Audit(e.to_string()))
    }

    /// Records how the run ended, writes and syncs everything, and stops
    /// the side thread.
    pub fn end(self, outcome: &str, counts: [u64; 3]) -> Result<AuditStats, RunError> {
        let [records_in, records_out, dead_lettered] = counts;
        let end = Record::RunEnd(RunEnd {
            utc_us: self.clock.now_us(),
            outcome: outcome.to_string(),
            records_in,
            records_out,
            dead_lettered,
        });
        // A failed writer has already said why; finish reports it.
        let _ = self.record(&end);
        self.log
            .finish()
            .map_err(|e| RunError::Audit(format!("the audit log could not be written: {e}")))
    }
}
