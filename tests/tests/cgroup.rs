//! Privileged: berth-runtime's per-container cgroups on this host's kernel
//! (cgroup v1 controllers beside a controller-less cgroup2: hybrid). The
//! checks are in `berth_tests::cgroups::checks`, shared with the pure v2 VM
//! (`cgroup_v2.rs`): membership in every hierarchy (of a
//! held process, and of a container the runtime starts), limit files as the kernel
//! reads them back, the device policy (a block node is EPERM inside, /dev/null
//! opens), a fork loop stopped by pids.max, an OOM kill at memory.max, kill and
//! removal, and crash leftovers. Each cgroup has a pid-based name and a guard
//! that removes it and checks nothing named so is left under /sys/fs/cgroup.

use std::path::Path;

use berth_bdev::cmd::{self, HostRunner};
use berth_tests::cgroups::{checks, flavor, missing_prerequisite, Flavor};
use berth_tests::harness::skip;

fn run(check: fn(Flavor)) {
    if let Some(why) = missing_prerequisite() {
        skip(&why);
        return;
    }
    check(flavor());
}

#[test]
fn limits_membership_and_devices() {
    run(checks::limits_membership_and_devices);
}

#[test]
fn a_container_is_in_its_cgroup_in_every_hierarchy() {
    run(checks::a_container_is_in_its_cgroup_in_every_hierarchy);
}

#[test]
fn fork_loop_stops_at_pids_max() {
    run(checks::fork_loop_stops_at_pids_max);
}

#[test]
fn memory_limit_oom_kills() {
    run(checks::memory_limit_oom_kills);
}

#[test]
fn kill_and_remove_kills_every_member() {
    run(checks::kill_and_remove_kills_every_member);
}

#[test]
fn leftovers_are_reclaimed_or_refused() {
    run(checks::leftovers_are_reclaimed_or_refused);
}

#[test]
fn creates_racing_the_parent_removal_succeed() {
    run(checks::creates_racing_the_parent_removal_succeed);
}

#[test]
fn io_weight_is_set_or_refused_cleanly() {
    run(checks::io_weight_is_set_or_refused_cleanly);
}

/// Without a cgroup2 mount (a v1-only host), kill_and_remove has no
/// cgroup.kill: it freezes through the v1 freezer, kills and thaws. Runs the
/// checks' binary in a private mount namespace where the cgroup2 mount of this
/// hybrid host is unmounted.
#[test]
fn kill_and_remove_without_cgroup2_freezes_through_v1() {
    if let Some(why) = missing_prerequisite() {
        skip(&why);
        return;
    }
    let unified = "/sys/fs/cgroup/unified";
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if flavor() != Flavor::V1 || !mounts.contains(&format!(" {unified} ")) {
        skip("needs a hybrid host (v1 controllers, cgroup2 at /sys/fs/cgroup/unified)");
        return;
    }
    if !Path::new("/sys/fs/cgroup/freezer").is_dir() || !cmd::have_program("unshare") {
        skip("needs the v1 freezer and unshare(1)");
        return;
    }
    let guest = env!("CARGO_BIN_EXE_berth-cgroup-guest");
    let script = format!("umount {unified} && exec {guest} v1 \"$1\"");
    for filter in ["kill_and_remove", "leftovers"] {
        let out = cmd::run(
            &HostRunner,
            "unshare",
            &[
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
                "sh",
                filter,
            ],
        )
        .unwrap_or_else(|e| panic!("{filter} without cgroup2: {e}"));
        assert!(
            out.stdout.contains("test result: ok. 1 passed"),
            "{filter}: {}",
            out.stdout
        );
    }
}
