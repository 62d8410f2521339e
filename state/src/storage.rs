//! Durable storage behind a trait, so the same checkpoint code runs on the real
//! filesystem and on the simulator's disk, which loses unsynced writes and
//! tears renames on a crash (`verify/src/sim/disk.rs`).
//!
//! A `Storage` is one flat directory (the state dir). Its operations are the
//! ones whose durability POSIX filesystems actually promise something about,
//! so the trait makes the caller say when it needs durability: contents are
//! durable only after `sync_file`, and a created, renamed or removed name only
//! after `sync_dir`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The longest file name a `Storage` accepts, well under every filesystem's
/// limit (255 bytes on the common ones) so a `.tmp` suffix always fits.
pub const NAME_MAX_BYTES: usize = 200;

/// The suffix `write_atomically` gives its temporary file.
pub const TEMP_SUFFIX: &str = ".tmp";

/// One flat directory of named files with explicit durability.
///
/// Every method takes a name checked by `validate_name`; an invalid one is an
/// `io::ErrorKind::InvalidInput` error.
pub trait Storage: Send {
    /// Creates `name` (or truncates it) and writes all of `bytes`. Not durable
    /// until `sync_file`; a new name is not durable until `sync_dir`.
    fn create(&mut self, name: &str, bytes: &[u8]) -> io::Result<()>;

    /// Appends `bytes` to `name`, creating it if missing. Not durable until
    /// `sync_file` (a crash may keep a prefix of what was appended since);
    /// a new name is not durable until `sync_dir`.
    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()>;

    /// Makes the contents of `name` durable.
    fn sync_file(&mut self, name: &str) -> io::Result<()>;

    /// Renames `from` to `to` atomically, replacing `to` if it exists. Durable
    /// only after `sync_dir`.
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()>;

    /// Makes every creation, rename and removal so far durable.
    fn sync_dir(&mut self) -> io::Result<()>;

    /// The contents of `name`, or `None` if there is no such file.
    fn read(&mut self, name: &str) -> io::Result<Option<Vec<u8>>>;

    /// The names of all files, sorted.
    fn list(&mut self) -> io::Result<Vec<String>>;

    /// Removes `name`; a missing file is not an error. Durable only after
    /// `sync_dir`.
    fn remove(&mut self, name: &str) -> io::Result<()>;
}

impl<S: Storage + ?Sized> Storage for Box<S> {
    fn create(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        (**self).create(name, bytes)
    }
    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        (**self).append(name, bytes)
    }
    fn sync_file(&mut self, name: &str) -> io::Result<()> {
        (**self).sync_file(name)
    }
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        (**self).rename(from, to)
    }
    fn sync_dir(&mut self) -> io::Result<()> {
        (**self).sync_dir()
    }
    fn read(&mut self, name: &str) -> io::Result<Option<Vec<u8>>> {
        (**self).read(name)
    }
    fn list(&mut self) -> io::Result<Vec<String>> {
        (**self).list()
    }
    fn remove(&mut self, name: &str) -> io::Result<()> {
        (**self).remove(name)
    }
}

/// Checks a file name: non-empty, at most `NAME_MAX_BYTES`, only ASCII
/// letters, digits, `-`, `_` and `.`, and not `.` or `..`. So a name can never
/// leave the directory or mean something else on another filesystem.
pub fn validate_name(name: &str) -> io::Result<()> {
    let problem = if name.is_empty() {
        Some("is empty")
    } else if name.len() > NAME_MAX_BYTES {
        Some("is longer than 200 bytes")
    } else if name == "." || name == ".." {
        Some("names a directory")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        Some("may hold only ASCII letters, digits, `-`, `_` and `.`")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("storage file name `{}` {problem}", name.escape_default()),
        )),
    }
}

/// Replaces `name` with `bytes` so that after a crash `name` holds either its
/// old contents or all of `bytes`, never a mix or a prefix, and once this
/// returns the new contents survive a crash.
pub fn write_atomically(storage: &mut dyn Storage, name: &str, bytes: &[u8]) -> io::Result<()> {
    write_atomically_with(storage, name, bytes, true)
}

/// `write_atomically`, with the final directory sync optional so that a
/// planted-bug test can show the simulator notices it missing.
pub(crate) fn write_atomically_with(
    storage: &mut dyn Storage,
    name: &str,
    bytes: &[u8],
    sync_dir: bool,
) -> io::Result<()> {
    validate_name(name)?;
    let temp = format!("{name}{TEMP_SUFFIX}");
    // Written under another name first: a crash mid-write must not leave
    // `name` torn.
    storage.create(&temp, bytes)?;
    // The contents must be on disk before the rename can be: otherwise a
    // crash after the rename reached disk can leave `name` empty or torn.
    storage.sync_file(&temp)?;
    // The atomic step: `name` is the old file or the new one.
    storage.rename(&temp, name)?;
    if sync_dir {
        // The rename itself is a directory change; until the directory is
        // synced a crash can undo it, losing a write we said was done.
        storage.sync_dir()?;
    }
    Ok(())
}

