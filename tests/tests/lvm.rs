//! lvm-specific behaviour against a real device-mapper, inside the test VM (see
//! tests/src/vm.rs): thin snapshots are O(1) and outlive their origin, classic
//! snapshots pin theirs, resize grows the filesystem, and LVM's refusals surface
//! as clear errors. On the host, the probe must name what is missing.

use std::path::Path;
use std::time::Duration;

use berth_bdev::generic::with_mounted;
use berth_bdev::{BdevError, CreateOpts, Revert, VolumeSpec};
use berth_tests::harness::{harness, write_incompressible, Harness};
use berth_tests::pools::lvm::{setup_classic, setup_thin};

fn opts(mib: u64) -> CreateOpts {
    CreateOpts {
        size: Some(mib << 20),
        fstype: None,
    }
}

fn write_mib(h: &Harness, v: &VolumeSpec, file: &str, mib: usize) {
    with_mounted(h.backend.as_ref(), v, &h.scratch("mnt"), false, |root| {
        let p = root.join(file);
        let mut f = std::fs::File::create(&p).map_err(BdevError::io("create", &p))?;
        write_incompressible(&mut f, mib, 7).map_err(BdevError::io("write", &p))?;
        f.sync_all().map_err(BdevError::io("sync", &p))
    })
    .unwrap_or_else(|e| panic!("write {file}: {e}"));
}

fn file_len(h: &Harness, v: &VolumeSpec, file: &str) -> Option<u64> {
    with_mounted(h.backend.as_ref(), v, &h.scratch("mnt"), true, |root| {
        Ok(std::fs::metadata(root.join(file)).ok().map(|m| m.len()))
    })
    .unwrap_or_else(|e| panic!("read {file}: {e}"))
}

/// Bytes the thin pool `VG/pool` has mapped.
fn pool_used(h: &Harness) -> u64 {
    let vg = h.pool.vg.clone().unwrap_or_default();
    let out = berth_bdev::cmd::run(
        &berth_bdev::cmd::HostRunner,
        "lvs",
        &[
            "--reportformat",
            "json",
            "-o",
            "lv_name,vg_name,lv_size,data_percent,origin,pool_lv,lv_attr",
            "--units",
            "b",
            "--nosuffix",
            &format!("{vg}/pool"),
        ],
    )
    .expect("lvs");
    let lvs = berth_backends::lvm::parse_lvs(&out.stdout).expect("parse lvs");
    lvs[0].allocated().expect("pool data_percent")
}

#[test]
#[ignore = "needs device-mapper: runs inside the test VM"]
fn thin_snapshots_are_o1_and_outlive_their_origin() {
    let Some(h) = harness(setup_thin) else {
        return;
    };
    let v = h.create("big", &opts(256));
    write_mib(&h, &v, "data", 32);
    let before = pool_used(&h);
    let snap = h.snapshot(&v, "big", "s1");
    let clone = h.clone_of(&snap, "c1");
    let after = pool_used(&h);
    assert!(
        after < before + (1 << 20),
        "a snapshot and a clone of 32 MiB mapped {} new bytes",
        after - before
    );
    let u = h.backend.usage(&clone).expect("usage");
    assert!(
        u.used_bytes >= 32 << 20,
        "clone maps the shared data: {u:?}"
    );
    assert_eq!(u.limit_bytes, Some(256 << 20));
    // Thin snapshots map pool blocks themselves: the origin can go first.
    h.backend
        .destroy(&v)
        .expect("destroy origin before its snapshot");
    assert_eq!(file_len(&h, &snap, "data"), Some(32 << 20));
    assert_eq!(file_len(&h, &clone, "data"), Some(32 << 20));
    h.backend.destroy(&clone).expect("destroy clone");
    h.backend.destroy_snapshot(&snap).expect("destroy snapshot");
}

