//! A qcow2 pool on a btrfs scratch filesystem (reflinks make snapshots cheap), with
//! a check that no qemu-storage-daemon of the test outlives it.

use std::path::{Path, PathBuf};

use berth_bdev::cmd::{self, HostRunner};
use berth_bdev::PoolConfig;

use crate::harness::{wait_for, ScratchFs, Setup};

/// qemu-storage-daemons whose command line mentions `dir`: (pid, command line).
pub fn daemons_under(dir: &Path) -> Vec<(u32, String)> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let needle = dir.to_string_lossy().into_owned();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let line = String::from_utf8_lossy(&raw).replace('\0', " ");
        let zombie = std::fs::read_to_string(e.path().join("stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        });
        if !zombie && line.starts_with("qemu-storage-daemon") && line.contains(&needle) {
            out.push((pid, line.trim_end().to_owned()));
        }
    }
    out
}

/// Fails the test if a qemu-storage-daemon of it is still running when the pool
/// goes, after killing it so that the scratch filesystem can still be unmounted.
pub struct NoDaemonsLeft {
    pub dir: PathBuf,
}

impl Drop for NoDaemonsLeft {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed test may have left volumes mounted; the scratch btrfs stays.
            for m in berth_bdev::mount::mounts() {
                if m.mount_point.starts_with(&self.dir) && m.fstype != "btrfs" {
                    let _ = berth_bdev::mount::unmount_detach(&m.mount_point);
                }
            }
        }
        // A daemon stopped a moment ago may still be exiting.
        if wait_for(|| daemons_under(&self.dir).is_empty()) {
            return;
        }
        let left = daemons_under(&self.dir);
        for (pid, _) in &left {
            let _ = cmd::run(&HostRunner, "kill", &["-KILL", &pid.to_string()]);
        }
        wait_for(|| daemons_under(&self.dir).is_empty());
        for m in berth_bdev::mount::mounts_under(&self.dir) {
            let _ = berth_bdev::mount::unmount_detach(&m);
        }
        if !std::thread::panicking() {
            panic!("qemu-storage-daemons left running: {left:#?}");
        }
    }
}

/// A qcow2 pool in `tmp/btrfs-mnt/pool`.
pub fn setup(tmp: &Path) -> Result<Setup, String> {
    let scratch = ScratchFs::new(tmp, "btrfs", 4 << 30)?;
    let pool = PoolConfig::new("qtest", "qcow2").with_path(scratch.mnt.join("pool"));
    Ok(Setup {
        pool,
        // Dropped last-first: the daemon check before the scratch filesystem.
        keep: vec![
            Box::new(scratch),
            Box::new(NoDaemonsLeft {
                dir: tmp.to_path_buf(),
            }),
        ],
    })
}
