//! Driving the `berth` binary from the privileged tests: where the binary is,
//! a store of its own per test, installing `berth-probe` into a container,
//! reading the probe's report, and what a finished run must not leave behind
//! (mounts, cgroups, processes).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use berth_bdev::cmd::{self, CmdError, ExitStatus, HostRunner, Runner};
use berth_bdev::mount;
use rustix::fs::{makedev, mknodat, FileType, Mode, CWD};

use crate::harness::wait_for;

/// The `berth` binary: `BERTH_BIN`, else `target/<profile>/berth` beside this
/// test executable's `deps/` (another package's binary, so Cargo does not hand
/// its path to this crate's tests).
pub fn berth_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTH_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let profile_dir = exe.parent().and_then(Path::parent);
    let bin = profile_dir.map(|d| d.join("berth"));
    match bin {
        Some(b) if b.is_file() => b,
        _ => panic!(
            "no berth binary at {bin:?}: build it with cargo build -p berth-cli \
             (cargo test --workspace does), or point BERTH_BIN at one"
        ),
    }
}

/// A container name no concurrent test (here or in another test process)
/// uses: berth's cgroups are named `<caller's cgroup>/berth/<NAME>`, shared by
/// every store.
pub fn unique_name(tag: &str) -> String {
    format!("{tag}-{}", std::process::id())
}

/// How a berth command failed: its exit code, or the signal that killed it.
#[derive(Debug)]
pub struct Failed {
    pub status: ExitStatus,
    pub stderr: String,
}

impl Failed {
    /// The exit code, `None` if berth died of a signal.
    pub fn code(&self) -> Option<i32> {
        match self.status {
            ExitStatus::Code(c) => Some(c),
            ExitStatus::Signal(_) => None,
        }
    }

    /// Whether berth died of SIGKILL (itself, or through `timeout`, which
    /// dies with it and reports 137).
    pub fn killed(&self) -> bool {
        self.status == ExitStatus::Signal(libc::SIGKILL) || self.code() == Some(137)
    }
}

