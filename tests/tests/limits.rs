//! Privileged: `berth run`'s resource limits on the real kernel, through each
//! container's own cgroup `<our cgroup>/berth/<NAME>`: a fork bomb stops at
//! `--pids`, a memory hog is OOM-killed inside its `--memory` while berth exits
//! with its status, `--cpus` and the default pids.max are what the cgroup
//! files say while the container runs. Nothing may be left afterwards.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use berth_tests::cli::{
    assert_run_left_nothing, caller_cgroups, container_cgroup_file, procs_in_container_cgroup,
    unique_name, Failed, Store,
};
use berth_tests::harness::skip;

const PROBE: &str = env!("CARGO_BIN_EXE_berth-probe");

/// A store holding container `name` (minimal template) with the probe in it.
fn store_with_probe(name: &str) -> Option<Store> {
    if !rustix::process::geteuid().is_root() {
        skip("berth run needs root");
        return None;
    }
    let s = Store::new();
    s.ok(&["create", name]);
    s.install_probe(name, Path::new(PROBE));
    Some(s)
}

fn run_ok(s: &Store, args: &[&str]) -> String {
    s.berth(args)
        .unwrap_or_else(|f| panic!("berth {args:?} failed ({}): {}", f.status, f.stderr))
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    let name = unique_name("lim-pids");
    let Some(s) = store_with_probe(&name) else {
        return;
    };
    let out = run_ok(
        &s,
        &[
            "run",
            "--no-tty",
            "--pids",
            "64",
            &name,
            "--",
            "/berth-probe",
            "fork-loop",
            "500",
        ],
    );
    assert_run_left_nothing(&name, None);
    let line = out
        .lines()
        .find(|l| l.starts_with("FORK-LOOP "))
        .unwrap_or_else(|| panic!("no FORK-LOOP line in:\n{out}"));
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {k} in {line:?}"))
    };
    let forked: usize = field("forked").parse().unwrap();
    // The probe itself is one of the 64.
    assert!(
        forked > 0 && forked < 64,
        "forked {forked} with --pids 64: {line}"
    );
    assert_eq!(field("error"), "EAGAIN", "{line}");
    s.ok(&["destroy", &name]);
}

#[test]
fn memory_limit_oom_kills_inside_the_container() {
    let name = unique_name("lim-mem");
    let Some(s) = store_with_probe(&name) else {
        return;
    };
    let args = [
        "run",
        "--no-tty",
        "--memory",
        "64M",
        &name,
        "--",
        "/berth-probe",
        "alloc",
        "512",
    ];
    let result = s.berth(&args);
    assert_run_left_nothing(&name, None);
    let f: Failed = match result {
        Ok(out) => panic!("alloc 512 finished under --memory 64M:\n{out}"),
        Err(f) => f,
    };
    // The probe prints its progress on stderr, which a failed run still gives us.
    let reached = f
        .stderr
        .lines()
        .filter_map(|l| {
            l.strip_prefix("ALLOC ")?
                .strip_suffix(" MiB")?
                .parse::<u32>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    // berth itself exits normally, with the status of its SIGKILLed command.
    assert_eq!(
        f.code(),
        Some(137),
        "berth: {}; reached {reached} MiB; stderr:\n{}",
        f.status,
        f.stderr
    );
    assert!(
        !f.stderr.contains("panicked") && !f.stderr.contains("ALLOC done"),
        "{}",
        f.stderr
    );
    assert!(
        reached > 0 && reached < 256,
        "touched {reached} MiB under a 64 MiB limit; stderr:\n{}",
        f.stderr
    );
    s.ok(&["destroy", &name]);
}

/// A berth run on another thread; dropping it waits for berth to end, so a
/// failed check never leaves it running past the test.
struct Background(Option<JoinHandle<Result<String, Failed>>>);

impl Background {
    fn start(s: &Store, args: &[&str]) -> Background {
        Background(Some(s.berth_in_thread(args)))
    }

    /// Waits until a process is in container `name`'s cgroup: berth has set
    /// the limits by then.
    fn wait_running(&mut self, name: &str) {
        let start = Instant::now();
        while procs_in_container_cgroup(name).is_empty() {
            if self.0.as_ref().is_some_and(JoinHandle::is_finished) {
                let ended = self.0.take().map(JoinHandle::join);
                panic!(
                    "berth ended before a process showed up in a berth/{name} cgroup: {ended:?}"
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no process showed up in a berth/{name} cgroup within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(mut self) {
        match self.0.take().map(JoinHandle::join) {
            Some(Ok(Ok(_))) | None => {}
            Some(Ok(Err(f))) => panic!("berth run failed ({}): {}", f.status, f.stderr),
            Some(Err(_)) => panic!("the berth thread panicked"),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

fn read(file: &Path) -> String {
    std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .trim()
        .to_owned()
}

/// Container `name`'s cgroup file for `controller`, and whether it is v1's.
fn cgroup_file(name: &str, controller: &str, v1: &str, v2: &str) -> (PathBuf, bool) {
    container_cgroup_file(name, controller, v1, v2).unwrap_or_else(|| {
        panic!(
            "no cgroup hierarchy for {controller}: {:?}",
            caller_cgroups()
        )
    })
}

#[test]
fn cpus_sets_the_cfs_quota_while_the_container_runs() {
    let name = unique_name("lim-cpu");
    if !rustix::process::geteuid().is_root() {
        skip("berth run needs root");
        return;
    }
    let s = Store::new();
    s.ok(&["create", &name]);
    let (quota_file, v1) = cgroup_file(&name, "cpu", "cpu.cfs_quota_us", "cpu.max");
    let mut run = Background::start(
        &s,
        &[
            "run", "--no-tty", "--cpus", "0.5", &name, "--", "sleep", "3",
        ],
    );
    run.wait_running(&name);
    let quota = read(&quota_file);
    let period = if v1 {
        read(&quota_file.with_file_name("cpu.cfs_period_us"))
    } else {
        String::new()
    };
    run.finish();
    assert_run_left_nothing(&name, None);
    if v1 {
        assert_eq!((quota.as_str(), period.as_str()), ("50000", "100000"));
    } else {
        assert_eq!(quota, "50000 100000");
    }
    s.ok(&["destroy", &name]);
}

#[test]
fn pids_max_defaults_to_4096() {
    let name = unique_name("lim-dflt");
    if !rustix::process::geteuid().is_root() {
        skip("berth run needs root");
        return;
    }
    let s = Store::new();
    s.ok(&["create", &name]);
    let (pids_file, _) = cgroup_file(&name, "pids", "pids.max", "pids.max");
    let mut run = Background::start(&s, &["run", "--no-tty", &name, "--", "sleep", "3"]);
    run.wait_running(&name);
    let max = read(&pids_file);
    run.finish();
    assert_run_left_nothing(&name, None);
    assert_eq!(max, "4096", "{}", pids_file.display());
    s.ok(&["destroy", &name]);
}
