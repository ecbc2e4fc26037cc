//! One benchmark run's working directory, `ROOT/bench/TAG` (TAG: pid and start
//! time), holding the throw-away pools' images and mounts and a private store
//! for their containers; and the cleanup of what a killed run left there.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_bdev::cmd::{self, HostRunner, Runner};
use berth_bdev::mount;
use berth_bdev::process::{own_tag, tag_alive};
use tracing::{info, warn};

use crate::error::{BenchError, Result};

/// Prefix of the zpools a run makes: `berth-bench-TAG`.
pub const ZPOOL_PREFIX: &str = "berth-bench-";

pub struct Session {
    /// The user's state root.
    pub root: PathBuf,
    /// `ROOT/bench/TAG`.
    pub dir: PathBuf,
    pub tag: String,
    /// The berth binary the measured commands run.
    pub berth: PathBuf,
}

impl Session {
    pub fn open(root: &Path, berth: &Path) -> Result<Session> {
        clean_stale(root);
        let tag = own_tag();
        let dir = root.join("bench").join(&tag);
        berth_bdev::fsutil::create_dir_all(&dir)?;
        Ok(Session {
            root: root.to_path_buf(),
            dir,
            tag,
            berth: berth.to_path_buf(),
        })
    }

    /// The private store of the throw-away pools.
    pub fn store(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// A container name unique to this run.
    pub fn name(&self, what: &str) -> String {
        format!("bench-{}-{what}", std::process::id())
    }

    /// Runs `berth --root ROOT ARGS…` and returns its wall time.
    pub fn berth(&self, root: &Path, args: &[&str]) -> Result<Duration> {
        let mut all: Vec<&OsStr> = vec![OsStr::new("--root"), root.as_os_str()];
        all.extend(args.iter().map(OsStr::new));
        Ok(berth_core::ops::lifecycle::bench::timed(
            self.berth.as_os_str(),
            &all,
        )?)
    }

    /// Like [`Session::berth`], returning stdout too.
    pub fn berth_output(&self, root: &Path, args: &[&str]) -> Result<String> {
        let mut all: Vec<&OsStr> = vec![OsStr::new("--root"), root.as_os_str()];
        all.extend(args.iter().map(OsStr::new));
        let out = HostRunner.run(&self.berth.to_string_lossy(), &all)?;
        Ok(out.stdout)
    }

    /// Removes the working directory (after every pool is gone).
    pub fn close(self) -> Result<()> {
        remove_dir(&self.dir)
    }
}

/// Runs a program and returns its wall time.
pub fn timed(prog: &str, args: &[&OsStr]) -> Result<Duration> {
    Ok(berth_core::ops::lifecycle::bench::timed(
        OsStr::new(prog),
        args,
    )?)
}

/// Runs a sequence of commands, each `[prog, args…]`, and returns their summed wall time.
pub fn timed_all(cmds: &[Vec<String>]) -> Result<Duration> {
    let mut total = Duration::ZERO;
    for c in cmds {
        let Some((prog, args)) = c.split_first() else {
            continue;
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let t = Instant::now();
        cmd::run(&HostRunner, prog, &args)?;
        total += t.elapsed();
    }
    Ok(total)
}

/// Flushes dirty data so that writeback of one step does not land in the next;
/// with `cold`, drops the page cache too.
pub fn settle(cold: bool) -> Result<()> {
    rustix::fs::sync();
    if cold {
        let p = Path::new("/proc/sys/vm/drop_caches");
        std::fs::write(p, b"3").map_err(BenchError::io("write", p))?;
    }
    Ok(())
}

fn remove_dir(dir: &Path) -> Result<()> {
    let left = mount::mounts_under(dir);
    if !left.is_empty() {
        return Err(BenchError::Invalid(format!(
            "{} still has mounts ({}); not removing it",
            dir.display(),
            left.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(BenchError::io("remove", dir)(e)),
    }
}

/// Undoes what benchmark runs that died (SIGKILL, power loss) left: their
/// private store's helper daemons, zpools, mounts and files. Called when a
/// run starts; best effort, each failure logged.
pub fn clean_stale(root: &Path) {
    let base = root.join("bench");
    let Ok(entries) = std::fs::read_dir(&base) else {
        return;
    };
    for e in entries.flatten() {
        let tag = e.file_name().to_string_lossy().into_owned();
        if tag_alive(&tag) {
            continue;
        }
        let dir = e.path();
        info!(dir = %dir.display(), "cleaning up after a benchmark run that died");
        // Its store first: the next command there stops what its containers left.
        if dir.join("store").is_dir() {
            if let Ok(b) = berth_core::Berth::open(&dir.join("store"), true) {
                for c in b.store().containers().unwrap_or_default() {
                    let _ = b.umount(&c.name);
                }
            }
        }
        kill_daemons_under(&dir);
        destroy_zpool(&format!("{ZPOOL_PREFIX}{tag}"));
        stop_own_zfs_fuse(&dir);
        for m in mount::mounts_under(&dir).iter().rev() {
            if mount::unmount(m).is_err() {
                let _ = mount::unmount_detach(m);
            }
        }
        if let Err(e) = remove_dir(&dir) {
            warn!(error = %e, "could not remove a dead benchmark run's directory");
        }
    }
}

/// Destroys zpool `name` if it exists (zfs-fuse may answer "busy" for a moment).
pub fn destroy_zpool(name: &str) {
    if !cmd::have_program("zpool") {
        return;
    }
    let listed = cmd::run(&HostRunner, "zpool", &["list", "-H", "-o", "name"])
        .map(|o| o.stdout.lines().any(|l| l.trim() == name))
        .unwrap_or(false);
    if !listed {
        return;
    }
    for _ in 0..20 {
        if cmd::run(&HostRunner, "zpool", &["destroy", "-f", name]).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    if let Err(e) = cmd::run(&HostRunner, "zpool", &["export", "-f", name]) {
        warn!(zpool = name, error = %e, "could not destroy or export a benchmark zpool");
    }
}

/// The zfs-fuse daemon a run started is recorded by its pidfile in the run's
/// directory; it is stopped once no zpool is left on it.
pub fn stop_own_zfs_fuse(dir: &Path) {
    let pidfile = dir.join("zfs-fuse.pid");
    let Some(p) = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .and_then(berth_bdev::process::Process::of)
    else {
        return;
    };
    let pools = cmd::run(&HostRunner, "zpool", &["list", "-H", "-o", "name"])
        .map(|o| o.stdout.trim().to_owned())
        .unwrap_or_default();
    if !pools.is_empty() {
        warn!(pools = %pools, "zfs-fuse carries other zpools; leaving it running");
        return;
    }
    if let Err(e) = p.stop(Duration::from_secs(20)) {
        warn!(pid = p.pid, error = %e, "could not stop zfs-fuse");
    }
    let _ = std::fs::remove_file(&pidfile);
}

/// Kills helper daemons (qemu-storage-daemon, unionfs) whose command line
/// names a path under `dir`.
fn kill_daemons_under(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    for pid in berth_bdev::process::pids() {
        let Some(line) = berth_bdev::process::cmdline(pid) else {
            continue;
        };
        let line = String::from_utf8_lossy(&line).replace('\0', " ");
        if line.contains(&needle) && pid != std::process::id() as i32 {
            if let Some(p) = berth_bdev::process::Process::of(pid) {
                let _ = p.stop(Duration::from_secs(5));
            }
        }
    }
}
