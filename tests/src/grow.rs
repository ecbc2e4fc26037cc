//! A berth killed while it grows a volume's filesystem (xfs grows only while
//! mounted, so the volume is mounted for the moment) must leave nothing that
//! blocks the volume: the next command that needs it removes the mount of
//! the berth that is gone, and resizing to the same size again grows the
//! filesystem the kill left at its old size. Run through the berth binary,
//! killed at the crash point `grow:mounted`.

use std::fs;

use berth_bdev::mount;

use crate::cli::{unique_name, Store};
use crate::harness::skip;

/// The size of the container's root filesystem in KiB, from `df` inside it.
fn root_kib(s: &Store, name: &str) -> u64 {
    let out = s.ok(&["run", name, "--", "df", "-k", "/"]);
    out.lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("df: {out}"))
}

/// The check, on a new pool of `backend` (loop or qcow2) with xfs volumes.
pub fn killed_grow_leaves_nothing(backend: &str) {
    if !rustix::process::geteuid().is_root() {
        skip("block-backed volumes need root");
        return;
    }
    let s = Store::new();
    let pool = s.root().join("grow-pool");
    fs::create_dir_all(&pool).expect("pool directory");
    let path = pool.to_string_lossy().into_owned();
    s.ok(&[
        "pool", "add", "-B", backend, "--fstype", "xfs", "--path", &path, "gp",
    ]);
    let c = unique_name("grow-kill");
    s.ok(&["create", "--pool", "gp", &c]);
    let before = root_kib(&s, &c);
    let killed = s.berth_env(
        &[("BERTH_CRASH_AT", "grow:mounted")],
        &["resize", &c, "1536M"],
    );
    assert!(
        killed.is_err_and(|f| f.killed()),
        "the crash point was not reached"
    );
    assert!(
        !mount::mounts_under(&pool).is_empty(),
        "the kill left no grow mount: nothing was checked"
    );
    // The next resize finds the mount of a berth that is gone, removes it and
    // grows the filesystem.
    s.ok(&["resize", &c, "1536M"]);
    assert!(
        mount::mounts_under(&pool).is_empty(),
        "{:?}",
        mount::mounts_under(&pool)
    );
    let after = root_kib(&s, &c);
    eprintln!(
        "{backend}: root filesystem {before} KiB, {after} KiB after the killed grow and a resize"
    );
    assert!(
        after > before + (400 << 10),
        "{backend}: the filesystem went from {before} KiB to {after} KiB"
    );
    // And a kill followed by a start: the start removes it.
    let killed = s.berth_env(&[("BERTH_CRASH_AT", "grow:mounted")], &["resize", &c, "2G"]);
    assert!(killed.is_err_and(|f| f.killed()));
    s.ok(&["run", &c, "--", "/bin/true"]);
    assert!(
        mount::mounts_under(&pool).is_empty(),
        "{:?}",
        mount::mounts_under(&pool)
    );
    s.ok(&["destroy", &c]);
    s.ok(&["pool", "rm", "gp"]);
    let left: Vec<_> = fs::read_dir(&pool)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the pool: {left:?}");
}
