//! The user's tuning cache: entries tuned on this machine, kept in
//! `$XDG_CACHE_HOME/flashcore/tuning-<version>.json` (or `$FLASHCORE_CACHE_DIR`), merged over
//! the shipped table by [`crate::tuning::Table::active`].
//!
//! The file is named by FlashCore's version, so a new release (new code generation) never reads
//! entries timed on an older one. Writers take a lock file, merge their entry into what is
//! there, write a temporary file and rename it over the old one: a reader sees the old table or
//! the new one, never half of either, and two processes tuning at once both keep their entries.
//! A corrupt or foreign file is reported and ignored (the next write replaces it), never a panic.
//!
//! ```
//! use flashcore::tuning_cache::TuningCache;
//!
//! let dir = std::env::temp_dir().join(format!("flashcore-doc-cache-{}", std::process::id()));
//! let cache = TuningCache::in_dir(&dir);
//! let (table, report) = cache.load();
//! assert!(table.entries.is_empty() && report.is_none(), "no file yet: an empty table, nothing to report");
//! # std::fs::remove_dir_all(&dir).ok();
//! ```

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::tuning::{Entry, Table};
use crate::Error;

/// Overrides the cache directory (tests, read-only home directories).
pub const CACHE_DIR_VARIABLE: &str = "FLASHCORE_CACHE_DIR";

/// How long a writer waits for the lock before giving up with an error.
const LOCK_WAIT: Duration = Duration::from_secs(20);

/// A lock file older than this was left by a process that died holding it: it is taken over.
/// (Holding the lock is a read, a merge and a write of a small file: milliseconds.)
const STALE_LOCK: Duration = Duration::from_secs(60);

/// One cache file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TuningCache {
    path: PathBuf,
}

impl TuningCache {
    /// The cache directory: `$FLASHCORE_CACHE_DIR`, else `$XDG_CACHE_HOME/flashcore`, else
    /// `$HOME/.cache/flashcore`; `None` without any of them.
    pub fn default_dir() -> Option<PathBuf> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        var(CACHE_DIR_VARIABLE)
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("flashcore")))
            .or_else(|| var("HOME").map(|d| d.join(".cache").join("flashcore")))
    }

    /// The cache of this FlashCore version in [`TuningCache::default_dir`].
    pub fn user() -> Option<TuningCache> {
        TuningCache::default_dir().map(|dir| TuningCache::in_dir(&dir))
    }

    /// The cache of this FlashCore version in `dir`.
    pub fn in_dir(dir: &Path) -> TuningCache {
        TuningCache { path: dir.join(format!("tuning-{}.json", env!("CARGO_PKG_VERSION"))) }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cached entries, and what was wrong with the file if it could not be used (it is then
    /// ignored: an empty table). No file is an empty table and nothing to report.
    pub fn load(&self) -> (Table, Option<String>) {
        match fs::read_to_string(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Table::empty(), None),
            Err(e) => (Table::empty(), Some(format!("{}: {e}; ignored", self.path.display()))),
            Ok(text) => match Table::from_json(&text) {
                Ok(table) => (table, None),
                Err(e) => (Table::empty(), Some(format!("{}: {e}; ignored", self.path.display()))),
            },
        }
    }

    /// Adds `entry` (replacing the one with its key), keeping every other entry the file holds
    /// when the lock is taken; a corrupt file is replaced. Returns what was wrong with the old
    /// file, if anything.
    pub fn insert(&self, entry: Entry) -> Result<Option<String>, Error> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| io_error("creating", dir, e))?;
        let _lock = Lock::take(&self.path.with_extension("lock"))?;
        let (mut table, report) = self.load();
        table.insert(entry);
        let temporary = self.path.with_extension(format!("{}.tmp", std::process::id()));
        let written = (|| {
            let mut file = fs::File::create(&temporary)?;
            file.write_all(table.sorted().to_json().as_bytes())?;
            file.sync_all()?;
            fs::rename(&temporary, &self.path)
        })();
        if let Err(e) = written {
            fs::remove_file(&temporary).ok();
            return Err(io_error("writing", &self.path, e));
        }
        Ok(report)
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Tuning(format!("{what} {}: {e}", path.display()))
}

/// The writers' lock: a file that exists while one process holds it (created with
/// `create_new`, which exactly one process wins), removed when dropped.
struct Lock {
    path: PathBuf,
}

impl Lock {
    fn take(path: &Path) -> Result<Lock, Error> {
        let started = Instant::now();
        loop {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut file) => {
                    // Who holds it, for a person looking at a stuck lock.
                    writeln!(file, "{}", std::process::id()).ok();
                    return Ok(Lock { path: path.to_path_buf() });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let age = fs::metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok());
                    if age.is_some_and(|a| a > STALE_LOCK) {
                        // Left by a process that died holding it. Should two processes both
                        // take it over, the rename still keeps the file whole (one entry may
                        // then be lost, never the file).
                        fs::remove_file(path).ok();
                        continue;
                    }
                    if started.elapsed() > LOCK_WAIT {
                        return Err(Error::Tuning(format!(
                            "{} is held by another process (waited {} s); remove it if no FlashCore process is tuning",
                            path.display(),
                            LOCK_WAIT.as_secs()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(5 + (std::process::id() % 7) as u64));
                }
                Err(e) => return Err(io_error("creating", path, e)),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        fs::remove_file(&self.path).ok();
    }
}
