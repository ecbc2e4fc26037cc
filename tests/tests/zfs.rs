//! zfs-specific behaviour on a real zpool served by zfs-fuse: O(1) clones, clear
//! refusals for origins with clones, no orphan clone snapshots, promote, and mount
//! bookkeeping (persisted mounts, read-only snapshot mounts), and mount points
//! under the state root when a pool names no path.

use std::fs;
use std::path::Path;

use berth_backends::zfs::ZfsSpec;
use berth_bdev::cmd;
use berth_bdev::generic::with_mounted;
use berth_bdev::{BdevError, PoolConfig, Revert, SpecForm, VolumeSpec};
use berth_tests::harness::{self, fill_incompressible, sized, Harness};
use berth_tests::pools;

fn harness() -> Option<Harness> {
    harness::harness(pools::zfs::setup)
}

/// Writes `mib` MiB of incompressible data as 4 MiB files under `dir`.
fn write(h: &Harness, v: &VolumeSpec, rel: &str, content: &str) {
    with_mounted(h.backend.as_ref(), v, &h.scratch("mnt"), false, |root| {
        fs::write(root.join(rel), content).map_err(BdevError::io("write", root.join(rel)))
    })
    .unwrap_or_else(|e| panic!("write {rel} in {v}: {e}"));
}

fn read(h: &Harness, v: &VolumeSpec, rel: &str) -> Option<String> {
    with_mounted(h.backend.as_ref(), v, &h.scratch("mnt"), true, |root| {
        Ok(fs::read_to_string(root.join(rel)).ok())
    })
    .unwrap_or_else(|e| panic!("read {rel} in {v}: {e}"))
}

fn parent(h: &Harness) -> String {
    h.pool
        .options
        .get("dataset")
        .cloned()
        .expect("zfs pool has a dataset")
}

/// Every snapshot under the pool's parent dataset.
fn snapshots(h: &Harness) -> Vec<String> {
    let out = cmd::run(
        &*harness::runner(),
        "zfs",
        &[
            "list",
            "-H",
            "-o",
            "name",
            "-t",
            "snapshot",
            "-r",
            &parent(h),
        ],
    )
    .expect("zfs list");
    out.stdout.lines().map(str::to_owned).collect()
}

fn datasets(h: &Harness) -> Vec<String> {
    let out = cmd::run(
        &*harness::runner(),
        "zfs",
        &["list", "-H", "-o", "name", "-r", &parent(h)],
    )
    .expect("zfs list");
    out.stdout.lines().map(str::to_owned).collect()
}

fn used(dataset: &str) -> u64 {
    let out = cmd::run(
        &*harness::runner(),
        "zfs",
        &["get", "-Hp", "-o", "value", "used", dataset],
    )
    .expect("zfs get used");
    out.stdout.trim().parse().expect("used is a number")
}

#[test]
fn clone_of_a_populated_volume_adds_almost_no_disk() {
    let Some(h) = harness() else { return };
    let v = h.create("big", &sized(512 << 20));
    with_mounted(h.backend.as_ref(), &v, &h.scratch("mnt"), false, |root| {
        fill_incompressible(root, 120, 0x9E37_79B9_7F4A_7C15).map_err(BdevError::io("fill", root))
    })
    .expect("fill the origin");
    let origin_used = h.backend.usage(&v).expect("usage").used_bytes;
    assert!(
        origin_used >= 120 << 20,
        "origin uses only {origin_used} bytes"
    );

    let pool_before = used(&parent(&h));
    let c = h.clone_of(&v, "big-clone");
    let pool_after = used(&parent(&h));
    let u = h.backend.usage(&c).expect("clone usage");
    assert!(
        u.used_bytes < 1 << 20,
        "a fresh clone uses {} bytes",
        u.used_bytes
    );
    assert!(
        pool_after.saturating_sub(pool_before) < 2 << 20,
        "the clone grew the pool from {pool_before} to {pool_after} bytes"
    );
    assert_eq!(
        u.limit_bytes,
        Some(512 << 20),
        "the clone keeps the origin's refquota"
    );
    assert!(
        u.note.as_deref().unwrap_or("").contains("refers to"),
        "{u:?}"
    );
    let sizes = with_mounted(h.backend.as_ref(), &c, &h.scratch("mnt"), true, |root| {
        let n = fs::read_dir(root.join("data"))
            .map_err(BdevError::io("list", root))?
            .count();
        Ok(n)
    })
    .expect("read the clone");
    assert_eq!(sizes, 30);

    h.backend.destroy(&c).expect("destroy clone");
    h.backend.destroy(&v).expect("destroy origin");
    assert!(snapshots(&h).is_empty(), "left: {:?}", snapshots(&h));
}

