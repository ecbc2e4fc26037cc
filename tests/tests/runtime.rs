//! Privileged: berth-runtime on the real kernel. Each test builds a tiny
//! busybox rootfs, runs a command in it with `LinuxSys` and checks what the
//! container saw (captured through a file on its stdout) and what the host
//! kept: the exit status, and a mount table without leaks.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_bdev::cmd::{self, HostRunner};
use berth_runtime::{run, ExitStatus, LinuxSys, NetMode, RunSpec, RuntimeError, DEFAULT_CAPS};
use berth_tests::harness::skip;

const APPLETS: &[&str] = &[
    "sh", "cat", "cut", "echo", "env", "grep", "head", "hostname", "id", "kill", "ls", "sleep",
    "stat", "test", "touch", "tr", "wc",
];

fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A rootfs with /bin/busybox and its applet links, or `None` after a skip.
fn busybox_rootfs() -> Option<tempfile::TempDir> {
    if !is_root() {
        skip("runtime tests need root (namespaces, mounts, pivot_root)");
        return None;
    }
    if !Path::new("/bin/busybox").exists() {
        skip("runtime tests need /bin/busybox (busybox-static)");
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("berth-rt-")
        .tempdir_in("/var/tmp")
        .expect("temp dir in /var/tmp");
    let bin = dir.path().join("bin");
    fs::create_dir(&bin).expect("mkdir rootfs/bin");
    // A hard link, not a copy: while a copy is open for writing, a concurrent
    // test's clone inherits the descriptor and exec of it fails with ETXTBSY.
    if fs::hard_link("/bin/busybox", bin.join("busybox")).is_err() {
        fs::copy("/bin/busybox", bin.join("busybox")).expect("copy busybox");
    }
    for applet in APPLETS {
        symlink("busybox", bin.join(applet)).expect("applet symlink");
    }
    Some(dir)
}

struct Ran {
    result: Result<ExitStatus, RuntimeError>,
    stdout: String,
}

impl Ran {
    fn code(&self) -> i32 {
        match &self.result {
            Ok(status) => status.code(),
            Err(e) => panic!("run failed: {e}: {:?}", std::error::Error::source(e)),
        }
    }
}

fn spec(root: &Path, argv: &[&str]) -> RunSpec {
    RunSpec::new(root, "testbox", argv.iter().map(OsString::from).collect())
}

/// Runs `spec` with its stdout going to a file outside the rootfs.
fn run_capturing(mut spec: RunSpec) -> Ran {
    let out = tempfile::NamedTempFile::new().expect("stdout file");
    spec.stdio.stdout = Some(out.reopen().expect("reopen stdout file").into());
    let result = run(&spec, &LinuxSys);
    drop(spec);
    Ran {
        result,
        stdout: fs::read_to_string(out.path()).expect("read captured stdout"),
    }
}

fn sh(root: &Path, script: &str) -> Ran {
    run_capturing(spec(root, &["sh", "-c", script]))
}

#[test]
fn hostname_is_the_given_name() {
    let Some(root) = busybox_rootfs() else { return };
    let ran = sh(root.path(), "hostname");
    assert_eq!(ran.code(), 0);
    assert_eq!(ran.stdout, "testbox\n");
}

#[test]
fn command_is_pid_1_and_proc_shows_only_its_namespace() {
    let Some(root) = busybox_rootfs() else { return };
    let ran = sh(root.path(), "echo $$; ls /proc");
    assert_eq!(ran.code(), 0);
    let mut lines = ran.stdout.lines();
    assert_eq!(lines.next(), Some("1"));
    let pids: Vec<&str> = lines
        .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert!(pids.contains(&"1"), "{pids:?}");
    assert!(pids.len() <= 3, "too many pids in the container: {pids:?}");
}

#[test]
fn sys_is_read_only() {
    let Some(root) = busybox_rootfs() else { return };
    let ran = sh(
        root.path(),
        "if touch /sys/berth-x 2>/dev/null; then echo writable; else echo ro; fi; grep ' /sys ' /proc/mounts",
    );
    assert_eq!(ran.code(), 0);
    let mut lines = ran.stdout.lines();
    assert_eq!(lines.next(), Some("ro"));
    let sys_mount = lines.next().unwrap_or_default();
    assert!(
        sys_mount.contains(" ro,") || sys_mount.contains(" ro "),
        "{sys_mount}"
    );
}

#[test]
fn dev_has_the_minimal_nodes() {
    let Some(root) = busybox_rootfs() else { return };
    let script = "for d in null zero full random urandom tty; do test -c /dev/$d || echo no-$d; done; \
                  test -d /dev/pts && test -d /dev/shm && test -L /dev/ptmx && test -L /dev/fd || echo no-dirs; \
                  test -c /dev/pts/ptmx || echo no-ptmx; \
                  stat -c %a /dev/null /dev/shm; \
                  echo x > /dev/null && echo null-ok; \
                  head -c 3 /dev/zero | wc -c; \
                  echo via-dev-stdout >> /dev/stdout";
    let ran = sh(root.path(), script);
    assert_eq!(ran.code(), 0);
    assert_eq!(
        ran.stdout, "666\n1777\nnull-ok\n3\nvia-dev-stdout\n",
        "missing entries are reported as no-*"
    );
}

#[test]
fn exit_code_propagates() {
    let Some(root) = busybox_rootfs() else { return };
    let ran = sh(root.path(), "echo before; exit 7");
    assert_eq!(ran.result.as_ref().ok(), Some(&ExitStatus::Exited(7)));
    assert_eq!(ran.stdout, "before\n");
}

/// Finds our child process whose command line contains `marker`.
fn find_child(marker: &str) -> Option<u32> {
    let me = std::process::id().to_string();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The ppid is the 2nd field after the parenthesised comm.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1));
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(me.as_str()) && String::from_utf8_lossy(&cmdline).contains(marker) {
            return Some(pid);
        }
    }
    None
}

fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn death_by_signal_is_128_plus_signal() {
    let Some(root) = busybox_rootfs() else { return };
    // PID 1 ignores signals it has no handler for, even SIGKILL from inside its
    // namespace, so the kill comes from the host, as an ancestor namespace may.
    let rootfs = root.path().to_path_buf();
    let waiter = std::thread::spawn(move || run(&spec(&rootfs, &["sleep", "4241"]), &LinuxSys));
    let pid = poll("the container", || find_child("4241"));
    cmd::run(&HostRunner, "kill", &["-KILL", &pid.to_string()]).unwrap();
    let status = waiter.join().unwrap().unwrap();
    assert_eq!(status, ExitStatus::Signaled(9));
    assert_eq!(status.code(), 137);
}

#[test]
fn sigterm_is_forwarded_and_sigint_ignored_while_waiting() {
    let Some(root) = busybox_rootfs() else { return };
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut s = spec(
        root.path(),
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.05; done # 4243",
        ],
    );
    s.stdio.stdout = Some(out.reopen().unwrap().into());
    let waiter = std::thread::spawn(move || run(&s, &LinuxSys));
    poll("the trap", || {
        let text = fs::read_to_string(out.path()).unwrap_or_default();
        text.contains("ready").then_some(())
    });
    assert!(find_child("4243").is_some());
    let me = std::process::id().to_string();
    // Both go to this test process: SIGINT must be ignored (or the test binary
    // dies), SIGTERM forwarded to the container, whose trap exits 3.
    cmd::run(&HostRunner, "kill", &["-INT", &me]).unwrap();
    cmd::run(&HostRunner, "kill", &["-TERM", &me]).unwrap();
    let status = waiter.join().unwrap().unwrap();
    assert_eq!(status, ExitStatus::Exited(3));
    assert_eq!(fs::read_to_string(out.path()).unwrap(), "ready\ngot-term\n");
}

