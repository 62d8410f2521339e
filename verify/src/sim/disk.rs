//! The simulator's disk: a `verity_state::storage::Storage` that a crash can
//! cost every write nobody synced, so the checkpoint code production runs is
//! tested against the failures a real filesystem is allowed to have.
//!
//! The model, every choice drawn from the seed:
//!
//! * Files are inodes; names point at them. Each inode has *durable* contents
//!   and *current* contents. `create` of an existing name truncates and
//!   rewrites current contents only; `sync_file` makes them durable.
//! * There are two namespaces, the current one (what reads see) and the
//!   durable one. Directory operations (`create` of a new name, `rename`,
//!   `remove` of an existing name) change the current namespace at once and
//!   join an ordered log; `sync_dir` applies the whole log to the durable
//!   namespace.
//! * `crash` is the process dying: a seeded prefix of the log reaches the
//!   durable namespace (directory changes reach the disk in order), the rest
//!   is lost. Each inode whose contents were not synced ends up with its
//!   durable contents (empty if it never was synced) or a torn prefix of its
//!   current ones, a seeded choice each. A rename that survived carries its
//!   inode, so the renamed name holds whatever that inode's contents became:
//!   the synced ones, if the file was synced before the rename. After a crash
//!   the disk reads as that durable state, and is usable again (a restarted
//!   process).
//! * `crash_after(k)` arms a trigger: `k` more operations succeed, and the
//!   next one (of any kind, reads included) crashes the disk and fails, so a
//!   test can land a crash between any two storage calls.
//!
//! Every map is ordered, so a seed replays exactly.

use std::collections::BTreeMap;
use std::io;
use verity_core::{Rng, SplitMix64};
use verity_state::storage::{validate_name, Storage};

/// What the disk's faults did, for a run's summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Storage calls made, the failing one of a triggered crash included.
    pub ops: u64,
    pub crashes: u64,
    /// Files a crash left with a prefix of their unsynced contents.
    pub torn_files: u64,
    /// Directory operations a crash undid.
    pub lost_dir_ops: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct InodeId(u64);

#[derive(Debug, Clone)]
struct Inode {
    durable: Vec<u8>,
    current: Vec<u8>,
    /// Current contents are durable.
    synced: bool,
    /// Since it was last synced, only appended to: a crash keeps at least
    /// its durable contents (a rewrite may lose them all).
    appended_only: bool,
}

/// A directory change not yet durable.
#[derive(Debug, Clone)]
enum DirOp {
    Link { name: String, inode: InodeId },
    Rename { from: String, to: String },
    Remove { name: String },
}

type Namespace = BTreeMap<String, InodeId>;

/// A simulated disk holding one directory; see the module doc for its model.
#[derive(Debug)]
pub struct SimDisk {
    rng: SplitMix64,
    inodes: BTreeMap<InodeId, Inode>,
    next_inode: u64,
    current: Namespace,
    durable: Namespace,
    /// Directory changes since the last `sync_dir`, oldest first.
    unsynced_dir_ops: Vec<DirOp>,
    /// Operations left before the armed crash.
    crash_countdown: Option<u64>,
    stats: DiskStats,
}

impl SimDisk {
    /// An empty disk whose crashes are drawn from `seed`.
    pub fn new(seed: u64) -> SimDisk {
        SimDisk {
            rng: SplitMix64::new(seed),
            inodes: BTreeMap::new(),
            next_inode: 0,
            current: Namespace::new(),
            durable: Namespace::new(),
            unsynced_dir_ops: Vec::new(),
            crash_countdown: None,
            stats: DiskStats::default(),
        }
    }

    pub fn stats(&self) -> DiskStats {
        self.stats
    }

    /// Lets `ops` more operations succeed; the one after crashes the disk and
    /// fails. Replaces a trigger armed before; a crash disarms it.
    pub fn crash_after(&mut self, ops: u64) {
        self.crash_countdown = Some(ops);
    }

    /// The process died: the disk keeps what was durable, a seeded prefix of
    /// the unsynced directory changes, and for each unsynced file its durable
    /// contents or a torn prefix of its current ones.
    pub fn crash(&mut self) {
        self.crash_countdown = None;
        self.stats.crashes += 1;
        let log = std::mem::take(&mut self.unsynced_dir_ops);
        let reached = self.rng.below(log.len() as u64 + 1) as usize;
        self.stats.lost_dir_ops += (log.len() - reached) as u64;
        for op in &log[..reached] {
            apply(&mut self.durable, op);
        }
        // Files the crash unlinked are gone whatever their contents were.
        self.current = self.durable.clone();
        self.forget_unlinked();
        for inode in self.inodes.values_mut().filter(|inode| !inode.synced) {
            if self.rng.chance(1, 2) {
                let kept = if inode.appended_only {
                    inode.durable.len()
                } else {
                    0
                };
                let len = kept + self.rng.below((inode.current.len() - kept) as u64 + 1) as usize;
                inode.durable = inode.current[..len].to_vec();
                self.stats.torn_files += 1;
            }
            inode.current = inode.durable.clone();
            inode.synced = true;
            inode.appended_only = true;
        }
        self.check_invariants();
    }

