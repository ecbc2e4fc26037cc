//! The qemu-storage-daemon FUSE export a qcow2 image is used through (this kernel
//! has no nbd), and its runtime state in `POOL/.run/KEY/`:
//!
//! - `qsd.pid`: the daemon's pidfile (`--pidfile`; the daemon removes it on a clean
//!   exit, a SIGKILL leaves it);
//! - `export.raw`: the FUSE export, the image's raw contents as one file, which a
//!   loop device then turns into a block device;
//! - `mode`: `rw` or `ro`.
//!
//! The place is derived from the image path only, so `unmount` of a persisted mount
//! and `cleanup_stale` after a crash find everything again. The `.run` directory
//! itself goes with its last entry.
//!
//! A daemon is in use exactly while its export is: while a loop device is
//! attached to the export file or a mount uses it. Every mount goes through a
//! loop device, so a daemon whose export nothing uses serves nobody (a crash
//! between starting it and attaching the loop device, or during `mkfs`), and
//! `cleanup_stale`, which runs when no berth operation is under way, stops it.

use std::ffi::OsStr;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_bdev::cmd::Runner;
use berth_bdev::process::{self, wait_until, Process, Stopped};
use berth_bdev::{loopdev, mount, BdevError, Result};
use serde_json::json;
use tracing::{debug, warn};

use super::parse;

pub(super) const PIDFILE: &str = "qsd.pid";
pub(super) const EXPORT: &str = "export.raw";
pub(super) const MODE: &str = "mode";

/// A running export. Dropping it stops the daemon (best effort); `stop` is the
/// checked path.
#[derive(Debug)]
pub(super) struct Export {
    run: PathBuf,
    done: bool,
}

impl Export {
    /// Exports `image` as `run/export.raw` through a new qemu-storage-daemon.
    pub(super) fn start(
        runner: &dyn Runner,
        run: &Path,
        image: &Path,
        read_only: bool,
    ) -> Result<Export> {
        make_run_dir(run)?;
        let run = fs::canonicalize(run).map_err(BdevError::io("resolve", run))?;
        if let Some(pid) = live_daemon(&run) {
            // Unless all that used it was left by a berth that is gone.
            if !(unmount_dead_grows(&run)? && clean_if_stale(&run)?) {
                return Err(BdevError::Exists {
                    what: "mount of qcow2 image",
                    name: format!("{} (qemu-storage-daemon pid {pid})", image.display()),
                });
            }
        }
        // Whatever a dead daemon left here goes first.
        clean_dead(&run)?;
        make_run_dir(&run)?;
        let export = run.join(EXPORT);
        let mode = if read_only { "ro" } else { "rw" };
        fs::write(run.join(MODE), mode).map_err(BdevError::io("write", run.join(MODE)))?;
        fs::File::create(&export).map_err(BdevError::io("create", &export))?;
        let ex = Export { run, done: false };

        let (image_s, export_s) = (image.to_string_lossy(), export.to_string_lossy());
        let file = json!({"driver": "file", "node-name": "file", "filename": image_s,
                          "read-only": read_only});
        // discard=unmap lets the filesystem's discards shrink the image again.
        let disk = json!({"driver": "qcow2", "node-name": "disk", "file": "file",
                          "read-only": read_only, "discard": "unmap"});
        let exp = json!({"type": "fuse", "id": "export", "node-name": "disk",
                         "mountpoint": export_s, "writable": !read_only});
        let pidfile = ex.run.join(PIDFILE);
        let (file, disk, exp) = (file.to_string(), disk.to_string(), exp.to_string());
        let args: [&OsStr; 9] = [
            OsStr::new("--blockdev"),
            OsStr::new(&file),
            OsStr::new("--blockdev"),
            OsStr::new(&disk),
            OsStr::new("--export"),
            OsStr::new(&exp),
            OsStr::new("--pidfile"),
            pidfile.as_os_str(),
            OsStr::new("--daemonize"),
        ];
        // --daemonize returns once the export is ready.
        runner.run("qemu-storage-daemon", &args)?;
        debug!(image = %image.display(), export = %ex.file().display(), read_only, "qcow2 exported");
        Ok(ex)
    }

