//! A compact table of output lines, each tagged with its key group and where
//! it came from. Lines live in one byte buffer so that millions of them cost
//! a few words each, not an allocation each.

use std::collections::HashMap;

/// Interns key groups so expected and actual lines share group ids.
#[derive(Default)]
pub struct Groups {
    ids: HashMap<Box<[u8]>, u32>,
}

impl Groups {
    pub fn id(&mut self, key: &[u8]) -> u32 {
        if let Some(id) = self.ids.get(key) {
            return *id;
        }
        let id = self.ids.len() as u32;
        self.ids.insert(key.into(), id);
        id
    }

    pub fn get(&self, key: &[u8]) -> Option<u32> {
        self.ids.get(key).copied()
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub group: u32,
    len: u32,
    start: u64,
    /// The input line (for expected rows) or output line (for actual rows)
    /// this row comes from; 0 if none (wordcount `--final` totals).
    pub origin: u64,
}

#[derive(Default)]
pub struct LineTable {
    bytes: Vec<u8>,
    rows: Vec<Row>,
}

impl LineTable {
    pub fn push(&mut self, group: u32, line: &[u8], origin: u64) {
        let start = self.bytes.len() as u64;
        self.bytes.extend_from_slice(line);
        self.rows.push(Row {
            group,
            len: line.len() as u32,
            start,
            origin,
        });
    }

    /// Appends a line written by `write` into the table's buffer.
    pub fn push_with(&mut self, group: u32, origin: u64, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.bytes.len();
        write(&mut self.bytes);
        self.rows.push(Row {
            group,
            len: (self.bytes.len() - start) as u32,
            start: start as u64,
            origin,
        });
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn row(&self, index: usize) -> Row {
        self.rows[index]
    }

    pub fn line(&self, index: usize) -> &[u8] {
        let row = self.rows[index];
        &self.bytes[row.start as usize..row.start as usize + row.len as usize]
    }

    /// Row indices sorted by (group, original position).
    pub fn sorted_by_group(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.rows.len() as u32).collect();
        order.sort_by_key(|i| (self.rows[*i as usize].group, *i));
        order
    }
}
