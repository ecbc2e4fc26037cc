//! lvm-specific behaviour against a real device-mapper, inside the test VM (the
//! tests themselves are in `tests/src/bin/berth-lvm-guest.rs`): thin snapshots
//! are O(1) and outlive their origin, classic snapshots pin theirs, resize grows
//! the filesystem, and LVM's refusals surface as clear errors. On the host, the
//! probe must name what is missing, and a hung VM is killed.

use std::path::Path;
use std::time::Duration;

use berth_bdev::BdevError;

/// Boots the VM for the lvm-specific tests (in `tests/src/bin/berth-lvm-guest.rs`).
#[test]
fn lvm_specific_in_a_vm() {
    let guest = Path::new(env!("CARGO_BIN_EXE_berth-lvm-guest"));
    berth_tests::vm::run_in_vm(guest, &["specific"], Duration::from_secs(600));
}

/// On a host without device-mapper the probe says so, before anything else.
#[test]
fn probe_names_a_missing_device_mapper() {
    let misc = std::fs::read_to_string("/proc/misc").unwrap_or_default();
    if berth_backends::lvm::misc_has_device_mapper(&misc)
        || Path::new("/sys/class/misc/device-mapper").exists()
    {
        eprintln!("SKIP-free: this kernel has device-mapper; nothing to check");
        return;
    }
    let pool = berth_bdev::PoolConfig::new("p", "lvm").with_option("vg", "vg0");
    let b = berth_backends::open(&pool, berth_tests::harness::runner()).expect("open");
    let e = b.probe().expect_err("probe without device-mapper");
    assert!(matches!(e, BdevError::Unavailable { .. }), "{e}");
    assert!(e.to_string().contains("no device-mapper"), "{e}");
}

/// A VM that overruns its deadline is killed, and no qemu survives the test.
#[test]
fn vm_past_its_deadline_is_killed() {
    let a = match berth_tests::vm::assets() {
        Ok(a) => a,
        Err(e) => {
            berth_tests::harness::skip(&format!("cannot build the test VM: {e}"));
            return;
        }
    };
    let work = tempfile::Builder::new()
        .prefix("berth-vm-")
        .tempdir_in("/var/tmp")
        .expect("temp dir");
    let initrd = work.path().join("initrd.cpio");
    let guest = Path::new(env!("CARGO_BIN_EXE_berth-lvm-guest"));
    berth_tests::vm::initramfs(&a, guest, &["specific"], &initrd).expect("initramfs");
    let e = berth_tests::vm::boot(&a, &initrd, work.path(), Duration::from_secs(2))
        .expect_err("the guest cannot finish in 2 s");
    assert!(e.contains("qemu was killed"), "{e}");
    let needle = work.path().to_string_lossy().into_owned();
    let left: Vec<i32> = berth_bdev::process::pids()
        .into_iter()
        .filter(|p| {
            berth_bdev::process::cmdline(*p)
                .is_some_and(|c| String::from_utf8_lossy(&c).contains(&needle))
                && berth_bdev::process::Process::of(*p).is_some()
        })
        .collect();
    assert!(left.is_empty(), "qemu survived: {left:?}");
}
