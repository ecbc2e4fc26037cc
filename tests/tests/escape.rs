//! Privileged: what a default `berth run` container can reach on the real
//! kernel. `berth-probe all` (tests/src/bin/berth-probe.rs) tries each escape
//! from inside a container and reports a verdict per probe; every one must be
//! denied, on a dir volume, an overlay snapshot clone and a btrfs snapshot.
//! `--privileged` opts out of the policy (not of the namespaces), and TIOCSTI
//! cannot type into the terminal berth runs in. After each run no mount, cgroup
//! or process of the container may be left.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::OnceLock;

use berth_bdev::cmd;
use berth_tests::cli::{assert_run_left_nothing, unique_name, Report, Store};
use berth_tests::harness::{skip, ScratchFs};
use berth_tests::tmux::Tmux;
use rustix::fs::{Mode, OFlags};

const PROBE: &str = env!("CARGO_BIN_EXE_berth-probe");

/// Every probe `berth-probe all` runs; one missing from its report fails.
const PROBES: &[&str] = &[
    "leaked-fds",
    "host-pids",
    "ptrace-host",
    "cgroupns",
    "host-net",
    "kcore-read",
    "keys-read",
    "timer-list-read",
    "sched-debug-read",
    "kallsyms",
    "sys-firmware-list",
    "proc-acpi-list",
    "proc-scsi-list",
    "core-pattern-write",
    "sysrq-trigger-write",
    "proc-irq-write",
    "sysfs-write",
    "proc-sys-ro",
    "proc-irq-ro",
    "proc-bus-ro",
    "proc-fs-ro",
    "sysfs-ro",
    "mknod-block",
    "devnode-block",
    "devnode-char",
    "dev-mem-open",
    "dev-kmsg-open",
    "mount-tmpfs",
    "fsopen",
    "umount-proc",
    "unshare-user",
    "userns-mount",
    "unshare-mnt",
    "clone-newuser",
    "clone3",
    "setns",
    "chroot-escape",
    "keyctl",
    "add-key",
    "request-key",
    "bpf",
    "userfaultfd",
    "perf-event-open",
    "name-to-handle",
    "open-by-handle",
    "packet-socket",
    "reboot",
    "kexec-load",
    "init-module",
    "delete-module",
    "swapon",
    "set-clock",
    "iopl",
    "personality",
    "seccomp",
    "no-new-privs",
    "cap-sys-admin",
    "cap-sys-module",
    "cap-sys-ptrace",
    "cap-mknod",
    "cap-net-raw",
    "tiocsti",
];

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A host directory open in this process without close-on-exec, so that
/// every berth we start inherits it: the container must not (runc's
/// CVE-2024-21626 escaped through such a descriptor). Held until the process
/// exits.
fn leak_a_host_fd_into_berth() {
    static FD: OnceLock<OwnedFd> = OnceLock::new();
    FD.get_or_init(|| {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY;
        rustix::fs::open("/var/tmp", flags, Mode::empty()).unwrap()
    });
}

/// Runs `berth run [flags] NAME -- /berth-probe all --host-pid <ours>`; our
/// own pid is a host pid the container must not see.
fn probe_all(s: &Store, name: &str, flags: &[&str]) -> Report {
    leak_a_host_fd_into_berth();
    let pid = std::process::id().to_string();
    let mut args = vec!["run", "--no-tty"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[name, "--", "/berth-probe", "all", "--host-pid", &pid]);
    let text = s
        .berth(&args)
        .unwrap_or_else(|f| panic!("berth {args:?} failed ({}): {}", f.status, f.stderr));
    let r = Report { text };
    assert!(
        r.done() == Some(r.probe_lines().count()),
        "the probe did not run to its end:\n{}",
        r.text
    );
    r
}

/// Every probe ran and was denied; only `tiocsti` may be skipped (stdin is not
/// a terminal here). The host pid is invisible (ESRCH), and host-made device
/// nodes are refused by the device policy (EPERM), not by some accident.
fn assert_all_denied(r: &Report) {
    let full = || format!("\n--- full probe output ---\n{}", r.text);
    let allowed = r.with_verdict("ALLOWED");
    assert!(
        allowed.is_empty(),
        "a default container may:\n  {}{}",
        allowed.join("\n  "),
        full()
    );
    let missing: Vec<&&str> = PROBES.iter().filter(|p| r.verdict(p).is_none()).collect();
    assert!(missing.is_empty(), "probes missing: {missing:?}{}", full());
    let skipped: Vec<String> = r
        .with_verdict("skipped")
        .into_iter()
        .filter(|l| !l.starts_with("tiocsti "))
        .collect();
    assert!(skipped.is_empty(), "probes skipped: {skipped:?}{}", full());
    for (probe, want) in [
        ("ptrace-host", "ESRCH"),
        ("devnode-block", "EPERM"),
        ("devnode-char", "EPERM"),
    ] {
        let (_, why) = r.verdict(probe).unwrap();
        assert!(
            why.contains(want),
            "{probe}: wanted {want}, got {why:?}{}",
            full()
        );
    }
}

/// A store with container `name` from the minimal template, the probe inside.
fn store_with_probe(name: &str) -> Option<Store> {
    if !is_root() {
        skip("berth run needs root");
        return None;
    }
    let s = Store::new();
    s.ok(&["create", name]);
    s.install_probe(name, Path::new(PROBE));
    Some(s)
}