#[test]
fn an_origin_with_a_clone_is_refused_and_the_clone_leaves_no_orphan() {
    let Some(h) = harness() else { return };
    let v = h.create("origin", &sized(128 << 20));
    write(&h, &v, "who", "origin");
    let c = h.clone_of(&v, "child");
    let hidden = format!("{}/origin@berth-clone-child", parent(&h));
    assert_eq!(snapshots(&h), vec![hidden.clone()]);

    let e = h
        .backend
        .destroy(&v)
        .expect_err("destroying an origin with a clone");
    assert!(matches!(e, BdevError::DeleteRefused { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("child") && msg.contains("promote"), "{msg}");
    // Nothing was harmed by the refusal.
    assert_eq!(read(&h, &v, "who").as_deref(), Some("origin"));
    assert_eq!(read(&h, &c, "who").as_deref(), Some("origin"));

    h.backend.destroy(&c).expect("destroy the clone");
    assert!(
        snapshots(&h).is_empty(),
        "orphan snapshots: {:?}",
        snapshots(&h)
    );
    h.backend
        .destroy(&v)
        .expect("destroy the origin once the clone is gone");
    assert!(datasets(&h).len() == 1, "left: {:?}", datasets(&h));
}

/// A volume destroyed while it has a snapshot of the user's and a clone of its
/// live state (what `snapshot restore` does to the old volume) lingers for
/// both, keeps serving the clone, and goes with whichever of them goes last.
#[test]
fn a_destroyed_volume_with_a_snapshot_and_a_clone_goes_with_the_last() {
    let Some(h) = harness() else { return };
    let p = parent(&h);
    for (i, snapshot_first) in [false, true].into_iter().enumerate() {
        let name = format!("kept{i}");
        let v = h.create(&name, &sized(128 << 20));
        write(&h, &v, "who", "v");
        let s = h.snapshot(&v, &name, "s1");
        let c = h.clone_of(&v, &format!("reader{i}"));
        h.backend
            .destroy(&v)
            .expect("destroy a volume with a snapshot and a clone");
        assert_eq!(read(&h, &c, "who").as_deref(), Some("v"));
        assert_eq!(read(&h, &s, "who").as_deref(), Some("v"));
        assert_eq!(
            h.backend.volume_named(&name).expect("volume_named"),
            None,
            "a destroyed volume is no volume any more"
        );
        let (first, second) = if snapshot_first { (&s, &c) } else { (&c, &s) };
        h.backend.destroy(first).expect("destroy the first");
        assert!(
            datasets(&h).contains(&format!("{p}/{name}")),
            "went before its last dependent: {:?}",
            datasets(&h)
        );
        h.backend.destroy(second).expect("destroy the second");
        assert_eq!(datasets(&h), vec![p.clone()], "left behind");
        assert!(snapshots(&h).is_empty(), "left: {:?}", snapshots(&h));
    }
}

#[test]
fn promote_then_destroy_the_old_origin() {
    let Some(h) = harness() else { return };
    let v = h.create("old", &sized(128 << 20));
    write(&h, &v, "who", "old");
    let c = h.clone_of(&v, "new");
    write(&h, &c, "mine", "new");
    assert!(
        h.backend.destroy(&v).is_err(),
        "the origin is pinned before promote"
    );

    h.backend.promote(&c).expect("promote");
    h.backend
        .destroy(&v)
        .expect("destroy the old origin after promote");
    assert_eq!(read(&h, &c, "who").as_deref(), Some("old"));
    assert_eq!(read(&h, &c, "mine").as_deref(), Some("new"));
    // The hidden snapshot moved to the promoted clone and went with the old origin.
    assert!(
        snapshots(&h).is_empty(),
        "orphan snapshots: {:?}",
        snapshots(&h)
    );
    h.backend.destroy(&c).expect("destroy the promoted clone");
}

#[test]
fn persisted_mount_is_undone_by_unmount() {
    let Some(h) = harness() else { return };
    let v = h.create("p", &sized(64 << 20));
    let at = h.scratch("persist");
    let guard = h.backend.mount(&v, &at, false).expect("mount");
    fs::write(at.join("kept"), "yes").expect("write through the mount");
    let path = guard.persist();
    assert!(
        berth_bdev::mount::is_mountpoint(&path),
        "the persisted mount is gone"
    );
    h.backend.unmount(&v, &at).expect("unmount");
    assert!(
        harness::leaks_under(h.tmp.path()).is_empty(),
        "{:?}",
        harness::leaks_under(h.tmp.path())
    );
    assert_eq!(read(&h, &v, "kept").as_deref(), Some("yes"));
    h.backend.destroy(&v).expect("destroy");
}

#[test]
fn snapshot_mounts_read_only_through_a_temporary_clone() {
    let Some(h) = harness() else { return };
    let v = h.create("s", &sized(64 << 20));
    write(&h, &v, "f", "at-snap");
    let mut rv = Revert::new();
    let snap = h
        .backend
        .snapshot(&v, "s", "one", &mut rv)
        .expect("snapshot");
    rv.commit();
    write(&h, &v, "f", "later");

    let at = h.scratch("snap");
    let guard = h.backend.mount(&snap, &at, true).expect("mount snapshot");
    assert_eq!(
        fs::read_to_string(at.join("f")).expect("read").as_str(),
        "at-snap"
    );
    assert!(
        fs::write(at.join("g"), "x").is_err(),
        "a snapshot mount is writable"
    );
    let tmp_clone = format!("{}/s:one", parent(&h));
    assert!(datasets(&h).contains(&tmp_clone), "{:?}", datasets(&h));
    // A persisted snapshot mount is undone by unmount, temporary clone included.
    guard.persist();
    h.backend.unmount(&snap, &at).expect("unmount snapshot");
    assert!(!datasets(&h).contains(&tmp_clone), "{:?}", datasets(&h));

    assert!(
        h.backend.mount(&snap, &at, false).is_err(),
        "snapshots mount read-only only"
    );
    h.backend.destroy_snapshot(&snap).expect("destroy snapshot");
    h.backend.destroy(&v).expect("destroy");
}

#[test]
fn a_pool_added_without_a_path_mounts_under_the_state_root() {
    let Some(h) = harness() else { return };
    let root = h.tmp.path().join("state");
    let b = berth_core::Berth::open(&root, true).expect("open the state root");
    let zpool = parent(&h).split('/').next().expect("zpool").to_owned();
    let pool = PoolConfig::new("zp", "zfs").with_option("dataset", &format!("{zpool}/viacli"));
    b.pool_add(&pool).expect("pool add without --path");
    let saved = b.store().pool("zp").expect("the saved pool");
    assert_eq!(saved.path, Some(root.join("zfs/zp")));
    // A pool recorded without a path (before this default) opens the same way.
    let backend = b.backend(&pool).expect("open the pool");
    let mut rv = Revert::new();
    let v = backend
        .create("c1", &sized(64 << 20), &mut rv)
        .expect("create");
    rv.commit();
    let dataset = &ZfsSpec::from_spec(&v).expect("a zfs volume").dataset;
    let mp = cmd::run(
        &*harness::runner(),
        "zfs",
        &["get", "-H", "-o", "value", "mountpoint", dataset],
    )
    .expect("zfs get mountpoint")
    .stdout;
    assert_eq!(Path::new(mp.trim()), root.join("zfs/zp/c1"));
    let seen = with_mounted(backend.as_ref(), &v, &h.scratch("mnt"), false, |at| {
        fs::write(at.join("f"), "x").map_err(BdevError::io("write", at))?;
        Ok(fs::read_to_string(root.join("zfs/zp/c1/f")).ok())
    })
    .expect("use the volume");
    assert_eq!(seen.as_deref(), Some("x"), "the bind shows the dataset");
    backend.destroy(&v).expect("destroy");
    assert_eq!(backend.volume_named("c1").expect("volume_named"), None);
}
