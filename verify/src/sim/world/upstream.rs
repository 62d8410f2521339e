//! What each source's upstream is told. A replayable source (the TCP source
//! that acks `verity send`) lets its upstream forget what a commit covers,
//! so the production reader loop's commits are watched from outside, as an
//! upstream would live with them: each completed checkpoint's cut is
//! committed at the reader's next turn (else the upstream holds everything
//! until the end), no recovery resumes a source before what its upstream
//! forgot (that input would be gone), and a run that completed commits all
//! it read (else the upstream never learns it may let go).

use super::*;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use verity_core::connector::{Position, Pull, SourceError, SourceReader};
use verity_core::source::ReaderProgress;

/// Bytes of a source its upstream was told it may forget; it outlives a
/// crash, as the upstream does.
#[derive(Debug, Default)]
pub(super) struct Forgotten {
    pub(super) bytes: u64,
    /// A commit that went back or past what was read.
    pub(super) wrong: Option<String>,
}

/// The production line reader, with its commits recorded.
pub(super) struct Committing {
    pub(super) inner: Box<dyn SourceReader>,
    pub(super) forgotten: Arc<Mutex<Forgotten>>,
}

impl SourceReader for Committing {
    fn next_chunk(&mut self) -> Result<Pull, SourceError> {
        self.inner.next_chunk()
    }

    fn commit(&mut self, upto: &Position) -> Result<(), SourceError> {
        let mut forgotten = self.forgotten.lock().unwrap_or_else(|p| p.into_inner());
        match upto {
            Position::Text { bytes, .. } if *bytes >= forgotten.bytes => forgotten.bytes = *bytes,
            other => {
                let was = forgotten.bytes;
                forgotten.wrong.get_or_insert(format!(
                    "a commit at {other:?} after one at byte {was}: commits go back"
                ));
            }
        }
        self.inner.commit(upto)
    }
}

/// What a cut says its stream's one partition stands at, if it read any
/// of it (a simulated stream reads one partition: its source's only one, or
/// its process's of a spread source).
pub(super) fn cut_bytes(cut: &verity_core::source::SourceCut) -> Option<u64> {
    cut.positions.iter().find_map(|(_, at)| match at {
        Position::Text { bytes, .. } => Some(*bytes),
        _ => None,
    })
}

impl<K, V, S, O> World<'_, K, V, S, O>
where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: verity_core::State,
    O: 'static,
{
    /// After a reader's turn that began with checkpoint `completed`
    /// complete: its upstream was told to forget exactly that
    /// checkpoint's cut.
    pub(super) fn check_source_commit(&mut self, source: u32, completed: u64) {
        let forgotten = self.readers[source as usize].forgotten();
        if let Some(wrong) = forgotten.1 {
            self.net
                .failure
                .get_or_insert(format!("source {source}: {wrong}"));
            return;
        }
        if completed <= self.checkpoints_resumed {
            return;
        }
        let Some(cut) = self.output.cut(completed, source) else {
            return; // the source had ended by then, or read nothing before it
        };
        if forgotten.0 != cut {
            self.net.failure.get_or_insert(format!(
                "source {source}: checkpoint {completed} is complete and cuts it at byte {cut}, but after \
                 the reader's next turn its upstream may forget up to byte {} (the reader commits each \
                 completed checkpoint's cut before it reads on)",
                forgotten.0
            ));
        }
    }

    /// The run ended: every reader learns it and is done. After a run that
    /// completed, every output is final and every reader committed all it
    /// read; after one cut short (abandoned), none committed past the
    /// newest complete checkpoint.
    pub(super) fn release_readers(&mut self, abandoned: bool) -> Result<(), String> {
        let committed = if abandoned {
            ReaderProgress::ABANDONED
        } else {
            self.output.progress().committed.load(Relaxed)
        };
        for reader in &mut self.readers {
            let before = reader.forgotten().0;
            if !reader.after_output(committed) {
                return Err(format!(
                    "source {}: its reader is not done once the output thread says {committed}",
                    reader.source()
                ));
            }
            if reader.failed() && reader.forgotten().0 != before {
                return Err(format!(
                    "source {}: it failed, yet at the end its upstream may forget up to byte {} (was {before}): \
                     what a failed source read past its newest checkpoint is not final",
                    reader.source(),
                    reader.forgotten().0
                ));
            }
        }
        if !abandoned {
            return self.check_sources_committed_to_their_end();
        }
        let newest = self.output.completed();
        for reader in &self.readers {
            let (forgotten, _) = reader.forgotten();
            match self.output.cut(newest, reader.source()) {
                Some(cut) if forgotten > cut => {
                    return Err(format!(
                        "source {}: the run was abandoned, and its upstream may forget up to byte {forgotten}, \
                         past byte {cut}, where the newest complete checkpoint ({newest}) cuts it",
                        reader.source()
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Once every output is final and the run completed: every reader
    /// committed all it read.
    fn check_sources_committed_to_their_end(&self) -> Result<(), String> {
        for reader in self.readers.iter().filter(|r| !r.failed()) {
            let (forgotten, wrong) = reader.forgotten();
            if let Some(wrong) = wrong {
                return Err(format!("source {}: {wrong}", reader.source()));
            }
            let read = reader.read_bytes() as u64;
            if forgotten != read {
                return Err(format!(
                    "source {}: the run completed, but its upstream may forget only up to byte {forgotten} of \
                     the {read} read (the reader commits everything once every output is final)",
                    reader.source()
                ));
            }
        }
        Ok(())
    }
}