/// A berth state directory (`--root`) in /var/tmp. Dropping it unmounts what
/// is still mounted under it and, unless the test already failed, asserts that
/// nothing was.
pub struct Store {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Store {
    pub fn new() -> Store {
        let dir = tempfile::Builder::new()
            .prefix("berth-cli-")
            .tempdir_in("/var/tmp")
            .unwrap_or_else(|e| panic!("temp dir in /var/tmp: {e}"));
        Store {
            dir,
            bin: berth_bin(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    fn argv(&self, args: &[&str]) -> Vec<OsString> {
        let mut all = vec![OsString::from("--root"), self.root().into()];
        all.extend(args.iter().map(OsString::from));
        all
    }

    /// Runs `berth --root <store> ARGS…`: its stdout, or how it failed.
    pub fn berth(&self, args: &[&str]) -> Result<String, Failed> {
        run_berth(&self.bin, &self.argv(args))
    }

    /// Like [`Store::berth`], with what berth logged on stderr too:
    /// (stdout, stderr).
    pub fn berth_logged(&self, args: &[&str]) -> Result<(String, String), Failed> {
        let argv = self.argv(args);
        let argv: Vec<&OsStr> = argv.iter().map(OsString::as_os_str).collect();
        match HostRunner.run(&self.bin.to_string_lossy(), &argv) {
            Ok(out) => Ok((out.stdout, out.stderr)),
            Err(CmdError::Failed { status, stderr, .. }) => Err(Failed { status, stderr }),
            Err(e) => panic!("berth did not run: {e}"),
        }
    }

    /// Like [`Store::berth`], on another thread, for checks while it runs.
    pub fn berth_in_thread(&self, args: &[&str]) -> JoinHandle<Result<String, Failed>> {
        let (bin, argv) = (self.bin.clone(), self.argv(args));
        std::thread::spawn(move || run_berth(&bin, &argv))
    }

    /// Runs berth with `env` added to its environment (e.g. `BERTH_CRASH_AT`),
    /// through env(1), which execs it: a signal that kills berth shows.
    pub fn berth_env(&self, env: &[(&str, &str)], args: &[&str]) -> Result<String, Failed> {
        let mut argv: Vec<OsString> = env.iter().map(|(k, v)| format!("{k}={v}").into()).collect();
        argv.push(self.bin.clone().into());
        argv.extend(self.argv(args));
        run_berth(Path::new("env"), &argv)
    }

    /// Runs berth and SIGKILLs it after `delay` unless it exits first, with
    /// timeout(1): berth and every helper of its process group die at once
    /// (daemons that made their own session, as a crash would leave them).
    pub fn berth_killed_after(&self, delay: Duration, args: &[&str]) -> Result<String, Failed> {
        // `timeout 0` would mean no limit.
        let secs = format!("{:.3}", delay.as_secs_f64().max(0.001));
        let mut argv: Vec<OsString> = vec!["-s".into(), "KILL".into(), secs.into()];
        argv.push(self.bin.clone().into());
        argv.extend(self.argv(args));
        run_berth(Path::new("timeout"), &argv)
    }

    /// Runs berth for its exit code and stdout, also when it fails (`berth
    /// doctor` lists findings and exits 1); panics if it died of a signal.
    pub fn berth_status(&self, args: &[&str]) -> (i32, String) {
        let mut argv: Vec<OsString> = ["-c", "\"$@\"; echo \"berth-exit $?\"", "sh"]
            .iter()
            .map(OsString::from)
            .collect();
        argv.push(self.bin.clone().into());
        argv.extend(self.argv(args));
        let out = run_berth(Path::new("sh"), &argv)
            .unwrap_or_else(|f| panic!("sh for berth {args:?} ({}): {}", f.status, f.stderr));
        let (text, last) = out
            .trim_end()
            .rsplit_once('\n')
            .unwrap_or(("", out.trim_end()));
        match last
            .strip_prefix("berth-exit ")
            .and_then(|c| c.parse().ok())
        {
            Some(code) if code < 128 => (code, text.to_owned()),
            _ => panic!("berth {args:?} died: {out}"),
        }
    }

    /// The pid of the monitor of detached container `name`, from its run state.
    pub fn monitor_pid(&self, name: &str) -> i32 {
        let path = self.root().join("run").join(format!("{name}.toml"));
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        text.lines()
            .find_map(|l| l.strip_prefix("pid = "))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no monitor pid in {text}"))
    }

    /// Runs berth and panics with its stderr unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        self.berth(args)
            .unwrap_or_else(|f| panic!("berth {args:?} failed ({}): {}", f.status, f.stderr))
    }

    /// Mounts `name`, puts `probe` in its root as /berth-probe with the shared
    /// libraries it needs at their host paths, and block and character device
    /// nodes the container must not open (/berth-probe-dev/loop0 for the host's
    /// loop0, /berth-probe-dev/loop-control), then unmounts it.
    pub fn install_probe(&self, name: &str, probe: &Path) {
        let out = self.ok(&["mount", name]);
        let rootfs = PathBuf::from(out.lines().last().unwrap_or_default());
        let installed = install_probe(&rootfs, probe);
        self.ok(&["umount", name]);
        if let Err(e) = installed {
            panic!("install berth-probe in {}: {e}", rootfs.display());
        }
    }
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // A test that failed midway may leave detached containers running:
        // they go with their store (stop, else kill the monitor, whose
        // container dies with it, and let the next command clean up).
        let mut running = Vec::new();
        if let Ok(entries) = fs::read_dir(self.root().join("run")) {
            for e in entries.flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                if let Some(name) = file.strip_suffix(".toml") {
                    running.push(name.to_owned());
                }
            }
        }
        for name in &running {
            let path = self.root().join("run").join(format!("{name}.toml"));
            let monitor = fs::read_to_string(&path).ok().and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("pid = "))
                    .and_then(|p| p.trim().parse::<i32>().ok())
            });
            if self.berth(&["stop", "-t", "1", name]).is_err() {
                if let Some(pid) = monitor.and_then(rustix::process::Pid::from_raw) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
                let _ = self.berth(&["stop", name]);
            }
        }
        let leaked = mount::mounts_under(self.root());
        for m in leaked.iter().rev() {
            let _ = mount::unmount_detach(m);
        }
        if !std::thread::panicking() {
            assert!(leaked.is_empty(), "berth left mounts: {leaked:?}");
        }
    }
}

fn run_berth(bin: &Path, argv: &[OsString]) -> Result<String, Failed> {
    let args: Vec<&OsStr> = argv.iter().map(OsString::as_os_str).collect();
    match HostRunner.run(&bin.to_string_lossy(), &args) {
        Ok(out) => Ok(out.stdout),
        Err(CmdError::Failed { status, stderr, .. }) => Err(Failed { status, stderr }),
        Err(e) => panic!("berth did not run: {e}"),
    }
}