#[test]
fn default_container_denies_every_escape_on_a_dir_volume() {
    let name = unique_name("esc-dir");
    let Some(s) = store_with_probe(&name) else {
        return;
    };
    let r = probe_all(&s, &name, &[]);
    assert_run_left_nothing(&name, r.info("pidns"));
    assert_all_denied(&r);
    s.ok(&["destroy", &name]);
}

#[test]
fn default_container_denies_every_escape_on_an_overlay_clone() {
    let (base, name) = (unique_name("esc-ovl-base"), unique_name("esc-ovl"));
    let Some(s) = store_with_probe(&base) else {
        return;
    };
    s.ok(&["clone", &base, &name, "--snapshot", "-B", "overlay"]);
    let r = probe_all(&s, &name, &[]);
    assert_run_left_nothing(&name, r.info("pidns"));
    assert_all_denied(&r);
    s.ok(&["destroy", &base, "--force"]);
}

#[test]
fn default_container_denies_every_escape_on_a_btrfs_snapshot() {
    if !is_root() {
        skip("berth run needs root");
        return;
    }
    if !berth_bdev::fsutil::kernel_has_fs("btrfs") {
        skip("the kernel has no btrfs filesystem");
        return;
    }
    if !cmd::have_program("mkfs.btrfs") {
        skip("mkfs.btrfs is not installed (apt-get install btrfs-progs)");
        return;
    }
    let scratch = tempfile::Builder::new()
        .prefix("berth-esc-btrfs-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let fs = ScratchFs::new(scratch.path(), "btrfs", 4 << 30).unwrap();
    let pool = fs.mnt.join("pool");
    let (base, name) = (unique_name("esc-bt-base"), unique_name("esc-bt"));
    {
        let s = Store::new();
        s.ok(&[
            "pool",
            "add",
            "bt",
            "-B",
            "btrfs",
            "--path",
            pool.to_str().unwrap(),
        ]);
        s.ok(&["create", &base, "--pool", "bt"]);
        s.install_probe(&base, Path::new(PROBE));
        s.ok(&["clone", &base, &name, "--snapshot"]);
        let r = probe_all(&s, &name, &[]);
        assert_run_left_nothing(&name, r.info("pidns"));
        assert_all_denied(&r);
        // A btrfs snapshot is independent of its origin: destroy both.
        s.ok(&["destroy", &name]);
        s.ok(&["destroy", &base]);
        s.ok(&["pool", "rm", "bt"]);
    }
    drop(fs);
    berth_tests::harness::assert_no_leaks(scratch.path());
}

/// `--privileged` is the one opt-out: all capabilities, no seccomp, no masked
/// or read-only /proc (core_pattern opens for writing: nothing is written),
/// keyctl works again. The namespaces stay: host pids are still invisible.
#[test]
fn privileged_opts_out_of_the_policy_but_not_the_namespaces() {
    let name = unique_name("esc-priv");
    let Some(s) = store_with_probe(&name) else {
        return;
    };
    let r = probe_all(&s, &name, &["--privileged"]);
    assert_run_left_nothing(&name, r.info("pidns"));
    let full = format!("\n--- full probe output ---\n{}", r.text);
    for probe in ["core-pattern-write", "keyctl", "cap-sys-admin", "seccomp"] {
        let v = r.verdict(probe);
        assert!(
            v.is_some_and(|(word, _)| word == "ALLOWED"),
            "{probe} under --privileged: {v:?}{full}"
        );
    }
    for probe in ["host-pids", "ptrace-host", "cgroupns"] {
        let v = r.verdict(probe);
        assert!(
            v.is_some_and(|(word, _)| word == "denied"),
            "{probe} under --privileged: {v:?}{full}"
        );
    }
    s.ok(&["destroy", &name]);
}

/// berth runs in a shell on a real terminal, with `--no-tty`: the container's
/// fd 0 is that terminal, but it must not be its controlling tty (setsid) and
/// TIOCSTI is filtered, so nothing gets typed into the shell after berth exits.
#[test]
fn tiocsti_cannot_type_into_the_terminal_berth_runs_in() {
    let name = unique_name("esc-tty");
    let Some(s) = store_with_probe(&name) else {
        return;
    };
    let Some(t) = Tmux::start("berth-esc", "env PS1='$ ' sh") else {
        return;
    };
    t.wait_until("the prompt", |sc| sc.contains("$ "));
    let (bin, root) = (s.bin().display(), s.root().display());
    t.line(&format!(
        "{bin} --root {root} run --no-tty {name} -- /berth-probe tiocsti; echo code=$?"
    ));
    let screen = t.wait_until("berth to exit", |sc| {
        sc.lines().any(|l| l.starts_with("code="))
    });
    // Had the probe pushed an "x", the shell would now read "xecho …".
    t.line("echo after-$((6*7))");
    let after = t.wait_until("the next command", |sc| {
        sc.lines().any(|l| l.starts_with("after-42")) || sc.contains("xecho")
    });
    drop(t);
    assert_run_left_nothing(&name, None);
    // An "x" the probe pushed shows up in front of its line.
    let probe = screen
        .lines()
        .find_map(|l| l.find("PROBE tiocsti ").map(|i| &l[i..]));
    assert!(
        probe.is_some_and(|l| l.starts_with("PROBE tiocsti denied")),
        "TIOCSTI from the container: {probe:?}; screen:\n{after}"
    );
    assert!(
        screen.lines().any(|l| l == "code=0"),
        "berth run failed; screen:\n{after}"
    );
    assert!(
        !after.contains("xecho") && after.lines().any(|l| l.starts_with("after-42")),
        "the container typed into the host's shell; screen:\n{after}"
    );
    s.ok(&["destroy", &name]);
}
