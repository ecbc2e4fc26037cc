//! overlay backend, beyond conformance: long stacked clone chains mounted through
//! `lowerdir+`, whiteouts, snapshots that keep overlay metadata, and clones stacked
//! on dir and btrfs volumes.

use std::fs;
use std::path::Path;

use berth_backends::overlay::OverlaySpec;
use berth_bdev::generic::with_mounted;
use berth_bdev::{Backend, BdevError, CreateOpts, PoolConfig, Revert, SpecForm, VolumeSpec};
use berth_tests::harness::{self, Harness, ScratchFs};

const CHAIN: usize = 120;

fn setup() -> Option<Harness> {
    harness::harness(berth_tests::pools::overlay::setup)
}

fn create(b: &dyn Backend, name: &str) -> VolumeSpec {
    let mut rv = Revert::new();
    let v = b
        .create(name, &CreateOpts::default(), &mut rv)
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    rv.commit();
    v
}

fn clone(b: &dyn Backend, src: &VolumeSpec, name: &str) -> VolumeSpec {
    let mut rv = Revert::new();
    let c = b
        .snapshot_clone(src, name, &mut rv)
        .unwrap_or_else(|e| panic!("clone {src} as {name}: {e}"));
    rv.commit();
    c
}

/// Runs `f` on the mounted volume (`f` returns io results for brevity).
fn on<T>(
    h: &Harness,
    b: &dyn Backend,
    v: &VolumeSpec,
    ro: bool,
    f: impl FnOnce(&Path) -> std::io::Result<T>,
) -> T {
    with_mounted(b, v, &h.scratch("mnt"), ro, |root| {
        f(root).map_err(BdevError::io("use mounted volume", root))
    })
    .unwrap_or_else(|e| panic!("on {v}: {e}"))
}

fn write(h: &Harness, b: &dyn Backend, v: &VolumeSpec, rel: &str, data: &str) {
    on(h, b, v, false, |root| {
        let p = root.join(rel);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d)?;
        }
        fs::write(p, data)
    })
}

fn read(h: &Harness, b: &dyn Backend, v: &VolumeSpec, rel: &str) -> Option<String> {
    on(h, b, v, true, |root| {
        Ok(fs::read_to_string(root.join(rel)).ok())
    })
}

fn lowers(v: &VolumeSpec) -> Vec<std::path::PathBuf> {
    OverlaySpec::from_spec(v)
        .unwrap_or_else(|e| panic!("not overlay: {e}"))
        .lowers
}

/// Nothing is left in the pool (an empty `.snapshots` is fine).
fn assert_pool_empty(h: &Harness) {
    let root = h.pool.path.clone().expect("pool path");
    let left: Vec<String> = fs::read_dir(&root)
        .expect("read pool")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".snapshots")
        .collect();
    assert!(left.is_empty(), "left in the pool: {left:?}");
    if let Ok(rd) = fs::read_dir(root.join(".snapshots")) {
        let snaps: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
        assert!(snaps.is_empty(), "snapshots left: {snaps:?}");
    }
}

#[test]
fn a_chain_of_stacked_clones_mounts_and_reads() {
    let Some(h) = setup() else { return };
    let b = h.backend.as_ref();
    let base = create(b, "base");
    write(&h, b, &base, "base-file", "base");
    let mut chain = vec![base];
    for i in 1..=CHAIN {
        let c = clone(b, &chain[i - 1], &format!("c{i:03}"));
        write(&h, b, &c, &format!("layers/{i:03}"), &i.to_string());
        if i == 60 {
            // A whiteout in a middle layer hides a file from a lower one.
            on(&h, b, &c, false, |root| {
                fs::remove_file(root.join("layers/010"))
            });
        }
        chain.push(c);
    }
    let top = &chain[CHAIN];
    // base/lower, base/upper and one upper per clone below the top.
    assert_eq!(lowers(top).len(), CHAIN + 1);
    // Classic mount(2) would cut this option string at one page.
    let optlen: usize = lowers(top).iter().map(|l| l.as_os_str().len() + 1).sum();
    assert!(
        optlen > 4096,
        "the chain's lowerdir list is only {optlen} bytes"
    );

    let (seen, hidden, base_seen) = on(&h, b, top, true, |root| {
        let mut seen = 0;
        for i in 1..=CHAIN {
            if let Ok(s) = fs::read_to_string(root.join(format!("layers/{i:03}"))) {
                assert_eq!(s, i.to_string());
                seen += 1;
            }
        }
        Ok((
            seen,
            !root.join("layers/010").exists(),
            fs::read_to_string(root.join("base-file")).ok(),
        ))
    });
    assert_eq!(
        seen,
        CHAIN - 1,
        "the top sees every layer's file but the deleted one"
    );
    assert!(hidden, "the whiteout from c060 does not hide layers/010");
    assert_eq!(base_seen.as_deref(), Some("base"));
    // Below the whiteout the file is still there.
    assert_eq!(read(&h, b, &chain[59], "layers/010").as_deref(), Some("10"));
    // The top is writable too.
    write(&h, b, top, "layers/top", "t");
    assert_eq!(read(&h, b, top, "layers/top").as_deref(), Some("t"));

    for v in chain.iter().rev() {
        b.destroy(v).unwrap_or_else(|e| panic!("destroy {v}: {e}"));
    }
    assert_pool_empty(&h);
}

