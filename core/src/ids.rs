//! Message identity: every record carries the id it got when it entered the
//! system, through every step, so dedup, lineage and tracing can name it.

/// Identifies one record: which producer (source) made it, its sequence number at
/// that producer (for a text source: the 1-based line number), and which of the
/// records derived from that input it is (`part`, for `flat_map` fan-out).
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

    pub fn with_part(self, part: u32) -> Self {
        MsgId { part, ..self }
    }
}

impl std::fmt::Display for MsgId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}.{}", self.producer, self.seq, self.part)
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