#[test]
fn stdin_and_environment_reach_the_command() {
    let Some(root) = busybox_rootfs() else { return };
    let input = tempfile::NamedTempFile::new().unwrap();
    fs::write(input.path(), "from-stdin\n").unwrap();
    let mut s = spec(
        root.path(),
        &[
            "sh",
            "-c",
            "cat; echo $container $HOME; pwd; env | grep -c ^HOME=",
        ],
    );
    s.stdio.stdin = Some(fs::File::open(input.path()).unwrap().into());
    s.env.push(("HOME".into(), "/home/x".into()));
    fs::create_dir_all(root.path().join("work")).unwrap();
    s.cwd = "/work".into();
    let ran = run_capturing(s);
    assert_eq!(ran.code(), 0);
    assert_eq!(ran.stdout, "from-stdin\nberth /home/x\n/work\n1\n");
}

#[test]
fn missing_command_is_an_exec_error_naming_it() {
    let Some(root) = busybox_rootfs() else { return };
    for cmd in ["/bin/foo", "nosuchcmd"] {
        let ran = run_capturing(spec(root.path(), &[cmd, "arg"]));
        let err = ran.result.unwrap_err();
        let RuntimeError::Exec { cmd: got, source } = &err else {
            panic!("expected Exec, got {err:?}");
        };
        assert_eq!(got, cmd);
        let chain = format!("{err}: {source}");
        assert!(
            chain.starts_with(&format!("exec {cmd}: No such file or directory")),
            "{chain}"
        );
    }
}

#[test]
fn setup_failure_names_the_step() {
    let Some(root) = busybox_rootfs() else { return };
    let mut s = spec(root.path(), &["true"]);
    s.cwd = "/no/such/dir".into();
    match run(&s, &LinuxSys) {
        Err(RuntimeError::Chdir { path, .. }) => assert_eq!(path, Path::new("/no/such/dir")),
        other => panic!("expected Chdir, got {other:?}"),
    }
}

/// Mount id -> the rest of its /proc/self/mountinfo line.
fn mountinfo() -> BTreeMap<String, String> {
    fs::read_to_string("/proc/self/mountinfo")
        .expect("read mountinfo")
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, rest)| (id.to_owned(), rest.to_owned()))
        .collect()
}

fn mount_point(rest: &str) -> PathBuf {
    // parent maj:min root mount-point ...
    PathBuf::from(rest.split(' ').nth(3).unwrap_or_default())
}

#[test]
fn nothing_leaks_into_the_host_mount_table() {
    let Some(root) = busybox_rootfs() else { return };
    let before = mountinfo();
    let ran = sh(root.path(), "cat /proc/self/mountinfo | wc -l");
    assert_eq!(ran.code(), 0);
    let after = mountinfo();
    // Other processes may mount elsewhere meanwhile; every mount that was
    // there must be unchanged (propagation included) and none may be ours.
    for (id, rest) in &before {
        if let Some(now) = after.get(id) {
            assert_eq!(now, rest, "mount {id} changed");
        }
    }
    for (id, rest) in &after {
        if !before.contains_key(id) {
            assert!(
                !mount_point(rest).starts_with(root.path()),
                "leaked mount {id} {rest}"
            );
        }
    }
    // The container saw its own table: the rootfs, proc, sys, dev, pts, shm,
    // and the read-only and masked /proc and /sys paths this kernel has.
    let n: usize = ran.stdout.trim().parse().unwrap();
    assert!((12..=30).contains(&n), "container had {n} mounts");
    // And the rootfs holds only what we made plus the created mount points.
    let mut entries: Vec<String> = fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["bin", "dev", "proc", "sys"]);
    assert_eq!(fs::read_dir(root.path().join("dev")).unwrap().count(), 0);
}

#[test]
fn private_network_has_only_lo_and_it_is_up() {
    let Some(root) = busybox_rootfs() else { return };
    let ran = sh(
        root.path(),
        "grep : /proc/net/dev | cut -d: -f1 | tr -d ' '; cat /sys/class/net/lo/flags",
    );
    assert_eq!(ran.code(), 0);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"lo"), "{}", ran.stdout);
    assert_eq!(lines.len(), 2, "interfaces besides lo: {}", ran.stdout);
    let flags = u32::from_str_radix(lines[1].trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "lo is down: {}", lines[1]);
}

