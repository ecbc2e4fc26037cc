//! Privileged: detached containers on the real kernel. `berth start` hands a
//! container to its monitor; its output lands in a log, `freeze` stops it in
//! its tracks, `stop` asks init to end and kills it after the timeout, and a
//! SIGKILLed monitor is cleaned up after by the next command. Nothing of a
//! stopped container (process, mount, cgroup, run state) is left.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_tests::cli::{assert_run_left_nothing, unique_name, Store};
use berth_tests::harness::{skip, wait_for};
use berth_tests::tmux::Tmux;

fn root_or_skip() -> bool {
    if !rustix::process::geteuid().is_root() {
        skip("detached containers need root");
        return false;
    }
    true
}

/// The run state file of `name`, which holds the monitor's pid.
fn run_state(s: &Store, name: &str) -> PathBuf {
    s.root().join("run").join(format!("{name}.toml"))
}

fn counter(rootfs: &Path) -> Option<u64> {
    std::fs::read_to_string(rootfs.join("tmp/counter"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn state_of(s: &Store, name: &str) -> String {
    let out = s.ok(&["ls"]);
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("")
        .to_owned()
}

/// After a container stopped: nothing of it is left.
fn assert_gone(s: &Store, name: &str) {
    assert!(!run_state(s, name).exists(), "run state left");
    assert!(
        berth_bdev::mount::mounts_under(&s.root().join("mnt").join(name)).is_empty(),
        "mounts left"
    );
    assert_run_left_nothing(name, None);
}

#[test]
fn start_logs_freeze_stop() {
    if !root_or_skip() {
        return;
    }
    let s = Store::new();
    let name = unique_name("life");
    s.ok(&["create", &name]);
    let script = "echo hello; echo oops >&2; i=0; \
                  while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.05; done";
    let out = s.ok(&["start", &name, "--", "/bin/sh", "-c", script]);
    assert!(out.contains("started"), "{out}");
    assert_eq!(state_of(&s, &name), "running");
    let rootfs = s.root().join("mnt").join(&name);
    assert!(wait_for(|| counter(&rootfs).is_some_and(|n| n > 3)));

    // Both streams are in the log, in order, stderr on stderr.
    let (out, err) = s.berth_logged(&["logs", &name]).unwrap();
    assert_eq!(out.lines().next(), Some("hello"), "{out}");
    assert!(err.contains("oops"), "{err}");
    let (ts, _) = s.berth_logged(&["logs", "--timestamps", &name]).unwrap();
    assert!(ts.lines().next().unwrap().ends_with("Z hello"), "{ts}");

    // Frozen, the counter stands still; thawed, it moves on.
    s.ok(&["freeze", &name]);
    assert_eq!(state_of(&s, &name), "frozen");
    let at = counter(&rootfs).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(counter(&rootfs), Some(at), "a frozen container ran");
    s.ok(&["unfreeze", &name]);
    assert!(wait_for(|| counter(&rootfs).is_some_and(|n| n > at)));

    // sh as init ignores SIGTERM: killed after the timeout.
    let out = s.ok(&["stop", "-t", "1", &name]);
    assert!(out.contains("killed after 1 s"), "{out}");
    assert!(out.contains("signal 9"), "{out}");
    assert_gone(&s, &name);
    assert_eq!(state_of(&s, &name), "stopped");
    // The log and the exit status outlive the monitor.
    let waited = s.berth(&["wait", &name]).unwrap_err();
    assert_eq!(waited.code(), Some(137), "{}", waited.stderr);
    let (out, err) = s.berth_logged(&["logs", "--tail", "1", &name]).unwrap();
    assert_eq!(out.lines().count() + err.lines().count(), 1, "{out}{err}");
    assert!(s.ok(&["logs", &name]).starts_with("hello"));
    s.ok(&["destroy", &name]);
    assert!(!s.root().join("logs").join(&name).exists(), "logs kept");
}

#[test]
fn an_init_that_handles_sigterm_stops_cleanly() {
    if !root_or_skip() {
        return;
    }
    let s = Store::new();
    let name = unique_name("life-term");
    s.ok(&["create", &name]);
    let script = "trap 'echo bye; exit 3' TERM; while :; do sleep 0.05; done";
    s.ok(&["start", &name, "--", "/bin/sh", "-c", script]);
    let out = s.ok(&["stop", "-t", "10", &name]);
    assert!(!out.contains("killed"), "{out}");
    assert!(out.contains("code 3"), "{out}");
    assert_eq!(s.ok(&["logs", &name]).trim(), "bye");
    assert_gone(&s, &name);
    // Restart runs what was started before.
    s.ok(&["restart", &name]);
    assert_eq!(state_of(&s, &name), "running");
    s.ok(&["kill", &name, "TERM"]);
    let (code, out) = s.berth_status(&["wait", &name]);
    assert_eq!(code, 3, "{out}");
    assert_gone(&s, &name);
}

#[test]
fn a_start_that_fails_says_why_and_leaves_nothing() {
    if !root_or_skip() {
        return;
    }
    let s = Store::new();
    let name = unique_name("life-fail");
    s.ok(&["create", &name]);
    let e = s
        .berth(&["start", &name, "--", "/no/such/init"])
        .unwrap_err();
    assert!(e.stderr.contains("/no/such/init"), "{}", e.stderr);
    assert_gone(&s, &name);
    let e = s.berth(&["stop", &name]).unwrap_err();
    assert!(e.stderr.contains("not running"), "{}", e.stderr);
}

#[test]
fn a_killed_monitor_is_cleaned_up_after() {
    if !root_or_skip() {
        return;
    }
    let s = Store::new();
    let name = unique_name("life-kill");
    s.ok(&["create", &name]);
    s.ok(&[
        "start",
        &name,
        "--",
        "/bin/sh",
        "-c",
        "while :; do sleep 0.05; done",
    ]);
    let monitor = s.monitor_pid(&name);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(monitor).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert!(wait_for(|| !Path::new(&format!("/proc/{monitor}")).exists()));
    // The next command that takes the store cleans up.
    s.ok(&["pool", "ls"]);
    s.ok(&["create", &unique_name("life-next")]);
    assert_eq!(state_of(&s, &name), "stopped");
    assert_gone(&s, &name);
}

#[test]
fn a_running_container_clones_frozen_for_the_snapshot_only() {
    if !root_or_skip() {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("berth-life-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let setup = match berth_tests::pools::btrfs::setup(tmp.path()) {
        Ok(s) => s,
        Err(e) => return skip(&e),
    };
    let s = Store::new();
    let pool_dir = setup.pool.path.clone().unwrap();
    s.ok(&[
        "pool",
        "add",
        "b",
        "-B",
        "btrfs",
        "--path",
        pool_dir.to_str().unwrap(),
    ]);
    let name = unique_name("life-src");
    s.ok(&["create", &name, "--pool", "b"]);
    // Each value replaces the last atomically: a consistent clone holds one.
    let script = "i=0; while :; do i=$((i+1)); echo $i > /tmp/n.new; mv /tmp/n.new /tmp/n; done";
    s.ok(&["start", &name, "--", "/bin/sh", "-c", script]);
    let rootfs = s.root().join("mnt").join(&name);
    assert!(wait_for(
        || std::fs::read_to_string(rootfs.join("tmp/n")).is_ok()
    ));

    let snap = unique_name("life-snap");
    let (_, log) = s
        .berth_logged(&["-v", "clone", "--snapshot", &name, &snap])
        .unwrap();
    assert!(log.contains("frozen_ms"), "{log}");
    assert_eq!(
        state_of(&s, &name),
        "running",
        "the origin must keep running"
    );
    let clone_root = PathBuf::from(s.ok(&["mount", &snap]).lines().last().unwrap());
    let n: u64 = std::fs::read_to_string(clone_root.join("tmp/n"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(n > 0);
    s.ok(&["umount", &snap]);
    let before = std::fs::read_to_string(rootfs.join("tmp/n")).unwrap();
    assert!(wait_for(|| std::fs::read_to_string(rootfs.join("tmp/n"))
        .unwrap()
        != before));

    // A copy is refused unless it may freeze the container throughout.
    let copy = unique_name("life-copy");
    let e = s.berth(&["clone", "--copy", &name, &copy]).unwrap_err();
    assert!(e.stderr.contains("--freeze"), "{}", e.stderr);
    s.ok(&["clone", "--copy", "--freeze", &name, &copy]);
    assert_eq!(state_of(&s, &name), "running");

    s.ok(&["stop", "-t", "1", &name]);
    assert_gone(&s, &name);
    for c in [&copy, &snap, &name] {
        s.ok(&["destroy", c]);
    }
    s.ok(&["pool", "rm", "b"]);
    drop(setup);
}

#[test]
fn autostart_starts_by_order_and_info_tells_the_run() {
    if !root_or_skip() {
        return;
    }
    let s = Store::new();
    let (first, second, manual) = (
        unique_name("life-auto1"),
        unique_name("life-auto2"),
        unique_name("life-manual"),
    );
    for n in [&first, &second, &manual] {
        s.ok(&["create", n]);
    }
    s.ok(&[
        "config",
        "set",
        &second,
        "autostart=true",
        "start.order=2",
        "init.cmd=/bin/sleep 60",
    ]);
    s.ok(&[
        "config",
        "set",
        &first,
        "autostart=true",
        "start.order=1",
        "init.cmd=/bin/sleep 60",
    ]);
    let out = s.ok(&["start", "--all-auto"]);
    let order: Vec<&str> = out.lines().collect();
    assert_eq!(order.len(), 2, "{out}");
    assert!(
        order[0].contains(&first) && order[1].contains(&second),
        "{out}"
    );
    assert_eq!(state_of(&s, &manual), "stopped");
    let info = s.ok(&["info", &first]);
    assert!(info.contains("state:      running (init pid"), "{info}");
    assert!(info.contains("log:"), "{info}");
    // Already running: --all-auto starts nothing more.
    assert!(s.ok(&["start", "--all-auto"]).trim().is_empty());
    for n in [&first, &second] {
        s.ok(&["stop", "-t", "1", n]);
        assert_gone(&s, n);
    }
    let info = s.ok(&["info", &first]);
    assert!(info.contains("last run:   killed by signal 9"), "{info}");
}

#[test]
fn exec_joins_the_running_container() {
    if !root_or_skip() {
        return;
    }
    let s = Store::new();
    let name = unique_name("life-exec");
    s.ok(&["create", &name]);
    s.ok(&["start", &name, "--", "/bin/sleep", "60"]);
    let script = "hostname; tr '\\0' ' ' < /proc/1/cmdline; echo; \
                  grep -c ':/$' /proc/self/cgroup; grep -c . /proc/self/cgroup; \
                  grep NoNewPrivs /proc/self/status; exit 7";
    let e = s
        .berth(&["exec", "--no-tty", &name, "--", "/bin/sh", "-c", script])
        .unwrap_err();
    assert_eq!(e.code(), Some(7), "{}", e.stderr);
    let out = s.ok(&[
        "exec",
        "--no-tty",
        &name,
        "--",
        "/bin/sh",
        "-c",
        &script.replace("exit 7", "true"),
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], name, "{out}");
    assert_eq!(lines[1].trim(), "/bin/sleep 60", "{out}");
    // Every cgroup line is the container's own root (cgroup namespace joined).
    assert_eq!(lines[2], lines[3], "{out}");
    assert!(lines[4].ends_with('1'), "{out}");
    let e = s
        .berth(&["exec", "--no-tty", &name, "--", "/no/such/program"])
        .unwrap_err();
    assert!(e.stderr.contains("/no/such/program"), "{}", e.stderr);
    let id = s.ok(&[
        "exec",
        "--no-tty",
        "-u",
        "1000:1001",
        &name,
        "--",
        "/bin/sh",
        "-c",
        "id -u; id -g",
    ]);
    assert_eq!(id.split_whitespace().collect::<Vec<_>>(), ["1000", "1001"]);
    s.ok(&["freeze", &name]);
    let e = s
        .berth(&["exec", "--no-tty", &name, "--", "/bin/true"])
        .unwrap_err();
    assert!(e.stderr.contains("frozen"), "{}", e.stderr);
    s.ok(&["unfreeze", &name]);
    s.ok(&["stop", "-t", "1", &name]);
    assert_gone(&s, &name);
    let e = s
        .berth(&["exec", "--no-tty", &name, "--", "/bin/true"])
        .unwrap_err();
    assert!(e.stderr.contains("not running"), "{}", e.stderr);
}

#[test]
fn monitors_killed_at_random_points_are_cleaned_up_after() {
    if !root_or_skip() {
        return;
    }
    let (mut rng, seed) = berth_tests::rng::Rng::from_env();
    let s = Store::new();
    let name = unique_name("life-rand");
    s.ok(&["create", &name]);
    for round in 0..8 {
        let start = s.berth_in_thread(&["start", &name, "--", "/bin/sleep", "60"]);
        // The monitor writes its pid into the run state as it mounts.
        let monitor = loop {
            if let Ok(text) = std::fs::read_to_string(run_state(&s, &name)) {
                if let Some(pid) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("pid = "))
                    .and_then(|p| p.trim().parse::<i32>().ok())
                {
                    break Some(pid);
                }
            }
            if start.is_finished() {
                break None;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        std::thread::sleep(Duration::from_millis(rng.below(60)));
        if let Some(pid) = monitor.and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        // `start` either saw its command run or says it could not.
        let _ = start.join().unwrap();
        s.ok(&["create", &unique_name(&format!("life-rand{round}"))]);
        assert_eq!(
            state_of(&s, &name),
            "stopped",
            "round {round} (seed {seed:#x})"
        );
        assert_gone(&s, &name);
    }
}

#[test]
fn logs_follow_until_the_container_ends() {
    if !root_or_skip() {
        return;
    }
    let s = Store::new();
    let name = unique_name("life-follow");
    s.ok(&["create", &name]);
    let script = "for i in 1 2 3 4 5; do echo line $i; sleep 0.1; done";
    s.ok(&["start", &name, "--", "/bin/sh", "-c", script]);
    // Started before the last lines are written; returns once it has ended.
    let out = s.ok(&["logs", "-f", &name]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["line 1", "line 2", "line 3", "line 4", "line 5"],
        "{out}"
    );
    let out = s.ok(&["wait", &name]);
    assert!(out.contains("code 0"), "{out}");
    assert_gone(&s, &name);
}

/// `start -t` then `attach` from a real terminal (tmux): typed input reaches
/// the container, its window size follows the terminal's, Ctrl-P Ctrl-Q
/// detaches and leaves it running, and attaching again to `exit 3` ends the
/// attach with the container's status.
#[test]
fn attach_and_detach_through_a_real_terminal() {
    if !root_or_skip() {
        return;
    }
    let Some(t) = Tmux::start("berth-attach", "env PS1='$ ' sh") else {
        return;
    };
    let s = Store::new();
    let name = unique_name("life-tty");
    s.ok(&["create", &name]);
    s.ok(&["start", &name, "-t", "--", "/bin/sh"]);
    t.wait_until("the prompt", |sc| sc.contains("$ "));
    let attach = format!(
        "{} --root {} attach {name}; echo attach-exit=$?",
        s.bin().display(),
        s.root().display()
    );
    // Raw mode flushes what was typed before it: type once the shell answers.
    let attached = || {
        let prompts = t.screen().matches("/ #").count();
        for _ in 0..100 {
            t.tmux(&["send-keys", "Enter"]);
            std::thread::sleep(Duration::from_millis(200));
            if t.screen().matches("/ #").count() > prompts {
                return;
            }
        }
        panic!("the attach did not connect:\n{}", t.screen());
    };
    t.line(&attach);
    attached();
    t.line("echo marker-$((6*7)); stty size");
    t.wait_until("the container's answer", |sc| {
        sc.contains("marker-42") && sc.contains("50 200")
    });
    // Only one client at a time.
    let second = s.berth(&["attach", &name]).unwrap_err();
    assert!(
        second.stderr.contains("another berth attach"),
        "{}",
        second.stderr
    );
    t.tmux(&["resize-window", "-x", "120", "-y", "40"]);
    t.line("stty size");
    t.wait_until("the new size", |sc| sc.contains("40 120"));
    t.tmux(&["send-keys", "C-p", "C-q"]);
    let sc = t.wait_until("the detach", |sc| sc.contains("attach-exit=0"));
    assert!(sc.contains("detached from"), "{sc}");
    assert_eq!(state_of(&s, &name), "running");
    // What it wrote is in its log too.
    let log = s.ok(&["logs", &name]);
    assert!(log.contains("marker-42"), "{log}");

    t.line(&attach);
    attached();
    t.line("exit 3");
    t.wait_until("the end", |sc| sc.contains("attach-exit=3"));
    assert!(wait_for(|| state_of(&s, &name) == "stopped"));
    assert!(!s.root().join(format!("run/{name}.tty")).exists());
    assert_gone(&s, &name);
    s.ok(&["destroy", &name]);
}

/// The benchmarks run end to end and leave nothing behind (their figures are
/// for the README, never asserted).
#[test]
fn the_lifecycle_and_run_benchmarks_leave_nothing() {
    if !root_or_skip() {
        return;
    }
    let s = Store::new();
    let name = unique_name("life-bench");
    s.ok(&["create", &name]);
    let out = s.ok(&["bench", "lifecycle", &name, "--runs", "2"]);
    assert!(out.contains("exec /bin/true"), "{out}");
    let out = s.ok(&["bench", "run", &name, "--runs", "2"]);
    assert!(
        out.contains("BERTH/FLOOR") && out.contains("floor"),
        "{out}"
    );
    assert!(
        berth_bdev::mount::mounts_under(s.root()).is_empty(),
        "mounts left under the store"
    );
    assert_gone(&s, &name);
    s.ok(&["destroy", &name]);
}
