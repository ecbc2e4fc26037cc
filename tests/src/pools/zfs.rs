//! A zfs pool on a file-backed zpool, served by zfs-fuse.
//!
//! Only one zfs-fuse daemon can run per machine (one global socket) and it is
//! fragile, so zfs tests never overlap: a process-wide mutex serialises the tests of
//! one binary and an flock on `/run/berth-test-zfs.lock` serialises the binaries
//! (`conformance_zfs`, `zfs`). The daemon is started only when none answers, and
//! only a daemon started here is stopped again, by the pid in its own pidfile.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use berth_bdev::cmd::{self, have_program, HostRunner};
use berth_bdev::process::{wait_until, Process, Stopped};
use berth_bdev::PoolConfig;

use crate::harness::Setup;

static SERIAL: Mutex<()> = Mutex::new(());
const LOCK_FILE: &str = "/run/berth-test-zfs.lock";
const POOL_SIZE: u64 = 1 << 30;

/// Holds the zfs tests' turn: the in-process mutex and the cross-process flock.
pub struct Serial {
    // Field order is drop order: the flock goes first, then the mutex.
    _file: File,
    _guard: MutexGuard<'static, ()>,
}

impl Serial {
    pub fn acquire() -> Result<Serial, String> {
        let guard = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let file = File::create(LOCK_FILE).map_err(|e| format!("open {LOCK_FILE}: {e}"))?;
        // File::lock (Rust 1.89) is flock(2): the kernel drops it if the binary dies.
        file.lock().map_err(|e| format!("flock {LOCK_FILE}: {e}"))?;
        Ok(Serial {
            _file: file,
            _guard: guard,
        })
    }
}

fn zpool(args: &[&str]) -> Result<String, String> {
    cmd::run(&HostRunner, "zpool", args)
        .map(|o| o.stdout)
        .map_err(|e| e.to_string())
}

fn daemon_answers() -> bool {
    zpool(&["list", "-H"]).is_ok()
}

/// A zfs-fuse daemon this fixture started.
pub struct Daemon {
    pub process: Process,
}

impl Daemon {
    fn start(tmp: &Path) -> Result<Daemon, String> {
        // A fresh pidfile: zfs-fuse refuses to start over a stale one.
        let pidfile = tmp.join("zfs-fuse.pid");
        let pf = pidfile.to_string_lossy().into_owned();
        // -x: xattrs (file capabilities) are off in zfs-fuse by default.
        cmd::run(
            &HostRunner,
            "zfs-fuse",
            &["-x", "--no-kstat-mount", "--pidfile", &pf],
        )
        .map_err(|e| format!("start zfs-fuse: {e}"))?;
        let read_pid = || {
            std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .and_then(Process::of)
        };
        if !wait_until(Duration::from_secs(10), || read_pid().is_some()) {
            return Err("zfs-fuse wrote no pidfile".to_owned());
        }
        let daemon = Daemon {
            process: read_pid().ok_or("zfs-fuse exited right after starting")?,
        };
        if !wait_until(Duration::from_secs(15), daemon_answers) {
            return Err("zfs-fuse started but `zpool list` does not answer".to_owned());
        }
        Ok(daemon)
    }

    fn stop(&self) -> Result<(), String> {
        // zfs-fuse takes a few seconds to shut down.
        match self.process.stop(Duration::from_secs(20)) {
            Ok(Stopped::Terminated) => Ok(()),
            Ok(Stopped::Killed) => Err(format!("zfs-fuse {} needed SIGKILL", self.process.pid)),
            Err(e) => Err(format!("zfs-fuse: {e}")),
        }
    }
}

/// A file-backed zpool, destroyed on drop, and the daemon if this fixture started it.
pub struct ZfsPool {
    pub zpool: String,
    /// The test's temp dir.
    pub dir: PathBuf,
    pub image: PathBuf,
    pub daemon: Option<Daemon>,
    created: bool,
}

impl ZfsPool {
    fn destroy(&mut self) -> Result<(), String> {
        if !std::mem::take(&mut self.created) {
            return Ok(());
        }
        let mut last = String::new();
        for _ in 0..20 {
            match zpool(&["destroy", &self.zpool]) {
                Ok(_) => return Ok(()),
                Err(e) if e.contains("busy") => {
                    last = e;
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => {
                    last = e;
                    break;
                }
            }
        }
        zpool(&["export", "-f", &self.zpool])
            .map(|_| ())
            .map_err(|e| format!("zpool destroy: {last}; zpool export -f: {e}"))
    }
}

impl Drop for ZfsPool {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed test may have left binds of datasets in its temp dir.
            for m in berth_bdev::mount::mounts() {
                if m.mount_point.starts_with(&self.dir) && m.fstype.contains("zfs") {
                    let _ = berth_bdev::mount::unmount_detach(&m.mount_point);
                }
            }
        }
        let mut problems = Vec::new();
        if let Err(e) = self.destroy() {
            problems.push(e);
        }
        let _ = std::fs::remove_file(&self.image);
        if let Some(d) = self.daemon.take() {
            if let Err(e) = d.stop() {
                problems.push(e);
            }
        }
        if !problems.is_empty() && !std::thread::panicking() {
            panic!("zfs pool teardown: {problems:?}");
        }
    }
}

/// A zfs pool: zpool `btest-PID-N` on a 1 GiB sparse file under `tmp`, parent
/// dataset `btest-PID-N/berth`, mountpoints under `tmp/pool`.
pub fn setup(tmp: &Path) -> Result<Setup, String> {
    setup_sized(tmp, POOL_SIZE)
}

/// Like [`setup`], on a zpool file of `size` bytes (zfs takes 64 MiB at least):
/// small ones fill up quickly, for tests of a full pool.
pub fn setup_sized(tmp: &Path, size: u64) -> Result<Setup, String> {
    for prog in ["zfs-fuse", "zfs", "zpool"] {
        if !have_program(prog) {
            return Err(format!(
                "{prog} is not installed (apt-get install -y zfs-fuse)"
            ));
        }
    }
    let serial = Serial::acquire()?;
    let daemon = if daemon_answers() {
        None
    } else {
        Some(Daemon::start(tmp)?)
    };
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "btest-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut pool = ZfsPool {
        zpool: name.clone(),
        dir: tmp.to_path_buf(),
        image: tmp.join("zpool.img"),
        daemon,
        created: false,
    };
    let f = File::create(&pool.image).map_err(|e| format!("create zpool image: {e}"))?;
    f.set_len(size)
        .map_err(|e| format!("size zpool image: {e}"))?;
    drop(f);
    let img = pool.image.to_string_lossy().into_owned();
    zpool(&["create", "-o", "cachefile=none", "-m", "none", &name, &img])?;
    pool.created = true;
    Ok(Setup {
        pool: PoolConfig::new("ztest", "zfs")
            .with_option("dataset", &format!("{name}/berth"))
            .with_path(tmp.join("pool")),
        // Dropped last-first: the pool (and daemon) before the lock.
        keep: vec![Box::new(serial), Box::new(pool)],
    })
}
