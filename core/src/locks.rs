//! Locks that fit the work. The store lock (`ROOT/lock`) guards metadata and is
//! held only while records are read and committed; long work (copies,
//! restores, flattening, populating) holds per-container locks
//! (`ROOT/locks/NAME.lock`: exclusive for what an operation changes, shared
//! for what it reads), so unrelated commands go on and read-only commands
//! never wait. A command that has to wait says so after a second; with
//! `--no-wait` it fails at once.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;
use tracing::warn;

use crate::error::{BerthError, Result};
use crate::journal;

static NO_WAIT: AtomicBool = AtomicBool::new(false);
/// How long a command waits quietly before it says what it waits for.
const QUIET: Duration = Duration::from_secs(1);

/// `--no-wait`: a lock that is taken fails at once instead of waiting.
pub fn set_no_wait(on: bool) {
    NO_WAIT.store(on, Ordering::Relaxed);
}

/// Shared (readers) or exclusive (writers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

impl Mode {
    fn op(self, block: bool) -> FlockOperation {
        match (self, block) {
            (Mode::Shared, true) => FlockOperation::LockShared,
            (Mode::Shared, false) => FlockOperation::NonBlockingLockShared,
            (Mode::Exclusive, true) => FlockOperation::LockExclusive,
            (Mode::Exclusive, false) => FlockOperation::NonBlockingLockExclusive,
        }
    }
}

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(BerthError::io("open", path))
}

fn lock_error(path: &Path, e: Errno) -> BerthError {
    BerthError::Lock {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// Takes `mode` on `file` (at `path`): at once if free, else after saying
/// what it waits for (`what` names the holder), or fails with `--no-wait`.
pub fn acquire(file: &File, path: &Path, mode: Mode, what: &dyn Fn() -> String) -> Result<()> {
    acquire_as(file, path, mode, what, NO_WAIT.load(Ordering::Relaxed))
}

/// Like [`acquire`], but waits even under `--no-wait`: for taking the store
/// lock back to commit work already done, which must not be thrown away (or,
/// for a destroy, be reported as busy when it has happened).
pub fn reacquire(file: &File, path: &Path, mode: Mode, what: &dyn Fn() -> String) -> Result<()> {
    acquire_as(file, path, mode, what, false)
}

fn acquire_as(
    file: &File,
    path: &Path,
    mode: Mode,
    what: &dyn Fn() -> String,
    no_wait: bool,
) -> Result<()> {
    let started = Instant::now();
    loop {
        match flock(file, mode.op(false)) {
            Ok(()) => return Ok(()),
            Err(Errno::WOULDBLOCK) => {}
            Err(Errno::INTR) => continue,
            Err(e) => return Err(lock_error(path, e)),
        }
        if no_wait {
            return Err(BerthError::Locked {
                what: what(),
                hint: "try again when it is done, or leave out --no-wait to wait for it",
            });
        }
        if started.elapsed() >= QUIET {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    warn!("waiting for {}…", what());
    loop {
        match flock(file, mode.op(true)) {
            Ok(()) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(lock_error(path, e)),
        }
    }
}

/// Drops a lock taken with [`acquire`].
pub fn release(file: &File) {
    let _ = flock(file, FlockOperation::Unlock);
}

/// A held lock on one container; released on drop.
#[derive(Debug)]
pub struct ContainerLock {
    file: File,
    pub name: String,
    pub mode: Mode,
}

impl Drop for ContainerLock {
    fn drop(&mut self) {
        release(&self.file);
    }
}

fn container_lock_path(root: &Path, name: &str) -> std::path::PathBuf {
    root.join("locks").join(format!("{name}.lock"))
}

/// What holds container `name`, from the journal: "clone of c2 (pid 1234)".
pub fn holder(root: &Path, name: &str) -> String {
    let busy = journal::entries(root).ok().and_then(|all| {
        all.into_iter().find_map(|(_, i)| {
            i.ok().filter(|i| {
                i.container == name
                    || i.creates.iter().any(|p| p.name == name)
                    || i.reads.iter().any(|r| r == name)
            })
        })
    });
    match busy {
        Some(i) => format!("{} of {} (pid {})", i.op, i.container, i.pid),
        None => format!("another berth command using container {name:?}"),
    }
}

/// Tries `mode` on container `name` without waiting: `None` if it is taken.
pub fn try_container(root: &Path, name: &str, mode: Mode) -> Result<Option<ContainerLock>> {
    let path = container_lock_path(root, name);
    let file = open(&path)?;
    loop {
        match flock(&file, mode.op(false)) {
            Ok(()) => {
                return Ok(Some(ContainerLock {
                    file,
                    name: name.to_owned(),
                    mode,
                }))
            }
            Err(Errno::WOULDBLOCK) => return Ok(None),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(lock_error(&path, e)),
        }
    }
}

/// Waits for `mode` on container `name` (saying so after a second), then
/// lets it go again: used with the store lock dropped, before retrying.
pub fn wait_for_container(root: &Path, name: &str, mode: Mode) -> Result<()> {
    let path = container_lock_path(root, name);
    let file = open(&path)?;
    acquire(&file, &path, mode, &|| holder(root, name))?;
    release(&file);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_locks_coexist_and_exclusive_ones_do_not() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("locks")).unwrap();
        let a = try_container(d.path(), "c1", Mode::Shared).unwrap();
        let b = try_container(d.path(), "c1", Mode::Shared).unwrap();
        assert!(a.is_some() && b.is_some());
        assert!(try_container(d.path(), "c1", Mode::Exclusive)
            .unwrap()
            .is_none());
        drop((a, b));
        let x = try_container(d.path(), "c1", Mode::Exclusive).unwrap();
        assert!(x.is_some());
        assert!(try_container(d.path(), "c1", Mode::Shared)
            .unwrap()
            .is_none());
        assert!(try_container(d.path(), "c2", Mode::Exclusive)
            .unwrap()
            .is_some());
    }

    #[test]
    fn no_wait_fails_at_once_naming_the_holder() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("locks")).unwrap();
        let _held = try_container(d.path(), "c1", Mode::Exclusive).unwrap();
        set_no_wait(true);
        let started = Instant::now();
        let e = wait_for_container(d.path(), "c1", Mode::Shared).unwrap_err();
        set_no_wait(false);
        assert!(started.elapsed() < QUIET);
        assert!(e.to_string().contains("container \"c1\""), "{e}");
    }

    #[test]
    fn taking_the_store_back_waits_even_under_no_wait() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("lock");
        let (held, mine) = (open(&path).unwrap(), open(&path).unwrap());
        flock(&held, FlockOperation::LockExclusive).unwrap();
        let what = || "the holder".to_owned();
        let e = acquire_as(&mine, &path, Mode::Exclusive, &what, true).unwrap_err();
        assert!(e.to_string().contains("busy: the holder"), "{e}");
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            release(&held);
        });
        reacquire(&mine, &path, Mode::Exclusive, &what).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn the_holder_of_a_clone_source_is_the_clone() {
        let d = tempfile::tempdir().unwrap();
        let mut i = journal::Intent::new("clone", "c2", journal::Commit::RecordExists);
        i.reads.push("c1".to_owned());
        journal::record(d.path(), &i).unwrap();
        assert!(holder(d.path(), "c1").starts_with("clone of c2 (pid "));
        assert!(holder(d.path(), "c2").starts_with("clone of c2 (pid "));
        assert!(holder(d.path(), "c3").contains("container \"c3\""));
    }
}