#[test]
fn host_network_is_shared() {
    let Some(root) = busybox_rootfs() else { return };
    let host_ifaces = fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .filter(|l| l.contains(':'))
        .count();
    let mut s = spec(root.path(), &["sh", "-c", "grep -c : /proc/net/dev"]);
    s.net = NetMode::Host;
    let ran = run_capturing(s);
    assert_eq!(ran.code(), 0);
    assert_eq!(ran.stdout.trim(), host_ifaces.to_string());
}

#[test]
fn capabilities_are_dockers_default_set() {
    let Some(root) = busybox_rootfs() else { return };
    let ran = sh(root.path(), "grep -E '^Cap(Eff|Bnd|Amb)' /proc/self/status");
    assert_eq!(ran.code(), 0);
    let want = format!("{:016x}", DEFAULT_CAPS.bits());
    for line in ran.stdout.lines() {
        let (name, value) = line.split_once(':').unwrap();
        let expect = if name == "CapAmb" {
            "0000000000000000"
        } else {
            want.as_str()
        };
        assert_eq!(value.trim(), expect, "{name}");
    }
    assert_eq!(ran.stdout.lines().count(), 3);
}

/// A busybox rootfs that also has the applets the tty tests use.
fn tty_rootfs() -> Option<tempfile::TempDir> {
    let root = busybox_rootfs()?;
    for applet in ["tty", "stty"] {
        symlink("busybox", root.path().join("bin").join(applet)).expect("applet symlink");
    }
    Some(root)
}

/// Runs `sh` on a pty in `root`, its input `script` from a pipe (so berth
/// relays without raw mode), and returns what came out of the pty, `\r`s
/// removed.
fn sh_on_tty(root: &Path, script: &str) -> Ran {
    let (rd, wr) = rustix::pipe::pipe().expect("pipe");
    rustix::io::write(&wr, script.as_bytes()).expect("write the script");
    drop(wr);
    let mut s = spec(root, &["sh"]);
    s.tty = true;
    s.stdio.stdin = Some(rd);
    let mut ran = run_capturing(s);
    ran.stdout = ran.stdout.replace('\r', "");
    ran
}

#[test]
fn tty_gives_the_command_a_pty_of_its_own_devpts() {
    let Some(root) = tty_rootfs() else { return };
    let before = mountinfo();
    let ran = sh_on_tty(root.path(), "tty; echo $((1+2)); exit 5\n");
    assert_eq!(
        ran.result.as_ref().ok(),
        Some(&ExitStatus::Exited(5)),
        "{:?}: {}",
        ran.result,
        ran.stdout
    );
    let lines: Vec<&str> = ran.stdout.lines().map(str::trim).collect();
    assert!(lines.contains(&"/dev/pts/0"), "{}", ran.stdout);
    assert!(lines.contains(&"3"), "{}", ran.stdout);
    let after = mountinfo();
    for (id, rest) in &before {
        if let Some(now) = after.get(id) {
            assert_eq!(now, rest, "mount {id} changed");
        }
    }
    for (id, rest) in &after {
        if !before.contains_key(id) {
            assert!(
                !mount_point(rest).starts_with(root.path()),
                "leaked mount {id} {rest}"
            );
        }
    }
}

#[test]
fn tty_shell_leads_its_session_and_leaves_no_process_behind() {
    let Some(root) = tty_rootfs() else { return };
    // pgrp, session and tty_nr of the shell: its own group and session, and
    // the pty (major 136, minor 0) as controlling terminal.
    let ran = sh_on_tty(
        root.path(),
        "sleep 4245 & echo stat $(cut -d' ' -f5-7 /proc/$$/stat); exit 0\n",
    );
    assert_eq!(ran.code(), 0, "{}", ran.stdout);
    let stat = ran
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("stat "))
        .unwrap_or_default()
        .to_owned();
    assert_eq!(stat, format!("1 1 {}", 136 << 8), "{}", ran.stdout);
    // The container's pid 1 took the background sleep with it.
    let leftover = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|e| fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x004245\x00"));
    assert!(!leftover, "the container's sleep outlived it");
}