    /// The exported raw file.
    pub(super) fn file(&self) -> PathBuf {
        self.run.join(EXPORT)
    }

    pub(super) fn stop(mut self) -> Result<()> {
        self.done = true;
        teardown(&self.run)
    }

    /// Hands the export over to whoever tears `run` down later (a `MountGuard`
    /// step, or `unmount` after the guard was persisted); dropping the returned
    /// path does nothing.
    pub(super) fn into_run_dir(mut self) -> PathBuf {
        self.done = true;
        std::mem::take(&mut self.run)
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = teardown(&self.run) {
                warn!(run = %self.run.display(), error = %e, "stopping the qcow2 export failed");
            }
        }
    }
}

fn read_pid(run: &Path) -> Option<i32> {
    fs::read_to_string(run.join(PIDFILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is still our daemon (not exited, not a reused pid: its command
/// line names our pidfile).
fn alive(pid: i32, pidfile: &Path) -> bool {
    Process::of(pid).is_some()
        && process::cmdline(pid).is_some_and(|c| parse::is_our_daemon(&c, pidfile))
}

/// The pid of the live daemon that owns `run`, if any.
pub(super) fn live_daemon(run: &Path) -> Option<i32> {
    let pid = read_pid(run)?;
    alive(pid, &run.join(PIDFILE)).then_some(pid)
}

/// Whether the daemon owning `run` exports read-write.
pub(super) fn is_writable(run: &Path) -> bool {
    fs::read_to_string(run.join(MODE)).is_ok_and(|m| m.trim() == "rw")
}

/// Creates `run` and its `.run` parent. Another berth may remove an empty
/// `.run` between the two steps (see `teardown`); then it is made again.
fn make_run_dir(run: &Path) -> Result<()> {
    let mut tries = 0;
    loop {
        match fs::create_dir_all(run) {
            Err(e) if e.kind() == ErrorKind::NotFound && tries < 3 => tries += 1,
            r => return r.map_err(BdevError::io("create directory", run)),
        }
    }
}

/// Whether the export of `run` is in use: a loop device is attached to the
/// export file, or a mount names it as its source.
pub(super) fn in_use(run: &Path) -> bool {
    let export = run.join(EXPORT);
    !loops_on(&export).is_empty()
        || mount::mounts()
            .iter()
            .any(|m| Path::new(&m.source) == export)
}

/// Loop devices whose backing file is `file` (compared as written in sysfs, which
/// works even when the FUSE file behind them is dead).
fn loops_on(file: &Path) -> Vec<PathBuf> {
    loopdev::attached()
        .into_iter()
        .filter(|(_, b)| b == file)
        .map(|(d, _)| d)
        .collect()
}

fn stop_daemon(pid: i32, pidfile: &Path) -> Result<()> {
    let Some(p) = Process::of(pid) else {
        return Ok(());
    };
    let failed = |source| BdevError::Io {
        op: "stop qemu-storage-daemon",
        path: pidfile.to_path_buf(),
        source,
    };
    // SIGTERM: the daemon flushes the image and removes its FUSE export.
    match p.stop(Duration::from_secs(10)) {
        Ok(Stopped::Terminated) => Ok(()),
        Ok(Stopped::Killed) => Err(failed(std::io::Error::other(format!(
            "pid {pid} ignored SIGTERM and was killed; the image may not be flushed"
        )))),
        Err(e) => Err(failed(e)),
    }
}

fn remove_file(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(BdevError::io("remove", p)(e)),
        _ => Ok(()),
    }
}

/// Stops what `run` holds, in order: waits for the loop device over the export to
/// go (it autoclears once the filesystem above it is unmounted), stops the daemon,
/// unmounts the export file (a killed daemon leaves it mounted), removes the state.
pub(super) fn teardown(run: &Path) -> Result<()> {
    if !run.exists() {
        return Ok(());
    }
    let export = run.join(EXPORT);
    if !wait_until(Duration::from_secs(3), || loops_on(&export).is_empty()) {
        warn!(export = %export.display(), "a loop device still uses the export");
    }
    if let Some(pid) = read_pid(run) {
        if alive(pid, &run.join(PIDFILE)) {
            stop_daemon(pid, &run.join(PIDFILE))?;
        }
    }
    if let Err(e) = mount::unmount(&export) {
        warn!(export = %export.display(), error = %e, "detaching the export lazily");
        mount::unmount_detach(&export)?;
    }
    for f in [PIDFILE, EXPORT, MODE] {
        remove_file(&run.join(f))?;
    }
    match fs::remove_dir(run) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(BdevError::io("remove", run)(e)),
        _ => {}
    }
    if let Some(parent) = run.parent() {
        remove_run_root_if_empty(parent);
    }
    Ok(())
}

/// Removes the pool's `.run` directory once nothing is in it.
pub(super) fn remove_run_root_if_empty(dir: &Path) {
    if dir.file_name() == Some(OsStr::new(".run")) {
        // Fails while anything is in it, which is the point.
        let _ = fs::remove_dir(dir);
    }
}

/// Cleans one entry of `POOL/.run` unless a live daemon's export is in use: a
/// live daemon nothing uses is stopped, and a dead one's leftovers (its export
/// mount, loop devices, filesystems on them) are removed. Returns whether it
/// was stale.
pub(super) fn clean_if_stale(entry: &Path) -> Result<bool> {
    let run = fs::canonicalize(entry).map_err(BdevError::io("resolve", entry))?;
    let live = live_daemon(&run);
    if live.is_some() {
        unmount_dead_grows(&run)?;
    }
    if live.is_some() && in_use(&run) {
        return Ok(false);
    }
    if let Some(pid) = live {
        warn!(pid, run = %run.display(), "stopping a qemu-storage-daemon whose export nothing uses");
    }
    // With a live daemon no loop device uses the export, so this is its teardown.
    clean_dead(&run)?;
    Ok(true)
}

/// What a grow mount point's name has between the volume and its owner's
/// tag: `POOL/.run/NAME:grow.PID-STARTTIME`.
pub(super) const GROW_MARK: &str = ":grow";

/// Whether `entry` of `POOL/.run` is a grow mount point whose berth is gone
/// (one named without an owner is from an older berth, gone too).
pub(super) fn is_dead_grow(entry: &Path) -> bool {
    let Some(name) = entry.file_name().and_then(OsStr::to_str) else {
        return false;
    };
    match name.split_once(GROW_MARK) {
        Some((_, rest)) => rest
            .strip_prefix('.')
            .is_none_or(|tag| !process::tag_alive(tag)),
        None => false,
    }
}

/// Unmounts the filesystems that the grows of berths that are gone left
/// mounted from loop devices over `run`'s export (the loop devices go with
/// them), and their mount points. Returns whether there were any.
pub(super) fn unmount_dead_grows(run: &Path) -> Result<bool> {
    let mut found = false;
    for dev in loops_on(&run.join(EXPORT)) {
        let dev = dev.to_string_lossy().into_owned();
        let dead: Vec<PathBuf> = mount::mounts()
            .into_iter()
            .filter(|m| m.source == dev && is_dead_grow(&m.mount_point))
            .map(|m| m.mount_point)
            .collect();
        for at in dead {
            found = true;
            warn!(mount = %at.display(), "unmounting the grow mount of a berth that is gone");
            if mount::unmount(&at).is_err() {
                mount::unmount_detach(&at)?;
            }
            let _ = fs::remove_dir(&at);
        }
    }
    if found {
        // Autoclear: the devices go once nothing holds them.
        wait_until(Duration::from_secs(2), || {
            loops_on(&run.join(EXPORT)).is_empty()
        });
    }
    Ok(found)
}

/// Removes what a dead daemon left in `run`, including filesystems still mounted
/// from a loop device over its dead export, wherever they are.
fn clean_dead(run: &Path) -> Result<()> {
    for dev in loops_on(&run.join(EXPORT)) {
        let dev = dev.to_string_lossy().into_owned();
        for m in mount::mounts().into_iter().filter(|m| m.source == dev) {
            warn!(mount = %m.mount_point.display(), "unmounting a qcow2 mount whose daemon died");
            if mount::unmount(&m.mount_point).is_err() {
                mount::unmount_detach(&m.mount_point)?;
            }
        }
    }
    teardown(run)
}
