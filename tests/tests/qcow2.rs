//! qcow2-specific behaviour: O(1) backing-file clones, resize, and the
//! qemu-storage-daemon bookkeeping (persisted mounts, crashed daemons).

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use berth_backends::qcow2::Qcow2;
use berth_backends::qcow2::Qcow2Spec;
use berth_bdev::cmd;
use berth_bdev::generic::with_mounted;
use berth_bdev::{loopdev, mount, Backend, BdevError, Revert, SpecForm, VolumeSpec};
use berth_tests::harness::{self, fill_incompressible, sized, Harness};
use berth_tests::pools::qcow2::daemons_under;

fn harness() -> Option<Harness> {
    harness::harness(berth_tests::pools::qcow2::setup)
}

fn pool_root(h: &Harness) -> PathBuf {
    h.pool.path.clone().expect("qcow2 pool has a path")
}

/// Writes `mib` MiB of incompressible data as 4 MiB files.
fn read(h: &Harness, v: &VolumeSpec, rel: &str, read_only: bool) -> Option<String> {
    with_mounted(
        h.backend.as_ref(),
        v,
        &h.scratch("mnt"),
        read_only,
        |root| Ok(fs::read_to_string(root.join(rel)).ok()),
    )
    .unwrap_or_else(|e| panic!("read {rel} in {v}: {e}"))
}

/// What the test left below its temp dir, the scratch filesystem the pool lives
/// on (and its loop device) aside.
fn leaks(h: &Harness) -> Vec<String> {
    harness::leaks_under(h.tmp.path())
        .into_iter()
        .filter(|l| !l.ends_with("btrfs-mnt") && !l.ends_with("btrfs.img"))
        .collect()
}

/// Nothing of the test is left: no daemon, mount or loop device, no runtime state.
fn assert_clean(h: &Harness) {
    let tmp = h.tmp.path();
    assert!(
        harness::wait_for(|| daemons_under(tmp).is_empty()),
        "daemons: {:?}",
        daemons_under(tmp)
    );
    assert!(
        harness::wait_for(|| leaks(h).is_empty()),
        "leaked: {:?}",
        leaks(h)
    );
    let run = pool_root(h).join(".run");
    let left: Vec<_> = fs::read_dir(&run)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "runtime state left: {left:?}");
}

fn image_of(v: &VolumeSpec) -> PathBuf {
    Qcow2Spec::from_spec(v)
        .unwrap_or_else(|e| panic!("not qcow2: {e}"))
        .image
}

#[test]
fn backing_file_clone_of_a_populated_volume_adds_almost_no_disk() {
    let Some(h) = harness() else { return };
    let v = h.create("big", &sized(512 << 20));
    with_mounted(h.backend.as_ref(), &v, &h.scratch("mnt"), false, |root| {
        fill_incompressible(root, 120, 0x2545_F491_4F6C_DD1D).map_err(BdevError::io("fill", root))
    })
    .expect("fill the origin");
    let origin = h.backend.usage(&v).expect("usage").used_bytes;
    assert!(
        origin >= 120 << 20,
        "origin image holds only {origin} bytes"
    );

    let mut rv = Revert::new();
    let c = h
        .backend
        .snapshot_clone(&v, "big-clone", &mut rv)
        .expect("clone");
    rv.commit();
    let u = h.backend.usage(&c).expect("clone usage");
    assert!(
        u.used_bytes < 2 << 20,
        "a fresh clone image holds {} bytes",
        u.used_bytes
    );
    assert_eq!(u.limit_bytes, Some(512 << 20));
    assert!(
        u.note.as_deref().unwrap_or("").contains("backing file"),
        "{u:?}"
    );
    let n = with_mounted(h.backend.as_ref(), &c, &h.scratch("mnt"), false, |root| {
        fs::write(root.join("mine"), "clone").map_err(BdevError::io("write", root))?;
        Ok(fs::read_dir(root.join("data"))
            .map_err(BdevError::io("list", root))?
            .count())
    })
    .expect("use the clone");
    assert_eq!(n, 30);
    let after = h.backend.usage(&c).expect("clone usage").used_bytes;
    assert!(
        after < 8 << 20,
        "a small write grew the clone image to {after} bytes"
    );

    let e = h.backend.destroy(&v).expect_err("an origin with a clone");
    assert!(e.to_string().contains("big-clone"), "{e}");
    h.backend.destroy(&c).expect("destroy clone");
    h.backend.destroy(&v).expect("destroy origin");
    assert_clean(&h);
}