/// Copies `probe` and its libraries (from `ldd`) into `rootfs`, and makes the
/// device nodes (see [`Store::install_probe`]). Copies go through `cp`, so no
/// descriptor of ours is ever open for writing on a file a container execs
/// (a concurrent fork would inherit it: ETXTBSY).
pub fn install_probe(rootfs: &Path, probe: &Path) -> Result<(), String> {
    let ldd =
        cmd::run(&HostRunner, "ldd", &[&probe.to_string_lossy()]).map_err(|e| e.to_string())?;
    let needs = berth_core::templates::parse_ldd(&ldd.stdout).map_err(|e| e.to_string())?;
    if !needs.missing.is_empty() {
        return Err(format!("ldd finds no {:?}", needs.missing));
    }
    // A static probe needs nothing else.
    if !needs.files.is_empty() {
        let mut args: Vec<&OsStr> = vec![OsStr::new("-L"), OsStr::new("--parents")];
        args.extend(needs.files.iter().map(|f| f.as_os_str()));
        args.push(rootfs.as_os_str());
        HostRunner.run("cp", &args).map_err(|e| e.to_string())?;
    }
    let dst = rootfs.join("berth-probe");
    HostRunner
        .run(
            "cp",
            &[OsStr::new("-L"), probe.as_os_str(), dst.as_os_str()],
        )
        .map_err(|e| e.to_string())?;
    let dev = rootfs.join("berth-probe-dev");
    fs::create_dir_all(&dev).map_err(|e| format!("{}: {e}", dev.display()))?;
    for (node, kind, major, minor) in [
        ("loop0", FileType::BlockDevice, 7, 0),
        ("loop-control", FileType::CharacterDevice, 10, 237),
    ] {
        let path = dev.join(node);
        mknodat(
            CWD,
            &path,
            kind,
            Mode::from_raw_mode(0o600),
            makedev(major, minor),
        )
        .map_err(|e| format!("mknod {}: {e}", path.display()))?;
    }
    Ok(())
}

/// What `berth-probe all` printed.
pub struct Report {
    pub text: String,
}

impl Report {
    /// `(verdict, why)` of probe `name`: `denied`, `ALLOWED` or `skipped`.
    pub fn verdict(&self, name: &str) -> Option<(&str, &str)> {
        self.probe_lines()
            .find_map(|(n, v, why)| (n == name).then_some((v, why)))
    }

    /// Every probe line as (name, verdict, why).
    pub fn probe_lines(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.text.lines().filter_map(|l| {
            let mut f = l.strip_prefix("PROBE ")?.splitn(3, ' ');
            Some((f.next()?, f.next()?, f.next().unwrap_or("")))
        })
    }

    /// The lines of probes with verdict `word`.
    pub fn with_verdict(&self, word: &str) -> Vec<String> {
        self.probe_lines()
            .filter(|(_, v, _)| *v == word)
            .map(|(n, v, w)| format!("{n} {v} {w}"))
            .collect()
    }

    /// An `INFO key value` line's value.
    pub fn info(&self, key: &str) -> Option<&str> {
        self.text.lines().find_map(|l| {
            l.strip_prefix("INFO ")?
                .strip_prefix(key)?
                .strip_prefix(' ')
        })
    }

    /// The count on the `DONE` line: the probe ran to its end.
    pub fn done(&self) -> Option<usize> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix("DONE ")?.parse().ok())
    }
}

/// One cgroup hierarchy the test process is in: its controllers (empty for
/// cgroup2 and named v1 hierarchies) and our cgroup's directory in it.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    pub v2: bool,
    pub controllers: Vec<String>,
    pub dir: PathBuf,
}

/// Our cgroup in every hierarchy, from /proc/self/cgroup and
/// /proc/self/mountinfo (a berth we start puts its containers below these).
pub fn caller_cgroups() -> Vec<Hierarchy> {
    let mounts = cgroup_mounts();
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut out = Vec::new();
    for line in own.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let v2 = ctrls.is_empty();
        let wanted: Vec<&str> = ctrls.split(',').filter(|c| !c.is_empty()).collect();
        let m = mounts
            .iter()
            .find(|m| m.v2 == v2 && wanted.iter().all(|c| m.opts.iter().any(|o| o == c)));
        if let Some(m) = m {
            let rel = Path::new(path)
                .strip_prefix(&m.root)
                .unwrap_or(Path::new(""));
            out.push(Hierarchy {
                v2,
                controllers: wanted.iter().map(|c| (*c).to_owned()).collect(),
                dir: m.point.join(rel),
            });
        }
    }
    out
}