    /// Counts an operation, and crashes instead if the trigger says so.
    fn begin(&mut self) -> io::Result<()> {
        self.stats.ops += 1;
        match self.crash_countdown {
            Some(0) => {
                self.crash();
                Err(io::Error::other(
                    "simulated crash: the process died during this call",
                ))
            }
            Some(left) => {
                self.crash_countdown = Some(left - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn inode_of(&mut self, name: &str) -> io::Result<&mut Inode> {
        let id = self.current.get(name).ok_or_else(|| not_found(name))?;
        Ok(self.inodes.get_mut(id).expect("a named inode exists"))
    }

    /// Drops inodes no namespace names any more: nothing can reach them again.
    fn forget_unlinked(&mut self) {
        // A set first: an audit log in small segments names thousands.
        let named: std::collections::BTreeSet<InodeId> = self
            .current
            .values()
            .chain(self.durable.values())
            .copied()
            .collect();
        self.inodes.retain(|id, _| named.contains(id));
    }

    fn check_invariants(&self) {
        if self.unsynced_dir_ops.is_empty() {
            assert_eq!(
                self.current, self.durable,
                "no pending directory change, yet namespaces differ"
            );
        }
        for id in self.current.values().chain(self.durable.values()) {
            assert!(self.inodes.contains_key(id), "a name points at a forgotten inode");
        }
    }
}

/// One directory change, applied to a namespace it is valid in: replaying the
/// log in order from the durable namespace retraces the current one.
fn apply(namespace: &mut Namespace, op: &DirOp) {
    match op {
        DirOp::Link { name, inode } => {
            let old = namespace.insert(name.clone(), *inode);
            assert!(old.is_none(), "linked {name} over an existing name");
        }
        DirOp::Rename { from, to } => {
            let inode = namespace
                .remove(from)
                .expect("renamed a name that exists at that point");
            namespace.insert(to.clone(), inode);
        }
        DirOp::Remove { name } => {
            assert!(
                namespace.remove(name).is_some(),
                "removed a name that exists at that point"
            );
        }
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("simulated disk: no file `{name}`"),
    )
}

impl Storage for SimDisk {
    fn create(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        validate_name(name)?;
        self.begin()?;
        if let Ok(inode) = self.inode_of(name) {
            inode.current = bytes.to_vec();
            inode.synced = false;
            inode.appended_only = false;
            return Ok(());
        }
        let id = InodeId(self.next_inode);
        self.next_inode += 1;
        let inode = Inode {
            durable: Vec::new(),
            current: bytes.to_vec(),
            // An empty new file is what a crash would leave of it anyway.
            synced: bytes.is_empty(),
            appended_only: true,
        };
        self.inodes.insert(id, inode);
        self.current.insert(name.to_string(), id);
        let op = DirOp::Link {
            name: name.to_string(),
            inode: id,
        };
        self.unsynced_dir_ops.push(op);
        Ok(())
    }

    fn sync_file(&mut self, name: &str) -> io::Result<()> {
        validate_name(name)?;
        self.begin()?;
        let inode = self.inode_of(name)?;
        inode.durable = inode.current.clone();
        inode.synced = true;
        inode.appended_only = true;
        Ok(())
    }

    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        validate_name(name)?;
        if self.current.contains_key(name) {
            self.begin()?;
            let inode = self.inode_of(name)?;
            inode.current.extend_from_slice(bytes);
            inode.synced &= bytes.is_empty();
            return Ok(());
        }
        self.create(name, bytes)
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        validate_name(from)?;
        validate_name(to)?;
        self.begin()?;
        if !self.current.contains_key(from) {
            return Err(not_found(from));
        }
        if from == to {
            return Ok(());
        }
        let inode = self.current.remove(from).expect("checked above");
        self.current.insert(to.to_string(), inode);
        let op = DirOp::Rename {
            from: from.to_string(),
            to: to.to_string(),
        };
        self.unsynced_dir_ops.push(op);
        Ok(())
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        self.begin()?;
        for op in std::mem::take(&mut self.unsynced_dir_ops) {
            apply(&mut self.durable, &op);
        }
        self.forget_unlinked();
        self.check_invariants();
        Ok(())
    }

    fn read(&mut self, name: &str) -> io::Result<Option<Vec<u8>>> {
        validate_name(name)?;
        self.begin()?;
        Ok(self.inode_of(name).ok().map(|inode| inode.current.clone()))
    }

    fn list(&mut self) -> io::Result<Vec<String>> {
        self.begin()?;
        Ok(self.current.keys().cloned().collect())
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        validate_name(name)?;
        self.begin()?;
        if self.current.remove(name).is_some() {
            let op = DirOp::Remove {
                name: name.to_string(),
            };
            self.unsynced_dir_ops.push(op);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_writes_survive_every_crash() {
        for seed in 0..200 {
            let mut disk = SimDisk::new(seed);
            disk.create("a", b"durable").unwrap();
            disk.sync_file("a").unwrap();
            disk.sync_dir().unwrap();
            disk.create("a", b"later, unsynced").unwrap();
            disk.create("b", b"never synced").unwrap();
            disk.crash();
            let a = disk.read("a").unwrap().unwrap();
            assert!(a == b"durable" || b"later, unsynced".starts_with(&a), "{a:?}");
            if let Some(b) = disk.read("b").unwrap() {
                assert!(b"never synced".starts_with(&b), "{b:?}");
            }
        }
    }

    #[test]
    fn unsynced_directory_changes_are_lost_in_order() {
        let mut outcomes = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let mut disk = SimDisk::new(seed);
            disk.create("x", b"x").unwrap();
            disk.sync_file("x").unwrap();
            disk.rename("x", "y").unwrap();
            disk.remove("y").unwrap();
            disk.crash();
            let names = disk.list().unwrap();
            // A later change never survives without the earlier ones.
            assert!(
                [vec![], vec!["x".to_string()], vec!["y".to_string()]].contains(&names),
                "{names:?}"
            );
            if names == ["y"] {
                assert_eq!(disk.read("y").unwrap().unwrap(), b"x");
            }
            outcomes.insert(names);
        }
        assert_eq!(outcomes.len(), 3, "every prefix of the log happens: {outcomes:?}");
    }

    #[test]
    fn the_trigger_crashes_on_the_op_after_k() {
        let mut disk = SimDisk::new(1);
        disk.crash_after(2);
        disk.create("a", b"1").unwrap();
        disk.sync_file("a").unwrap();
        assert!(disk.sync_dir().is_err());
        assert_eq!(disk.stats().crashes, 1);
        // Usable again, as the restarted process's disk.
        disk.create("b", b"2").unwrap();
        assert_eq!(disk.stats().ops, 4);
    }

    #[test]
    fn same_seed_same_disk() {
        let run = |seed| {
            let mut disk = SimDisk::new(seed);
            for i in 0..20u8 {
                let name = format!("f{}", i % 5);
                disk.create(&name, &[i; 40]).unwrap();
                if i % 3 == 0 {
                    disk.sync_file(&name).unwrap();
                }
                if i % 7 == 0 {
                    disk.crash();
                }
            }
            let names = disk.list().unwrap();
            let contents: Vec<_> = names.iter().map(|n| disk.read(n).unwrap()).collect();
            (names, contents, disk.stats())
        };
        assert_eq!(run(9), run(9));
    }
}

/// A `SimDisk` that outlives the world using it: the world writes through a
/// `SharedDisk`, the simulator crashes the disk under it and hands the
/// same disk to the restarted cluster.
#[derive(Clone)]
pub struct SharedDisk(std::sync::Arc<std::sync::Mutex<SimDisk>>);

impl SharedDisk {
    pub fn new(disk: SimDisk) -> SharedDisk {
        SharedDisk(std::sync::Arc::new(std::sync::Mutex::new(disk)))
    }

    fn disk(&self) -> std::sync::MutexGuard<'_, SimDisk> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every process dies at once: what was not synced is lost, as `crash`.
    pub fn crash(&self) {
        self.disk().crash();
    }

    pub fn stats(&self) -> DiskStats {
        self.disk().stats()
    }

    /// Arms `SimDisk::crash_after`: the process dies in the middle of a
    /// write (a checkpoint's), at the operation after the next `ops`.
    pub fn crash_after(&self, ops: u64) {
        self.disk().crash_after(ops);
    }
}

impl Storage for SharedDisk {
    fn create(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.disk().create(name, bytes)
    }
    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.disk().append(name, bytes)
    }
    fn sync_file(&mut self, name: &str) -> io::Result<()> {
        self.disk().sync_file(name)
    }
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        self.disk().rename(from, to)
    }
    fn sync_dir(&mut self) -> io::Result<()> {
        self.disk().sync_dir()
    }
    fn read(&mut self, name: &str) -> io::Result<Option<Vec<u8>>> {
        self.disk().read(name)
    }
    fn list(&mut self) -> io::Result<Vec<String>> {
        self.disk().list()
    }
    fn remove(&mut self, name: &str) -> io::Result<()> {
        self.disk().remove(name)
    }
}
