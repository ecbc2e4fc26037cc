//! The cgroup checks, shared by this host's test (`tests/tests/cgroup.rs`, v1
//! or hybrid) and the pure cgroup v2 VM (`src/bin/berth-cgroup-guest.rs`).
//! Each creates a cgroup through `berth_runtime::cgroup`, puts a forked child
//! in it and looks at what the kernel then does; the oracle is the kernel's
//! own files and errno values, never the module's planning.
//!
//! Children are forked with `LinuxSys::spawn` and wait on a pipe until the
//! parent has added them, so everything they do happens inside the cgroup.
//! Their code runs in a copy of a multi-threaded process: it only makes plain
//! syscalls on paths built before the fork (no allocation).

use std::error::Error;
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub mod checks;

use berth_runtime::cgroup::{Cgroup, CgroupConfig, CgroupError, Limits};
use berth_runtime::sys::CArgs;
use berth_runtime::{ExitStatus, LinuxSys, Sys};
use nix::sched::CloneFlags;
use nix::unistd::Pid;
use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

/// Which files the limits land in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// v1 controllers (alone or beside a controller-less cgroup2: hybrid).
    V1,
    /// cgroup2 at /sys/fs/cgroup with the controllers.
    V2,
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

pub fn flavor() -> Flavor {
    // f_type's width differs per architecture.
    #[allow(clippy::unnecessary_cast)]
    match rustix::fs::statfs("/sys/fs/cgroup") {
        Ok(s) if s.f_type as i64 == CGROUP2_SUPER_MAGIC => Flavor::V2,
        _ => Flavor::V1,
    }
}

/// Why this machine cannot run the checks, if it cannot.
pub fn missing_prerequisite() -> Option<String> {
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    if !root {
        return Some("cgroup tests need root".to_owned());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if !mounts.contains(" - cgroup") {
        return Some("no cgroup filesystem is mounted".to_owned());
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("the memory check runs /bin/busybox (busybox-static)".to_owned());
    }
    None
}

/// A cgroup name unique to this process and check.
pub fn unique(tag: &str) -> String {
    format!("bt{}-{tag}", std::process::id())
}

/// The parent for test cgroups: berth's default (the caller's cgroup +
/// /berth), except on a v2 host where the caller is not at the root (a
/// cgroup with processes cannot hand controllers down).
pub fn test_parent() -> Option<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let at_root = own.lines().any(|l| l == "0::/");
    (flavor() == Flavor::V2 && !at_root).then(|| PathBuf::from("/berth-tests"))
}

pub fn config(tag: &str, limits: Limits, restrict_devices: bool) -> CgroupConfig {
    CgroupConfig {
        name: unique(tag),
        parent: test_parent(),
        limits,
        restrict_devices,
    }
}

/// `e` and its sources, joined with ": ".
pub fn chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Directories named `name` anywhere under /sys/fs/cgroup.
pub fn leftovers(name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name() == name {
                found.push(e.path());
            } else if depth < 8 {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    found
}

pub fn assert_gone(name: &str) {
    let left = leftovers(name);
    assert!(left.is_empty(), "cgroup {name} left behind: {left:?}");
}

/// A test's cgroup: removed (processes killed) when dropped, and checked gone.
pub struct Guard {
    cg: Option<Cgroup>,
    pub name: String,
}

impl Guard {
    pub fn create(cfg: &CgroupConfig) -> Guard {
        match Cgroup::create(cfg) {
            Ok(cg) => Guard {
                cg: Some(cg),
                name: cfg.name.clone(),
            },
            Err(e) => panic!("create cgroup {}: {}", cfg.name, chain(&e)),
        }
    }

    /// Guards a cgroup created by the caller.
    pub fn create_from(cg: Cgroup, name: &str) -> Guard {
        Guard {
            cg: Some(cg),
            name: name.to_owned(),
        }
    }

    pub fn cg(&self) -> &Cgroup {
        self.cg.as_ref().expect("cgroup already removed")
    }

    /// The one of the cgroup's directories that has `file`.
    pub fn dir_with(&self, file: &str) -> PathBuf {
        let paths = self.cg().paths();
        paths
            .iter()
            .find(|p| p.join(file).exists())
            .cloned()
            .unwrap_or_else(|| panic!("no {file} in {paths:?}"))
    }

    pub fn read(&self, file: &str) -> String {
        let p = self.dir_with(file).join(file);
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("read {p:?}: {e}"))
            .trim()
            .to_owned()
    }

    /// The checked removal: kill_and_remove must succeed and leave nothing.
    pub fn finish(mut self) {
        if let Some(cg) = self.cg.take() {
            if let Err(e) = cg.kill_and_remove() {
                panic!("kill_and_remove {}: {}", self.name, chain(&e));
            }
        }
        assert_gone(&self.name);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(cg) = self.cg.take() {
            if let Err(e) = cg.kill_and_remove() {
                eprintln!("cleanup of cgroup {}: {}", self.name, chain(&e));
            }
        }
        if !std::thread::panicking() {
            assert_gone(&self.name);
        }
    }
}

