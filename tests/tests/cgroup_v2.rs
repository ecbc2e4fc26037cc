//! berth-runtime's cgroups on a pure cgroup v2 host: this host keeps its
//! controllers on v1, so the checks of `berth_tests::cgroups::checks` run in
//! the test VM (see `tests/src/vm/`), booted with `cgroup_no_v1=all` and
//! cgroup2 at /sys/fs/cgroup. There they go through subtree_control,
//! memory.max, memory.swap.max, pids.max, cpu.max, cpuset.cpus, cgroup.kill
//! and the BPF device program. One boot runs them all.

use std::path::Path;
use std::time::Duration;

use berth_tests::vm::{run_in_vm_with, GuestConfig};

#[test]
fn cgroup_checks_in_a_pure_v2_vm() {
    let guest = Path::new(env!("CARGO_BIN_EXE_berth-cgroup-guest"));
    let cfg = GuestConfig { pure_cgroup2: true };
    run_in_vm_with(guest, &["v2", "all"], Duration::from_secs(300), &cfg);
}
