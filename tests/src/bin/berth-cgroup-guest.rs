//! The payload of the pure cgroup v2 VM (see `tests/src/vm/` and
//! `tests/tests/cgroup_v2.rs`): this host mounts the controllers on cgroup v1,
//! so the v2 paths of `berth_runtime::cgroup` (subtree_control, memory.max,
//! cpu.max, cgroup.kill, the BPF device program) run here, in Debian's cloud
//! kernel booted with `cgroup_no_v1=all`. Prints libtest-style lines, which
//! the host test reads from the serial log.
//!
//! `berth-cgroup-guest v2|v1 FILTER` runs the checks whose name contains
//! FILTER (`all`: every one) after making sure /sys/fs/cgroup is of that
//! flavor. The host also runs it as `v1` in a mount namespace without the
//! cgroup2 mount, where removal has to freeze and kill through v1.
// A test runner: its report on stdout is its output.
#![allow(clippy::print_stdout)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;

use berth_tests::cgroups::{self, checks, Flavor};

fn main() -> ExitCode {
    let want = match std::env::args().nth(1).as_deref() {
        Some("v1") => Flavor::V1,
        Some("v2") => Flavor::V2,
        other => {
            eprintln!("usage: berth-cgroup-guest v1|v2 FILTER (got {other:?})");
            return ExitCode::FAILURE;
        }
    };
    let filter = std::env::args().nth(2).unwrap_or_default();
    let cases: Vec<_> = checks::all()
        .into_iter()
        .filter(|(name, _)| filter == "all" || name.contains(filter.as_str()))
        .collect();
    println!("running {} tests", cases.len());
    if let Some(why) = cgroups::missing_prerequisite() {
        println!("the guest cannot run the cgroup checks: {why}");
        return ExitCode::FAILURE;
    }
    if cgroups::flavor() != want {
        println!("/sys/fs/cgroup is not of flavor {want:?}");
        return ExitCode::FAILURE;
    }
    let mut failed = Vec::new();
    for (name, check) in &cases {
        let ok = catch_unwind(AssertUnwindSafe(|| check(want))).is_ok();
        println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        if !ok {
            failed.push(*name);
        }
    }
    let passed = cases.len() - failed.len();
    if failed.is_empty() {
        println!("test result: ok. {passed} passed; 0 failed");
        ExitCode::SUCCESS
    } else {
        println!("failures: {}", failed.join(", "));
        println!(
            "test result: FAILED. {passed} passed; {} failed",
            failed.len()
        );
        ExitCode::FAILURE
    }
}