#[test]
fn snapshots_keep_whiteouts_and_opaque_directories() {
    let Some(h) = setup() else { return };
    let b = h.backend.as_ref();
    let base = create(b, "base");
    on(&h, b, &base, false, |root| {
        fs::create_dir_all(root.join("dir"))?;
        fs::write(root.join("dir/old"), "old")?;
        fs::write(root.join("gone"), "x")?;
        fs::write(root.join("keep"), "k")
    });
    let c = clone(b, &base, "c");
    on(&h, b, &c, false, |root| {
        fs::remove_file(root.join("gone"))?; // a whiteout
        fs::remove_dir_all(root.join("dir"))?;
        fs::create_dir(root.join("dir"))?; // an opaque directory
        fs::write(root.join("dir/new"), "new")
    });
    let mut rv = Revert::new();
    let s = b.snapshot(&c, "c", "s1", &mut rv).expect("snapshot");
    rv.commit();
    write(&h, b, &c, "later", "after the snapshot");

    let check = |v: &VolumeSpec| {
        on(&h, b, v, true, |root| {
            assert!(!root.join("gone").exists(), "{v}: whiteout lost");
            assert!(!root.join("dir/old").exists(), "{v}: opaque directory lost");
            assert!(!root.join("later").exists(), "{v}: not a point in time");
            assert_eq!(fs::read_to_string(root.join("dir/new"))?, "new");
            assert_eq!(fs::read_to_string(root.join("keep"))?, "k");
            Ok(())
        })
    };
    check(&s);
    // A snapshot mounts read-only even when asked for a writable mount.
    let at = h.scratch("snap-mnt");
    let g = b.mount(&s, &at, false).expect("mount snapshot");
    assert!(
        fs::write(at.join("x"), "x").is_err(),
        "wrote into a snapshot"
    );
    g.release().expect("unmount snapshot");

    let from_snap = clone(b, &s, "from-snap");
    check(&from_snap);
    write(&h, b, &from_snap, "dir/old", "back");
    assert_eq!(read(&h, b, &from_snap, "dir/old").as_deref(), Some("back"));
    check(&s);

    b.destroy(&from_snap).unwrap();
    b.destroy_snapshot(&s).unwrap();
    b.destroy(&c).unwrap();
    b.destroy(&base).unwrap();
    assert_pool_empty(&h);
}

#[test]
fn a_snapshot_of_a_fresh_volume_outlives_the_volume() {
    let Some(h) = setup() else { return };
    let b = h.backend.as_ref();
    let v = create(b, "v");
    write(&h, b, &v, "f", "v1");
    let mut rv = Revert::new();
    let s = b.snapshot(&v, "v", "s1", &mut rv).expect("snapshot");
    rv.commit();
    b.destroy(&v).unwrap();
    assert_eq!(read(&h, b, &s, "f").as_deref(), Some("v1"));
    b.destroy_snapshot(&s).unwrap();
    assert_pool_empty(&h);
}

/// Stacks overlay clones on a volume of another backend and checks that the
/// clone sees the volume, writes and deletes only in its own upper.
fn stack_on(h: &Harness, other: &dyn Backend, tag: &str) {
    let ov = h.backend.as_ref();
    let v = create(other, &format!("{tag}-vol"));
    let tree = other.tree_path(&v).expect("a plain-tree volume");
    fs::create_dir_all(tree.join("etc")).expect("mkdir etc");
    fs::write(tree.join("etc/hostname"), tag).expect("write hostname");
    fs::write(tree.join("remove-me"), "r").expect("write remove-me");

    let mut rv = Revert::new();
    let c = ov
        .stack_on_tree(&tree, &format!("on-{tag}"), &mut rv)
        .unwrap_or_else(|e| panic!("stack on {v}: {e}"));
    rv.commit();
    assert_eq!(lowers(&c), std::slice::from_ref(&tree));
    assert_eq!(read(h, ov, &c, "etc/hostname").as_deref(), Some(tag));
    on(h, ov, &c, false, |root| {
        fs::write(root.join("etc/hostname"), "clone")?;
        fs::remove_file(root.join("remove-me"))
    });
    assert_eq!(read(h, ov, &c, "etc/hostname").as_deref(), Some("clone"));
    assert_eq!(read(h, ov, &c, "remove-me"), None);
    // The origin tree is untouched.
    assert_eq!(
        fs::read_to_string(tree.join("etc/hostname")).expect("read origin"),
        tag
    );
    assert!(tree.join("remove-me").exists());

    // A clone of that clone stacks once more.
    let c2 = clone(ov, &c, &format!("on-{tag}-2"));
    assert_eq!(lowers(&c2).len(), 2);
    assert_eq!(read(h, ov, &c2, "etc/hostname").as_deref(), Some("clone"));

    ov.destroy(&c2).expect("destroy c2");
    ov.destroy(&c).expect("destroy clone");
    other.destroy(&v).expect("destroy origin");
    assert!(!tree.exists());
}

#[test]
fn clones_stack_on_dir_and_btrfs_volumes() {
    let Some(h) = setup() else { return };
    let dir_pool = PoolConfig::new("d", "dir").with_path(h.scratch("dir-pool"));
    let dir = berth_backends::open(&dir_pool, harness::runner()).expect("open dir pool");
    dir.probe().expect("probe dir pool");
    stack_on(&h, dir.as_ref(), "dir");

    let Ok(bfs) = ScratchFs::new(h.tmp.path(), "btrfs", 4 << 30) else {
        harness::skip("no scratch btrfs for stacking overlay on a btrfs volume");
        return;
    };
    let bt_pool = PoolConfig::new("b", "btrfs").with_path(bfs.mnt.join("pool"));
    let bt = berth_backends::open(&bt_pool, harness::runner()).expect("open btrfs pool");
    if let Err(e) = bt.probe() {
        harness::skip(&e.to_string());
        return;
    }
    stack_on(&h, bt.as_ref(), "btrfs");
    drop(bt);
    drop(bfs);
    assert_pool_empty(&h);
}