#[test]
fn persisted_mount_is_fully_cleaned_by_unmount() {
    let Some(h) = harness() else { return };
    let v = h.create("p", &sized(64 << 20));
    let at = h.scratch("persist");
    let guard = h.backend.mount(&v, &at, false).expect("mount");
    fs::write(at.join("kept"), "yes").expect("write");
    guard.persist();
    assert_eq!(
        daemons_under(h.tmp.path()).len(),
        1,
        "one daemon serves the mount"
    );
    assert!(mount::is_mountpoint(&at));

    h.backend.unmount(&v, &at).expect("unmount");
    assert_clean(&h);
    assert_eq!(read(&h, &v, "kept", true).as_deref(), Some("yes"));
    h.backend.destroy(&v).expect("destroy");
    assert_clean(&h);
}

#[test]
fn leftovers_of_a_killed_daemon_are_cleaned_by_cleanup_stale() {
    let Some(h) = harness() else { return };
    let q = Qcow2::new(&h.pool, harness::runner()).expect("open qcow2");
    let v = h.create("k", &sized(64 << 20));
    let at = h.scratch("crash");
    let guard = h.backend.mount(&v, &at, false).expect("mount");
    let mut f = fs::File::create(at.join("synced")).expect("create");
    f.write_all(b"on disk")
        .and_then(|()| f.sync_all())
        .expect("write");
    drop(f);
    guard.persist();

    // A live, used mount is not stale.
    q.cleanup_stale().expect("cleanup with a live mount");
    assert!(
        mount::is_mountpoint(&at),
        "cleanup_stale removed a live mount"
    );
    assert_eq!(daemons_under(h.tmp.path()).len(), 1);

    let pidfile = pool_root(&h).join(".run/k/qsd.pid");
    let pid = fs::read_to_string(&pidfile)
        .expect("pidfile")
        .trim()
        .to_owned();
    cmd::run(&*harness::runner(), "kill", &["-KILL", &pid]).expect("kill -9");
    assert!(
        harness::wait_for(|| daemons_under(h.tmp.path()).is_empty()),
        "daemon survived SIGKILL"
    );
    // The kill leaves the FUSE export mounted (dead) and the filesystem on top.
    assert!(!leaks(&h).is_empty());

    q.cleanup_stale().expect("cleanup_stale");
    assert_clean(&h);
    // The image survived; a read-write mount replays the journal if needed.
    assert_eq!(read(&h, &v, "synced", false).as_deref(), Some("on disk"));
    h.backend.destroy(&v).expect("destroy");
    assert_clean(&h);
}

/// Mounts `v` and unmounts only its filesystem: what a crash between starting
/// the daemon and using its export leaves, a live daemon whose export nothing
/// uses. Returns the export file.
fn leave_an_idle_daemon(h: &Harness, v: &VolumeSpec, name: &str) -> PathBuf {
    let at = h.scratch(&format!("idle-{name}"));
    h.backend.mount(v, &at, false).expect("mount").persist();
    mount::unmount(&at).expect("unmount the filesystem only");
    let export = pool_root(h).join(".run").join(name).join("export.raw");
    assert!(
        harness::wait_for(|| loopdev::devices_backed_by(&export).is_empty()),
        "the loop device over the export stays"
    );
    assert_eq!(daemons_under(h.tmp.path()).len(), 1, "the daemon lives on");
    export
}

#[test]
fn a_daemon_whose_export_nothing_uses_is_stopped_at_once() {
    let Some(h) = harness() else { return };
    let q = Qcow2::new(&h.pool, harness::runner()).expect("open qcow2");
    let v = h.create("idle", &sized(64 << 20));
    leave_an_idle_daemon(&h, &v, "idle");
    // No age rule: a daemon seconds old is stopped when nothing uses its export.
    q.cleanup_stale().expect("cleanup_stale");
    assert_clean(&h);
    assert!(
        !pool_root(&h).join(".run").exists(),
        "an empty .run is left"
    );
    h.backend.destroy(&v).expect("destroy");
    assert_clean(&h);
}

