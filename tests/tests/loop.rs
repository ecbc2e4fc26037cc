//! Privileged tests of the loop backend: each filesystem, reflink clones on a
//! reflink pool and their refusal elsewhere, UUIDs of clones, resize, and loop
//! devices released after every unmount and failed mount.

use std::fs;
use std::path::{Path, PathBuf};

use berth_backends::r#loop::LoopSpec;
use berth_bdev::cmd::{self, HostRunner};
use berth_bdev::generic::with_mounted;
use berth_bdev::loopdev;
use berth_bdev::mount;
use berth_bdev::plan::{CloneMode, ClonePlan};
use berth_bdev::{BdevError, CreateOpts, FsType, MountGuard, Revert, SpecForm, VolumeSpec};
use berth_core::ops::plan_clone;
use berth_tests::harness::{harness, wait_for, write_incompressible, Harness};
use berth_tests::pools::r#loop::{setup, setup_ext4};

fn opts(size: u64, fstype: FsType) -> CreateOpts {
    CreateOpts {
        size: Some(size),
        fstype: Some(fstype),
    }
}

fn image(v: &VolumeSpec) -> PathBuf {
    LoopSpec::from_spec(v)
        .unwrap_or_else(|e| panic!("not a loop volume: {e}"))
        .image
}

fn write(h: &Harness, v: &VolumeSpec, rel: &str, data: &[u8]) {
    with_mounted(h.backend.as_ref(), v, &h.scratch("mnt"), false, |root| {
        fs::write(root.join(rel), data).map_err(BdevError::io("write", root.join(rel)))
    })
    .unwrap_or_else(|e| panic!("write {rel} into {v}: {e}"));
}

fn read(h: &Harness, v: &VolumeSpec, rel: &str) -> Option<Vec<u8>> {
    with_mounted(h.backend.as_ref(), v, &h.scratch("mnt"), true, |root| {
        Ok(fs::read(root.join(rel)).ok())
    })
    .unwrap_or_else(|e| panic!("read {rel} from {v}: {e}"))
}

/// Mounts `v` on a fresh directory under the test's temp dir.
fn mount_at(h: &Harness, v: &VolumeSpec, name: &str, ro: bool) -> MountGuard {
    let at = h.scratch(name);
    h.backend
        .mount(v, &at, ro)
        .unwrap_or_else(|e| panic!("mount {v} on {at:?}: {e}"))
}

/// `df -B1 --output=FIELD` of the filesystem holding `path`.
fn df(path: &Path, field: &str) -> u64 {
    let out = cmd::run(
        &HostRunner,
        "df",
        &["-B1", &format!("--output={field}"), &path.to_string_lossy()],
    )
    .expect("df");
    out.stdout
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("df output: {}", out.stdout))
}

fn fstype_mounted_at(at: &Path) -> String {
    let at = fs::canonicalize(at).expect("canonicalize");
    mount::mounts()
        .into_iter()
        .find(|m| m.mount_point == at)
        .map(|m| m.fstype)
        .unwrap_or_default()
}

fn released(img: &Path) -> bool {
    wait_for(|| loopdev::devices_backed_by(img).is_empty())
}

