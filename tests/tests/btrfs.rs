//! btrfs backend, beyond conformance: nested subvolumes (LXC issue #210), clones
//! that copy no data, read-only snapshots, and qgroup-based usage.

use std::fs;
use std::path::{Path, PathBuf};

use berth_backends::btrfs::BtrfsSpec;
use berth_bdev::cmd::{self, HostRunner};
use berth_bdev::{CreateOpts, PoolConfig, Revert, SpecForm, UsageKind, VolumeSpec};
use berth_tests::harness::{self, Harness};

fn setup() -> Option<Harness> {
    harness::harness(berth_tests::pools::btrfs::setup)
}

fn btrfs(args: &[&str]) -> String {
    cmd::run(&HostRunner, "btrfs", args)
        .unwrap_or_else(|e| panic!("btrfs {args:?}: {e}"))
        .stdout
}

fn create(h: &Harness, name: &str) -> (VolumeSpec, PathBuf) {
    let mut rv = Revert::new();
    let v = h
        .backend
        .create(name, &CreateOpts::default(), &mut rv)
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    rv.commit();
    let p = tree(&v);
    (v, p)
}

fn tree(v: &VolumeSpec) -> PathBuf {
    BtrfsSpec::from_spec(v)
        .unwrap_or_else(|e| panic!("{v} is not a btrfs volume: {e}"))
        .path
}

fn is_ro(p: &Path) -> bool {
    let out = btrfs(&["property", "get", "-ts", &p.to_string_lossy(), "ro"]);
    match out.trim() {
        "ro=true" => true,
        "ro=false" => false,
        other => panic!("btrfs property get ro: {other:?}"),
    }
}

fn is_subvolume(p: &Path) -> bool {
    cmd::run(
        &HostRunner,
        "btrfs",
        &["subvolume", "show", &p.to_string_lossy()],
    )
    .is_ok()
}

/// A field such as `UUID` from `btrfs subvolume show`.
fn show_field(p: &Path, field: &str) -> String {
    btrfs(&["subvolume", "show", &p.to_string_lossy()])
        .lines()
        .find_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            (k.trim() == field).then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no {field} in btrfs subvolume show {}", p.display()))
}

/// Bytes in use on the filesystem holding `p`, after a commit.
fn fs_used(p: &Path) -> u64 {
    btrfs(&["filesystem", "sync", &p.to_string_lossy()]);
    let out = cmd::run(
        &HostRunner,
        "df",
        &["-B1", "--output=used", &p.to_string_lossy()],
    )
    .expect("df")
    .stdout;
    out.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("df output {out:?}"))
}

fn pool_root(h: &Harness) -> PathBuf {
    h.pool.path.clone().expect("pool path")
}

/// No subvolume remains below the pool directory.
fn assert_no_subvolumes_left(h: &Harness) {
    let root = pool_root(h);
    let mnt = root.parent().expect("scratch mount");
    let list = btrfs(&["subvolume", "list", &mnt.to_string_lossy()]);
    assert!(
        !list.lines().any(|l| l.contains(" path pool/")),
        "subvolumes left: {list}"
    );
}

