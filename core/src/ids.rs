//! Message identity: every record carries the id it got when it entered the
//! system, through every step, so dedup, lineage and tracing can name it.

/// Identifies one record: which producer (stream) made it, its sequence number at
/// that producer (for a text source: the 1-based line number; for a log source
/// such as Kafka: its partition and offset, `verity_audit::record::log_seq`), and
/// which of the records derived from that input it is (`part`, for `flat_map`
/// fan-out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MsgId {
    pub producer: u32,
    pub part: u32,
    pub seq: u64,
}

impl MsgId {
    pub fn new(producer: u32, seq: u64) -> Self {
        MsgId {
            producer,
            part: 0,
            seq,
        }
    }

    /// The id of the record at `offset` of `partition` of a log source.
    pub fn from_log(producer: u32, partition: u32, offset: u64) -> Self {
        MsgId::new(producer, verity_audit::record::log_seq(partition, offset))
    }

    pub fn with_part(self, part: u32) -> Self {
        MsgId { part, ..self }
    }

    /// The (partition, offset) of a record read from a log; `None` for a
    /// line.
    pub fn log_position(&self) -> Option<(u32, u64)> {
        verity_audit::record::log_position(self.seq)
    }
}

impl std::fmt::Display for MsgId {
    /// As the audit log shows it: `PRODUCER:LINE.PART`, or
    /// `PRODUCER:pPARTITION@OFFSET.PART`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        verity_audit::Id::from(*self).fmt(f)
    }
}

/// A payload with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg<T> {
    pub id: MsgId,
    pub data: T,
}

impl<T> Msg<T> {
    pub fn new(id: MsgId, data: T) -> Self {
        Msg { id, data }
    }
}

impl From<MsgId> for verity_audit::Id {
    fn from(id: MsgId) -> Self {
        verity_audit::Id {
            producer: id.producer,
            part: id.part,
            seq: id.seq,
        }
    }
}