#[test]
fn ext4_xfs_btrfs_create_mount_write_read() {
    let Some(h) = harness(setup) else { return };
    for fstype in [FsType::Ext4, FsType::Xfs, FsType::Btrfs] {
        let name = format!("v-{fstype}");
        let v = h.create(&name, &opts(512 << 20, fstype));
        let img = image(&v);
        let mut head = Vec::new();
        fs::File::open(&img)
            .and_then(|f| {
                std::io::Read::read_to_end(&mut std::io::Read::take(f, 70_000), &mut head)
            })
            .expect("read image head");
        assert_eq!(berth_backends::r#loop::detect(&head), Some(fstype));
        let g = mount_at(&h, &v, &format!("m-{fstype}"), false);
        assert_eq!(fstype_mounted_at(g.path()), fstype.as_str());
        fs::write(g.path().join("hello"), fstype.as_str()).expect("write");
        g.release().expect("unmount");
        assert!(released(&img), "{fstype}: loop device kept after unmount");
        assert_eq!(
            read(&h, &v, "hello").as_deref(),
            Some(fstype.as_str().as_bytes())
        );
        let u = h.backend.usage(&v).expect("usage");
        assert_eq!(u.limit_bytes, Some(512 << 20));
        h.backend.destroy(&v).expect("destroy");
        assert!(!img.exists());
    }
}

/// 200 MB of incompressible-looking data (xorshift), written in 1 MiB chunks.
fn write_200mb(h: &Harness, v: &VolumeSpec) {
    with_mounted(h.backend.as_ref(), v, &h.scratch("mnt"), false, |root| {
        let p = root.join("big");
        let mut f = fs::File::create(&p).map_err(BdevError::io("create", &p))?;
        write_incompressible(&mut f, 200, 0x9E37_79B9_7F4A_7C15)
            .map_err(BdevError::io("write", &p))?;
        f.sync_all().map_err(BdevError::io("sync", &p))
    })
    .expect("write 200 MB");
}

#[test]
fn reflink_pool_clones_share_extents() {
    let Some(h) = harness(setup) else { return };
    let caps = h.backend.caps();
    assert!(caps.snapshot_clone && caps.clone_from_snapshot && caps.copy_on_write);
    assert!(!caps.clone_pins_origin);
    assert_eq!(
        plan_clone(
            h.backend.as_ref(),
            h.backend.as_ref(),
            true,
            false,
            CloneMode::Snapshot
        )
        .expect("plan"),
        ClonePlan::SnapshotClone { pins_origin: false }
    );
    let v = h.create("origin", &opts(512 << 20, FsType::Ext4));
    write_200mb(&h, &v);
    let pool_dir = h.pool.path.clone().expect("pool path");
    let before = df(&pool_dir, "used");
    let mut rv = Revert::new();
    let c = h
        .backend
        .snapshot_clone(&v, "clone", &mut rv)
        .expect("snapshot clone");
    rv.commit();
    let grown = df(&pool_dir, "used").saturating_sub(before);
    assert!(
        grown < 10 << 20,
        "a reflinked clone of a 200 MB image took {grown} bytes"
    );
    // The clone has the data and is independent of its origin.
    assert_eq!(read(&h, &c, "big").map(|b| b.len()), Some(200 << 20));
    write(&h, &c, "mine", b"clone");
    assert_eq!(read(&h, &v, "mine"), None);
    h.backend.destroy(&v).expect("destroy origin");
    assert_eq!(read(&h, &c, "mine").as_deref(), Some(&b"clone"[..]));
    h.backend.destroy(&c).expect("destroy clone");
}

#[test]
fn ext4_pool_refuses_snapshot_clones_and_copies_sparsely() {
    let Some(h) = harness(setup_ext4) else { return };
    let caps = h.backend.caps();
    assert!(!caps.snapshot_clone && !caps.clone_from_snapshot && !caps.copy_on_write);
    let e = plan_clone(
        h.backend.as_ref(),
        h.backend.as_ref(),
        true,
        false,
        CloneMode::Snapshot,
    )
    .expect_err("--snapshot must be refused without reflink")
    .to_string();
    assert!(e.contains("reflink"), "{e}");
    assert!(e.contains("--copy"), "{e}");
    let v = h.create("origin", &opts(512 << 20, FsType::Ext4));
    write(&h, &v, "f", b"data");
    let mut rv = Revert::new();
    assert!(matches!(
        h.backend.snapshot_clone(&v, "nope", &mut rv),
        Err(BdevError::Unsupported { .. })
    ));
    let c = h
        .backend
        .copy_clone(&v, "copy", &CreateOpts::default(), &mut rv)
        .expect("copy clone");
    rv.commit();
    let (src, dst) = (h.backend.usage(&v).unwrap(), h.backend.usage(&c).unwrap());
    assert!(
        dst.used_bytes < src.used_bytes + (8 << 20),
        "the copy of a sparse image is not sparse: {} vs {}",
        dst.used_bytes,
        src.used_bytes
    );
    assert!(dst.used_bytes < 256 << 20);
    assert_eq!(read(&h, &c, "f").as_deref(), Some(&b"data"[..]));
    h.backend.destroy(&c).expect("destroy");
    h.backend.destroy(&v).expect("destroy");
}

/// Clones get their own filesystem UUID, so origin and clones mount side by side
/// (xfs and btrfs refuse a second mount of a UUID otherwise).
#[test]
fn xfs_and_btrfs_clones_mount_at_the_same_time() {
    let Some(h) = harness(setup) else { return };
    for fstype in [FsType::Xfs, FsType::Btrfs] {
        let v = h.create(&format!("o-{fstype}"), &opts(512 << 20, fstype));
        write(&h, &v, "who", b"origin");
        let mut rv = Revert::new();
        let c1 = h
            .backend
            .snapshot_clone(&v, &format!("c1-{fstype}"), &mut rv)
            .expect("clone 1");
        let c2 = h
            .backend
            .snapshot_clone(&v, &format!("c2-{fstype}"), &mut rv)
            .expect("clone 2");
        rv.commit();
        let g0 = mount_at(&h, &v, &format!("m0-{fstype}"), false);
        let g1 = mount_at(&h, &c1, &format!("m1-{fstype}"), false);
        let g2 = mount_at(&h, &c2, &format!("m2-{fstype}"), false);
        for g in [&g0, &g1, &g2] {
            assert_eq!(fs::read(g.path().join("who")).expect("read"), b"origin");
        }
        fs::write(g1.path().join("who"), "c1").expect("write c1");
        assert_eq!(fs::read(g2.path().join("who")).expect("read"), b"origin");
        for g in [g0, g1, g2] {
            g.release().expect("unmount");
        }
        for x in [&v, &c1, &c2] {
            assert!(released(&image(x)));
            h.backend.destroy(x).expect("destroy");
        }
    }
}

#[test]
fn resize_grows_ext4_xfs_and_btrfs_and_refuses_to_shrink() {
    let Some(h) = harness(setup) else { return };
    for fstype in [FsType::Ext4, FsType::Xfs, FsType::Btrfs] {
        let v = h.create(&format!("r-{fstype}"), &opts(512 << 20, fstype));
        write(&h, &v, "keep", b"kept");
        let size_of = |name: &str| {
            let g = mount_at(&h, &v, name, true);
            let s = df(g.path(), "size");
            g.release().expect("unmount");
            s
        };
        let before = size_of(&format!("s0-{fstype}"));
        h.backend
            .resize(&v, 1 << 30)
            .unwrap_or_else(|e| panic!("resize {fstype}: {e}"));
        assert_eq!(fs::metadata(image(&v)).unwrap().len(), 1 << 30);
        let after = size_of(&format!("s1-{fstype}"));
        assert!(
            after > before + (400 << 20),
            "{fstype}: filesystem size {before} -> {after} after growing 512 MiB -> 1 GiB"
        );
        assert_eq!(read(&h, &v, "keep").as_deref(), Some(&b"kept"[..]));
        let e = h
            .backend
            .resize(&v, 512 << 20)
            .expect_err("shrink")
            .to_string();
        assert!(e.contains("only grow"), "{e}");
        // Mounted: an offline grow would race the mounted filesystem.
        let g = mount_at(&h, &v, &format!("busy-{fstype}"), false);
        let e = h
            .backend
            .resize(&v, 2 << 30)
            .expect_err("resize while mounted");
        assert!(e.to_string().contains("refuse to resize"), "{e}");
        assert!(format!("{e:?}").contains("unmount it first"), "{e:?}");
        g.release().expect("unmount");
        assert!(released(&image(&v)));
        h.backend.destroy(&v).expect("destroy");
    }
}

#[test]
fn loop_devices_are_released_after_unmount_and_failed_mounts() {
    let Some(h) = harness(setup) else { return };
    let v = h.create("c", &opts(256 << 20, FsType::Ext4));
    let img = image(&v);
    let g = mount_at(&h, &v, "m", false);
    assert_eq!(loopdev::devices_backed_by(&img).len(), 1);
    g.release().expect("unmount");
    assert!(released(&img), "loop device kept after unmount");

    // A superblock magic over garbage: detection passes, the kernel mount fails.
    let pool = h.pool.path.clone().expect("pool path");
    let garbage = pool.join("garbage.img");
    let mut bytes = vec![0xA5u8; 4 << 20];
    bytes[1080..1082].copy_from_slice(&[0x53, 0xEF]);
    fs::write(&garbage, &bytes).expect("write garbage");
    let gv = LoopSpec {
        image: garbage.clone(),
    }
    .to_spec();
    let at = h.scratch("m2");
    let err = h
        .backend
        .mount(&gv, &at, false)
        .expect_err("garbage must not mount");
    assert!(matches!(err, BdevError::Mount(_)), "{err:?}");
    assert!(released(&garbage), "loop device kept after a failed mount");
    assert!(!mount::is_mountpoint(&at));

    // No superblock at all: refused before a device is attached.
    let zero = pool.join("zero.img");
    fs::write(&zero, vec![0u8; 1 << 20]).expect("write zeros");
    let err = h
        .backend
        .mount(
            &LoopSpec {
                image: zero.clone(),
            }
            .to_spec(),
            &at,
            false,
        )
        .expect_err("no filesystem");
    assert!(
        err.to_string().contains("no ext2/3/4, xfs or btrfs"),
        "{err}"
    );
    assert!(loopdev::devices_backed_by(&zero).is_empty());
    h.backend.destroy(&gv).expect("destroy garbage");
    h.backend
        .destroy(&LoopSpec { image: zero }.to_spec())
        .expect("destroy zero");
    h.backend.destroy(&v).expect("destroy");
}

#[test]
fn snapshots_are_read_only_and_need_a_quiet_volume() {
    let Some(h) = harness(setup) else { return };
    let v = h.create("s", &opts(256 << 20, FsType::Ext4));
    write(&h, &v, "f", b"one");
    // Mounted read-write: the image is in flux, so snapshot and clone are refused.
    let g = mount_at(&h, &v, "rw", false);
    let mut rv = Revert::new();
    let e = h
        .backend
        .snapshot(&v, "s", "busy", &mut rv)
        .expect_err("snapshot of a rw mount");
    assert!(format!("{e:?}").contains("unmount it first"), "{e:?}");
    assert!(h.backend.snapshot_clone(&v, "busy-clone", &mut rv).is_err());
    // A second writer is refused too.
    let at = h.scratch("rw2");
    assert!(h.backend.mount(&v, &at, false).is_err());
    g.release().expect("unmount");
    drop(rv);

    // Mounted read-only is quiet enough.
    let g = mount_at(&h, &v, "ro", true);
    let mut rv = Revert::new();
    let snap = h
        .backend
        .snapshot(&v, "s", "s1", &mut rv)
        .expect("snapshot of a ro mount");
    rv.commit();
    g.release().expect("unmount");

    // The snapshot mounts read-only even when asked for read-write.
    let g = mount_at(&h, &snap, "snap", false);
    assert!(
        fs::write(g.path().join("f"), "two").is_err(),
        "a snapshot was writable"
    );
    assert_eq!(fs::read(g.path().join("f")).expect("read"), b"one");
    g.release().expect("unmount");
    assert!(h.backend.resize(&snap, 1 << 30).is_err());
    h.backend.destroy_snapshot(&snap).expect("destroy snapshot");
    assert!(!image(&snap).exists());
    h.backend.destroy(&v).expect("destroy");
}

/// A berth killed while growing an xfs volume leaves nothing that blocks it.
#[test]
fn a_resize_killed_while_growing_leaves_nothing_that_blocks_the_volume() {
    berth_tests::grow::killed_grow_leaves_nothing("loop");
}