/// `Storage` on a real directory.
#[derive(Debug)]
pub struct DirStorage {
    dir: PathBuf,
}

impl DirStorage {
    /// Opens the directory `path`, creating it (and its parents) if missing.
    pub fn open(path: impl AsRef<Path>) -> io::Result<DirStorage> {
        let dir = path.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| with_path(e, &dir, "create the state directory"))?;
        if !fs::metadata(&dir)
            .map_err(|e| with_path(e, &dir, "open"))?
            .is_dir()
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", dir.display()),
            ));
        }
        Ok(DirStorage { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> io::Result<PathBuf> {
        validate_name(name)?;
        Ok(self.dir.join(name))
    }
}

/// An I/O error that names the file and what was being done to it, keeping
/// its kind so callers can still match on it.
fn with_path(e: io::Error, path: &Path, doing: &str) -> io::Error {
    io::Error::new(e.kind(), format!("cannot {doing} {}: {e}", path.display()))
}

impl Storage for DirStorage {
    fn create(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.file(name)?;
        let mut file = File::create(&path).map_err(|e| with_path(e, &path, "create"))?;
        file.write_all(bytes).map_err(|e| with_path(e, &path, "write"))
    }

    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.file(name)?;
        let mut file = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| with_path(e, &path, "open"))?;
        file.write_all(bytes)
            .map_err(|e| with_path(e, &path, "append to"))
    }

    fn sync_file(&mut self, name: &str) -> io::Result<()> {
        let path = self.file(name)?;
        let file = File::open(&path).map_err(|e| with_path(e, &path, "open"))?;
        file.sync_all().map_err(|e| with_path(e, &path, "sync"))
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        let (from, to) = (self.file(from)?, self.file(to)?);
        fs::rename(&from, &to).map_err(|e| {
            let message = format!("cannot rename {} to {}: {e}", from.display(), to.display());
            io::Error::new(e.kind(), message)
        })
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        let dir = File::open(&self.dir).map_err(|e| with_path(e, &self.dir, "open"))?;
        dir.sync_all().map_err(|e| with_path(e, &self.dir, "sync"))
    }

    fn read(&mut self, name: &str) -> io::Result<Option<Vec<u8>>> {
        let path = self.file(name)?;
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(with_path(e, &path, "read")),
        }
    }

    fn list(&mut self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|e| with_path(e, &self.dir, "list"))?;
        for entry in entries {
            let entry = entry.map_err(|e| with_path(e, &self.dir, "list"))?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            // A name the trait could not address is not ours: leave it out.
            if let Some(name) = entry.file_name().to_str() {
                if validate_name(name).is_ok() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        let path = self.file(name)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(with_path(e, &path, "remove")),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for good in ["a", "ckpt-1.bin", "A_b-c.d", &"x".repeat(NAME_MAX_BYTES)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a b",
            "é",
            &"x".repeat(NAME_MAX_BYTES + 1),
        ] {
            let e = validate_name(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn dir_storage_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let mut storage = DirStorage::open(tmp.path().join("state")).unwrap();
        assert_eq!(storage.read("a").unwrap(), None);
        storage.create("b", b"two").unwrap();
        storage.create("a", b"one").unwrap();
        storage.sync_file("a").unwrap();
        storage.sync_dir().unwrap();
        assert_eq!(storage.list().unwrap(), vec!["a", "b"]);
        storage.create("a", b"1").unwrap();
        assert_eq!(storage.read("a").unwrap().unwrap(), b"1");
        storage.rename("b", "a").unwrap();
        assert_eq!(storage.read("a").unwrap().unwrap(), b"two");
        assert_eq!(storage.list().unwrap(), vec!["a"]);
        storage.remove("a").unwrap();
        storage.remove("a").unwrap();
        assert!(storage.list().unwrap().is_empty());
        let e = storage.create("../escape", b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = storage.sync_file("missing").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn write_atomically_replaces_and_leaves_no_temp() {
        let tmp = tempfile::tempdir().unwrap();
        let mut storage = DirStorage::open(tmp.path()).unwrap();
        write_atomically(&mut storage, "f", b"old").unwrap();
        write_atomically(&mut storage, "f", b"new").unwrap();
        assert_eq!(storage.read("f").unwrap().unwrap(), b"new");
        assert_eq!(storage.list().unwrap(), vec!["f"]);
    }
}