/// Where container `name`'s `file` is: in the v1 hierarchy holding
/// `controller` if there is one (then `.1` is true), else as `v2_file` in the
/// cgroup2 hierarchy.
pub fn container_cgroup_file(
    name: &str,
    controller: &str,
    file: &str,
    v2_file: &str,
) -> Option<(PathBuf, bool)> {
    let all = caller_cgroups();
    let sub = |h: &Hierarchy, f: &str| h.dir.join("berth").join(name).join(f);
    if let Some(h) = all
        .iter()
        .find(|h| h.controllers.iter().any(|c| c == controller))
    {
        return Some((sub(h, file), true));
    }
    all.iter().find(|h| h.v2).map(|h| (sub(h, v2_file), false))
}

struct CgroupMount {
    v2: bool,
    root: PathBuf,
    point: PathBuf,
    opts: Vec<String>,
}

fn cgroup_mounts() -> Vec<CgroupMount> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<CgroupMount> = info
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let mut post = post.split(' ');
            let fstype = post.next()?;
            let opts = post.nth(1)?.split(',').map(str::to_owned).collect();
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(CgroupMount {
                v2: fstype == "cgroup2",
                root: PathBuf::from(pre.get(3)?),
                point: PathBuf::from(pre.get(4)?),
                opts,
            })
        })
        .collect();
    // The host's own mounts first, should a hierarchy be mounted twice.
    out.sort_by_key(|m| !m.point.starts_with("/sys/fs/cgroup"));
    out
}

/// Directories named `berth/<name>` anywhere in any mounted cgroup hierarchy.
pub fn leftover_cgroups(name: &str) -> Vec<PathBuf> {
    let suffix = Path::new("berth").join(name);
    let mut found = Vec::new();
    let mut todo: Vec<(PathBuf, u32)> = cgroup_mounts().into_iter().map(|m| (m.point, 0)).collect();
    while let Some((dir, depth)) = todo.pop() {
        if dir.ends_with(&suffix) {
            found.push(dir.clone());
        }
        if depth > 12 {
            continue;
        }
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push((e.path(), depth + 1));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Host pids of processes whose cgroup, in any hierarchy, is `berth/<name>`
/// or below it.
pub fn procs_in_container_cgroup(name: &str) -> Vec<String> {
    let (end, mid) = (format!("/berth/{name}"), format!("/berth/{name}/"));
    procs_where(|pid| {
        fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|s| s.lines().any(|l| l.ends_with(&end) || l.contains(&mid)))
    })
}

/// Host pids of processes in pid namespace `ns` (as `readlink
/// /proc/PID/ns/pid` shows it: `pid:[4026532…]`).
pub fn procs_in_pidns(ns: &str) -> Vec<String> {
    procs_where(|pid| {
        fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|l| l.as_os_str() == ns)
    })
}

fn procs_where(f: impl Fn(&str) -> bool) -> Vec<String> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.parse::<u32>().is_ok() && f(n))
        .collect()
}

/// After berth has exited: no cgroup `berth/<name>` left in any hierarchy, no
/// process in one, and none left in the container's pid namespace (if known).
/// What is left is reported, then killed and removed, so a failure leaves the
/// host clean too.
pub fn assert_run_left_nothing(name: &str, pidns: Option<&str>) {
    let leftover_procs = || {
        let mut p = procs_in_container_cgroup(name);
        p.extend(pidns.map(procs_in_pidns).unwrap_or_default());
        p
    };
    if wait_for(|| leftover_cgroups(name).is_empty() && leftover_procs().is_empty()) {
        return;
    }
    let (cgroups, procs) = (leftover_cgroups(name), leftover_procs());
    // Only the container's own processes: its name carries our pid.
    for pid in &procs {
        if let Some(pid) = pid.parse().ok().and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    wait_for(|| leftover_procs().is_empty());
    // Deepest first: a cgroup with children cannot go.
    let mut dirs = Vec::new();
    let mut todo = leftover_cgroups(name);
    while let Some(d) = todo.pop() {
        if let Ok(rd) = fs::read_dir(&d) {
            let subdirs = rd
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()));
            todo.extend(subdirs.map(|e| e.path()));
        }
        dirs.push(d);
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = fs::remove_dir(&d);
    }
    panic!(
        "container {name} left cgroups {cgroups:#?} and processes {procs:?} \
         (pid namespace {pidns:?}); removed them"
    );
}