#[test]
fn destroy_takes_what_is_left_and_accepts_what_is_gone() {
    let Some(h) = harness() else { return };
    let b = h.backend.as_ref();
    let v = h.create("half", &sized(64 << 20));
    leave_an_idle_daemon(&h, &v, "half");
    b.destroy(&v).expect("destroy beside an idle daemon");
    assert_clean(&h);
    assert!(!image_of(&v).exists());
    b.destroy(&v).expect("destroy again");
    assert_eq!(b.volume_named("half").expect("volume_named"), None);

    // The image vanished under its container: `destroy -f` must still end.
    let w = h.create("vanished", &sized(64 << 20));
    let s = h.snapshot(&w, "vanished", "s1");
    fs::remove_file(image_of(&w)).expect("remove the image");
    b.destroy(&w).expect("destroy a vanished image");
    // A snapshot copy that a crash cut short is found and removed.
    let tmp = pool_root(&h).join(".snapshots/vanished/.s2.qcow2.tmp");
    fs::write(&tmp, b"partial").expect("write a partial copy");
    assert_eq!(
        b.snapshot_names("vanished").expect("snapshot names"),
        ["s1", "s2"]
    );
    let partial = b
        .snapshot_named("vanished", "s2")
        .expect("snapshot_named")
        .expect("the partial snapshot is found");
    b.destroy_snapshot(&partial)
        .expect("destroy the partial snapshot");
    assert!(!tmp.exists());
    b.destroy_snapshot(&s).expect("destroy snapshot");
    b.destroy_snapshot(&s).expect("destroy snapshot again");
    assert!(!pool_root(&h).join(".snapshots/vanished").exists());
    assert!(b.volume_names().expect("volume names").is_empty());
    assert!(
        !pool_root(&h).join(".run").exists(),
        "an empty .run is left"
    );
    assert_clean(&h);
}

#[test]
fn a_failed_mount_leaves_nothing_behind() {
    let Some(h) = harness() else { return };
    let v = h.create("f", &sized(64 << 20));
    // The target does not exist: the mount fails after the daemon and loop device
    // were set up, and the guard must take them down again.
    let missing = h.tmp.path().join("no-such-dir");
    assert!(h.backend.mount(&v, &missing, false).is_err());
    assert_clean(&h);
    // A snapshot clone refuses a source that is mounted read-write.
    let at = h.scratch("busy");
    let guard = h.backend.mount(&v, &at, false).expect("mount");
    let mut rv = Revert::new();
    assert!(h.backend.snapshot_clone(&v, "c", &mut rv).is_err());
    assert!(
        h.backend.destroy(&v).is_err(),
        "destroying a mounted volume"
    );
    drop(rv);
    guard.release().expect("release");
    h.backend.destroy(&v).expect("destroy");
    assert_clean(&h);
}

#[test]
fn resize_grows_image_and_filesystem() {
    let Some(h) = harness() else { return };
    let v = h.create("r", &sized(128 << 20));
    h.backend.resize(&v, 512 << 20).expect("resize");
    assert_eq!(
        h.backend.usage(&v).expect("usage").limit_bytes,
        Some(512 << 20)
    );
    let size = with_mounted(h.backend.as_ref(), &v, &h.scratch("mnt"), false, |root| {
        let out = cmd::run(
            &*harness::runner(),
            "df",
            &["-B1", "--output=size", &root.to_string_lossy()],
        )?;
        Ok(out
            .stdout
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<u64>().ok())
            .unwrap_or(0))
    })
    .expect("df");
    assert!(
        size > 400 << 20,
        "the filesystem is {size} bytes after growing to 512 MiB"
    );
    assert!(
        h.backend.resize(&v, 256 << 20).is_err(),
        "shrinking must be refused"
    );
    h.backend.destroy(&v).expect("destroy");
    assert!(loopdev::devices_backed_by(&image_of(&v)).is_empty());
    assert_clean(&h);
}

/// A berth killed while growing an xfs volume leaves nothing that blocks it:
/// its grow mount keeps the daemon's export in use until the next command
/// that needs the volume removes it.
#[test]
fn a_resize_killed_while_growing_leaves_nothing_that_blocks_the_volume() {
    berth_tests::grow::killed_grow_leaves_nothing("qcow2");
}