/// A forked child waiting for [`Held::go`]; killed and reaped if dropped.
pub struct Held {
    pid: Pid,
    go: Option<OwnedFd>,
    reaped: bool,
}

/// Forks a child that runs `child` (its return value is the exit code) once
/// released.
pub fn hold(child: &mut dyn FnMut() -> i32) -> Held {
    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
    let pid = {
        let mut body = || match LinuxSys.await_parent(rd.as_fd(), wr.as_fd()) {
            Ok(()) => child(),
            Err(_) => 125,
        };
        LinuxSys
            .spawn(CloneFlags::empty(), &mut body)
            .expect("fork a child")
    };
    Held {
        pid,
        go: Some(wr),
        reaped: false,
    }
}

impl Held {
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// Lets the child run (a child killed meanwhile needs no word).
    pub fn go(&mut self) {
        if let Some(w) = self.go.take() {
            match LinuxSys.release_child(w.as_fd()) {
                Ok(_) | Err(Errno::PIPE) => {}
                Err(e) => panic!("release the child: {e}"),
            }
        }
    }

    /// Lets the child run (if not yet) and waits for its end.
    pub fn wait(mut self) -> ExitStatus {
        self.go();
        self.reaped = true;
        LinuxSys.wait(self.pid).expect("wait for the child")
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.reaped {
            if let Some(p) = rustix::process::Pid::from_raw(self.pid.as_raw()) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
            let _ = LinuxSys.wait(self.pid);
        }
    }
}

/// Runs `child` in a process inside `cg` and returns how it ended.
pub fn run_in(cg: &Cgroup, child: &mut dyn FnMut() -> i32) -> ExitStatus {
    let h = hold(child);
    if let Err(e) = cg.add_process(h.pid()) {
        panic!("add {}: {}", h.pid(), chain(&e));
    }
    h.wait()
}

/// Child side: 0 if `path` opens (read-only), else the errno.
pub fn open_errno(path: &Path) -> i32 {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(_) => 0,
        Err(e) => e.raw_os_error(),
    }
}

/// Child side: forks children that sleep 30 s until a fork fails or `max`
/// succeeded; returns how many did.
pub fn fork_until_refused(max: i32) -> i32 {
    let mut n = 0;
    while n < max {
        let mut sleeper = || {
            std::thread::sleep(Duration::from_secs(30));
            0
        };
        if LinuxSys.spawn(CloneFlags::empty(), &mut sleeper).is_err() {
            break;
        }
        n += 1;
    }
    n
}

/// Makes device node `dir/name` (`block` or char) with `major:minor`.
pub fn node(dir: &Path, name: &str, block: bool, major: u32, minor: u32) -> PathBuf {
    let p = dir.join(name);
    let kind = if block {
        FileType::BlockDevice
    } else {
        FileType::CharacterDevice
    };
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &p,
        kind,
        Mode::from_raw_mode(0o600),
        rustix::fs::makedev(major, minor),
    )
    .unwrap_or_else(|e| panic!("mknod {p:?}: {e}"));
    p
}

/// A prepared exec of `/bin/busybox ARGS` with stderr to /dev/null, for a child.
pub struct Exec {
    path: CString,
    argv: CArgs,
    envp: CArgs,
    null: OwnedFd,
}

impl Exec {
    pub fn busybox(args: &[&str]) -> Exec {
        let mut argv = vec!["busybox"];
        argv.extend_from_slice(args);
        Exec {
            path: CString::new("/bin/busybox").expect("path"),
            argv: CArgs::new(argv).expect("argv"),
            envp: CArgs::new(["PATH=/bin:/usr/bin"]).expect("envp"),
            null: rustix::fs::open("/dev/null", OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())
                .expect("open /dev/null"),
        }
    }

    /// Child side: replaces the process; returns 127 if that failed.
    pub fn exec(&self) -> i32 {
        if LinuxSys.redirect(self.null.as_fd(), 2).is_err() {
            return 126;
        }
        let _ = LinuxSys.execve(&self.path, &self.argv, &self.envp);
        127
    }
}

/// Polls `f` every 10 ms for up to `limit`.
pub fn wait_until(limit: Duration, f: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// The `key N` value of a flat-keyed cgroup file (memory.events, oom_control).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Whether `e` is the module's "in use" refusal.
pub fn is_in_use(e: &CgroupError) -> bool {
    matches!(e, CgroupError::InUse { .. })
}