#[test]
#[ignore = "needs device-mapper: runs inside the test VM"]
fn classic_snapshots_pin_their_origin() {
    let Some(h) = harness(setup_classic) else {
        return;
    };
    let v = h.create("o", &opts(64));
    write_mib(&h, &v, "data", 4);
    let snap = h.snapshot(&v, "o", "s1");
    let e = h.backend.destroy(&v).expect_err("origin with a snapshot");
    assert!(
        e.to_string().contains("o+s1"),
        "the refusal names the snapshot: {e}"
    );
    assert_eq!(file_len(&h, &v, "data"), Some(4 << 20), "origin intact");
    assert!(matches!(
        h.backend.snapshot_clone(&v, "c", &mut Revert::new()),
        Err(BdevError::Unsupported { .. })
    ));
    let s2 = h
        .backend
        .snapshot(&snap, "o", "s2", &mut Revert::new())
        .expect_err("a snapshot of a classic snapshot");
    assert!(matches!(s2, BdevError::Unsupported { .. }), "{s2}");
    h.backend.destroy_snapshot(&snap).expect("destroy snapshot");
    h.backend.destroy(&v).expect("destroy origin");
}

#[test]
#[ignore = "needs device-mapper: runs inside the test VM"]
fn resize_grows_the_filesystem_and_refuses_to_shrink() {
    let Some(h) = harness(setup_thin) else {
        return;
    };
    let v = h.create("r", &opts(128));
    write_mib(&h, &v, "a", 8);
    h.backend.resize(&v, 512 << 20).expect("grow");
    let total = with_mounted(h.backend.as_ref(), &v, &h.scratch("mnt"), true, |root| {
        let st = rustix::fs::statvfs(root).map_err(|e| BdevError::Io {
            op: "statvfs",
            path: root.to_path_buf(),
            source: e.into(),
        })?;
        Ok(st.f_blocks * st.f_frsize)
    })
    .expect("statvfs");
    assert!(
        total > 400 << 20,
        "filesystem is {total} bytes after resize"
    );
    assert_eq!(file_len(&h, &v, "a"), Some(8 << 20));
    let e = h.backend.resize(&v, 64 << 20).expect_err("shrink");
    assert!(e.to_string().contains("only grow"), "{e}");
    h.backend.destroy(&v).expect("destroy");
}

#[test]
#[ignore = "needs device-mapper: runs inside the test VM"]
fn lvm_refusals_are_clear_and_harmless() {
    let Some(h) = harness(setup_thin) else {
        return;
    };
    // LVM reserves `_tmeta` and friends for internal LVs.
    let mut rv = Revert::new();
    let e = h
        .backend
        .create("x_tmeta", &opts(64), &mut rv)
        .expect_err("reserved LV name");
    drop(rv);
    assert!(e.to_string().contains("lvcreate"), "{e}");
    let v = h.create("busy", &opts(64));
    let mnt = h.scratch("held");
    let guard = h.backend.mount(&v, &mnt, false).expect("mount");
    let e = h.backend.destroy(&v).expect_err("destroy while mounted");
    assert!(e.to_string().contains("lvremove"), "{e}");
    guard.release().expect("unmount");
    h.backend.destroy(&v).expect("destroy");
    let e = h.backend.destroy(&v).expect_err("destroy twice");
    assert!(matches!(e, BdevError::NotFound { .. }), "{e}");
}

/// Boots the VM for the tests above.
#[test]
fn lvm_specific_in_a_vm() {
    if berth_tests::vm::in_vm() {
        return;
    }
    berth_tests::vm::run_ignored_in_vm("", 4, Duration::from_secs(600));
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
    let mut pool = berth_bdev::PoolConfig::new("p", berth_bdev::BackendKind::Lvm);
    pool.vg = Some("vg0".into());
    let b = berth_backends::open(&pool, berth_tests::harness::runner()).expect("open");
    let e = b.probe().expect_err("probe without device-mapper");
    assert!(matches!(e, BdevError::Unavailable { .. }), "{e}");
    assert!(e.to_string().contains("no device-mapper"), "{e}");
}

/// A VM that overruns its deadline is killed, and no qemu survives the test.
#[test]
fn vm_past_its_deadline_is_killed() {
    if berth_tests::vm::in_vm() {
        return;
    }
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
    let exe = std::env::current_exe().expect("current exe");
    berth_tests::vm::initramfs(&a, &exe, &["--ignored", "--test-threads=1"], &initrd)
        .expect("initramfs");
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