#[test]
fn nested_subvolumes_are_snapshotted_and_destroyed() {
    let Some(h) = setup() else { return };
    let (v, p) = create(&h, "c1");
    fs::create_dir_all(p.join("var/lib")).unwrap();
    fs::write(p.join("etc-hostname"), "c1").unwrap();
    // What a container might do: systemd's /var/lib/machines, a subvolume in it,
    // and a read-only snapshot of that.
    let machines = p.join("var/lib/machines");
    btrfs(&["subvolume", "create", &machines.to_string_lossy()]);
    let inner = machines.join("inner");
    btrfs(&["subvolume", "create", &inner.to_string_lossy()]);
    fs::write(inner.join("data"), "nested").unwrap();
    let inner_ro = machines.join("inner-ro");
    btrfs(&[
        "subvolume",
        "snapshot",
        "-r",
        &inner.to_string_lossy(),
        &inner_ro.to_string_lossy(),
    ]);

    // A snapshot takes the nested subvolumes along, all read-only.
    let s = h.snapshot(&v, "c1", "s1");
    let sp = tree(&s);
    assert_eq!(
        fs::read_to_string(sp.join("var/lib/machines/inner/data")).unwrap(),
        "nested"
    );
    for rel in [
        "",
        "var/lib/machines",
        "var/lib/machines/inner",
        "var/lib/machines/inner-ro",
    ] {
        let q = sp.join(rel);
        assert!(is_subvolume(&q), "{} is not a subvolume", q.display());
        assert!(is_ro(&q), "{} is writable", q.display());
    }
    assert!(fs::write(sp.join("var/lib/machines/inner/x"), "x").is_err());

    // A clone of it is writable all the way down.
    let c = h.clone_of(&s, "c2");
    let cp = tree(&c);
    fs::write(cp.join("var/lib/machines/inner/new"), "w").unwrap();
    assert!(!is_ro(&cp.join("var/lib/machines/inner")));

    h.backend.destroy(&c).expect("destroy clone");
    // Read-only parents with nested children: the delete must unseal them first.
    h.backend.destroy_snapshot(&s).expect("destroy snapshot");
    // LXC issue #210: a rootfs holding its own subvolumes is still destroyable.
    h.backend
        .destroy(&v)
        .expect("destroy volume with nested subvolumes");
    for gone in [&p, &sp, &cp] {
        assert!(!gone.exists(), "{} still exists", gone.display());
    }
    assert!(!pool_root(&h).join(".snapshots/c1").exists());
    assert_no_subvolumes_left(&h);
}

#[test]
fn snapshot_clone_copies_no_data() {
    let Some(h) = setup() else { return };
    let (v, p) = create(&h, "big");
    let empty = fs_used(&p);
    // 200 MiB in 50 files of distinct content.
    for i in 0..50u64 {
        let data = berth_fixtures::filetypes::pattern(4 << 20, i);
        fs::write(p.join(format!("f{i:02}")), data).unwrap();
    }
    let before = fs_used(&p);
    assert!(
        before - empty >= 190 << 20,
        "writing 200 MiB used only {} bytes",
        before - empty
    );

    let c = h.clone_of(&v, "big-clone");
    let cp = tree(&c);
    let after = fs_used(&p);
    assert!(
        after.saturating_sub(before) < 16 << 20,
        "the clone took {} bytes; a writable snapshot should share the 200 MiB",
        after.saturating_sub(before)
    );
    // The kernel records the clone as a snapshot of the origin.
    assert_eq!(show_field(&cp, "Parent UUID"), show_field(&p, "UUID"));
    assert_eq!(
        fs::read(cp.join("f07")).unwrap(),
        berth_fixtures::filetypes::pattern(4 << 20, 7)
    );

    // Independent: the origin can go first.
    h.backend.destroy(&v).expect("destroy origin");
    assert_eq!(
        fs::read(cp.join("f49")).unwrap(),
        berth_fixtures::filetypes::pattern(4 << 20, 49)
    );
    h.backend.destroy(&c).expect("destroy clone");
    assert_no_subvolumes_left(&h);
}

/// `--copy` within one btrfs pool: a writable subvolume snapshot, as LXC
/// makes, which shares extents but no dependency.
#[test]
fn a_copy_within_the_pool_is_an_independent_snapshot() {
    let Some(h) = setup() else { return };
    let (v, p) = create(&h, "orig");
    for i in 0..25u64 {
        fs::write(
            p.join(format!("f{i:02}")),
            berth_fixtures::filetypes::pattern(4 << 20, i),
        )
        .unwrap();
    }
    let before = fs_used(&p);
    let mut rv = Revert::new();
    let c = h
        .backend
        .copy_clone(&v, "copy", &CreateOpts::default(), &mut rv)
        .expect("copy_clone");
    rv.commit();
    let cp = tree(&c);
    let grew = fs_used(&p).saturating_sub(before);
    assert!(grew < 16 << 20, "the copy took {grew} bytes of 100 MiB");
    assert!(is_subvolume(&cp) && !is_ro(&cp));
    // Either goes first; changes to one never show in the other.
    fs::write(cp.join("f00"), b"changed").unwrap();
    h.backend.destroy(&v).expect("destroy the origin first");
    assert_eq!(
        fs::read(cp.join("f24")).unwrap(),
        berth_fixtures::filetypes::pattern(4 << 20, 24)
    );
    h.backend.destroy(&c).expect("destroy the copy");
    assert_no_subvolumes_left(&h);
}

#[test]
fn clone_of_a_snapshot_is_writable_and_the_snapshot_stays_read_only() {
    let Some(h) = setup() else { return };
    let (v, p) = create(&h, "ro");
    fs::write(p.join("f"), "v1").unwrap();
    let s = h.snapshot(&v, "ro", "s1");
    let sp = tree(&s);
    assert!(is_ro(&sp));
    let err = fs::write(sp.join("f"), "no").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "expected EROFS, got {err}");

    // Even a mount asked to be writable cannot write into a read-only snapshot.
    let at = h.scratch("mnt");
    let g = h.backend.mount(&s, &at, false).expect("mount snapshot");
    assert!(fs::write(at.join("g"), "no").is_err());
    g.release().expect("unmount");

    let c = h.clone_of(&s, "from-snap");
    let cp = tree(&c);
    assert!(!is_ro(&cp));
    fs::write(cp.join("f"), "clone").unwrap();
    assert_eq!(fs::read_to_string(sp.join("f")).unwrap(), "v1");
    assert!(is_ro(&sp), "cloning made the snapshot writable");

    h.backend.destroy(&c).unwrap();
    h.backend.destroy_snapshot(&s).unwrap();
    h.backend.destroy(&v).unwrap();
    assert_no_subvolumes_left(&h);
}

#[test]
fn usage_reads_qgroups_only_when_quotas_are_enabled() {
    let Some(h) = setup() else { return };
    let (v, p) = create(&h, "u");
    fs::write(
        p.join("big"),
        berth_fixtures::filetypes::pattern(8 << 20, 1),
    )
    .unwrap();
    let u = h.backend.usage(&v).expect("usage");
    assert_eq!(u.kind, UsageKind::Allocated);
    assert!(u.used_bytes >= 8 << 20, "{u:?}");
    assert!(
        u.note
            .as_deref()
            .unwrap_or("")
            .contains("btrfs quota enable"),
        "{u:?}"
    );
    // Asking for usage never turns quotas on.
    let mnt = pool_root(&h).parent().expect("mount").to_path_buf();
    let m = mnt.to_string_lossy().into_owned();
    assert!(cmd::run(&HostRunner, "btrfs", &["qgroup", "show", &m]).is_err());

    // This scratch filesystem is the test's own: enabling quotas is fine here.
    btrfs(&["quota", "enable", &m]);
    btrfs(&["quota", "rescan", "-w", &m]);
    let c = h.clone_of(&v, "u-clone");
    fs::write(
        tree(&c).join("small"),
        berth_fixtures::filetypes::pattern(1 << 20, 2),
    )
    .unwrap();
    btrfs(&["filesystem", "sync", &m]);
    let cu = h.backend.usage(&c).expect("usage with quotas");
    assert_eq!(cu.kind, UsageKind::Exclusive, "{cu:?}");
    assert!(
        (1 << 20..4 << 20).contains(&cu.used_bytes),
        "the clone holds 1 MiB of its own, not {} ({cu:?})",
        cu.used_bytes
    );
    assert!(
        cu.note.as_deref().unwrap_or("").contains("referenced"),
        "{cu:?}"
    );

    h.backend.destroy(&c).unwrap();
    h.backend.destroy(&v).unwrap();
    assert_no_subvolumes_left(&h);
}

#[test]
fn probe_refuses_a_pool_that_is_not_on_btrfs() {
    // The check looks at the nearest existing directory first, so nothing is
    // created under /proc.
    let pool = PoolConfig::new("p", "btrfs").with_path("/proc/berth-not-a-pool");
    let b = berth_backends::open(&pool, harness::runner()).expect("open");
    match b.probe() {
        Err(berth_bdev::BdevError::Unavailable { missing, .. })
            if missing.contains("not on a btrfs filesystem") => {}
        Err(berth_bdev::BdevError::Unavailable { missing, .. })
            if !berth_bdev::fsutil::kernel_has_fs("btrfs") || missing.contains("not installed") =>
        {
            harness::skip(&missing);
        }
        other => panic!("probe on /proc: {other:?}"),
    }
}
