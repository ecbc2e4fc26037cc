//! Unit tests of the aufs backend (no mounts: unionfs is never run).

use super::*;
use berth_bdev::cmd::ScriptedRunner;

fn pool(dir: &Path) -> Aufs {
    let cfg = PoolConfig::new("t", NAME).with_path(dir);
    let mut a = Aufs::open(&cfg, Arc::new(ScriptedRunner::new())).unwrap();
    a.mech = Mechanism::UnionfsFuse;
    a
}

fn au(lowers: &[&str], upper: &str) -> VolumeSpec {
    spec(lowers.iter().map(PathBuf::from).collect(), upper.into())
}

#[test]
fn specs_round_trip_through_their_string_form() {
    for s in ["aufs:/l1:/l2:/up", "aufs:/we\\:ird\\\\dir:/u\\:p"] {
        let v: VolumeSpec = s.parse().unwrap();
        assert_eq!(AufsSpec::canonical(&v).unwrap().to_string(), s);
    }
    let v: VolumeSpec = "aufs:/we\\:ird\\\\dir:/u\\:p".parse().unwrap();
    assert_eq!(
        AufsSpec::from_spec(&v).unwrap(),
        AufsSpec::new(vec!["/we:ird\\dir".into()], "/u:p".into())
    );
    for (s, why) in [
        ("aufs:/only", "aufs needs LOWER[:LOWER…]:UPPER"),
        ("aufs:rel:/u", "absolute"),
        ("aufs:/l:/a/../u", ".."),
    ] {
        let e = AufsSpec::from_spec(&s.parse().unwrap()).unwrap_err();
        assert!(matches!(e, BdevError::InvalidSpec { .. }), "{s}: {e}");
        assert!(e.to_string().contains(why), "{s}: {e}");
    }
    let e = AufsSpec::from_spec(&"overlay:/l:/u".parse().unwrap()).unwrap_err();
    assert!(matches!(e, BdevError::ForeignVolume { .. }), "{e}");
}

#[test]
fn unknown_pool_options_are_refused() {
    let cfg = PoolConfig::new("t", NAME)
        .with_path("/p")
        .with_option("vg", "x");
    let e = Aufs::open(&cfg, Arc::new(ScriptedRunner::new()))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("vg"), "{e}");
}

#[test]
fn caps_list_what_each_mechanism_needs() {
    let mut a = pool(Path::new("/p"));
    assert_eq!(a.caps().kernel_fs, ["fuse"]);
    assert_eq!(a.caps().tools, UNIONFS_TOOLS);
    assert!(a.caps().lacks_xattrs && a.caps().clones_span_pools);
    a.mech = Mechanism::Kernel;
    assert_eq!(a.caps().kernel_fs, ["aufs"]);
    assert!(a.caps().tools.is_empty() && !a.caps().lacks_xattrs);
}

#[test]
fn branch_lists_per_mechanism() {
    let lowers = vec![PathBuf::from("/p/o/upper"), PathBuf::from("/p/o/lower")];
    let up = Path::new("/p/c/upper");
    assert_eq!(
        branch_list(up, &lowers, false, Mechanism::UnionfsFuse),
        "/p/c/upper=RW:/p/o/upper=RO:/p/o/lower=RO"
    );
    assert_eq!(
        branch_list(up, &lowers, true, Mechanism::UnionfsFuse),
        "/p/c/upper=RO:/p/o/upper=RO:/p/o/lower=RO"
    );
    assert_eq!(
        branch_list(up, &lowers[1..], false, Mechanism::Kernel),
        "/p/c/upper=rw:/p/o/lower=ro"
    );
}

#[test]
fn specs_outside_the_pool_or_with_separators_are_refused() {
    let a = pool(Path::new("/p"));
    assert!(a.branches_of(&au(&["/p/c/lower"], "/p/c/upper")).is_ok());
    let snap = au(&["/p/c/lower"], "/p/.snapshots/c/s1/upper");
    let (_, loc) = a.branches_of(&snap).unwrap();
    assert!(loc.is_snapshot());
    assert_eq!(loc.at, Path::new("/p/.snapshots/c/s1"));
    for (lowers, upper) in [
        (vec!["/p/c/lower"], "/elsewhere/c/upper"),
        (vec!["/p/c/lower"], "/p/c/sub/upper"),
        (vec!["/p/c/lower"], "/p/c/notupper"),
        (vec!["/p/c/lower"], "/p/upper"),
    ] {
        let v = au(&lowers, upper);
        assert!(
            matches!(a.branches_of(&v), Err(BdevError::ForeignVolume { .. })),
            "{v}"
        );
    }
    for lower in ["/we:ird", "/a=b", "/a,b"] {
        let v = au(&[lower], "/p/c/upper");
        assert!(
            matches!(a.branches_of(&v), Err(BdevError::InvalidSpec { .. })),
            "{v}"
        );
    }
    assert!(a.branches_of(&"dir:/p/c".parse().unwrap()).is_err());
    assert_eq!(
        a.branch_dirs(&au(&["/a", "/b"], "/p/c/upper")),
        [Path::new("/a"), Path::new("/b"), Path::new("/p/c/upper")]
    );
    assert!(a.branch_dirs(&"dir:/p/c".parse().unwrap()).is_empty());
}

#[test]
fn only_snapshots_are_destroyed_as_snapshots() {
    let d = tempfile::tempdir().unwrap();
    let a = pool(d.path());
    let mut rv = Revert::new();
    let o = a.create("o", &CreateOpts::default(), &mut rv).unwrap();
    let s = a.snapshot(&o, "o", "s1", &mut rv).unwrap();
    rv.commit();
    assert_eq!(a.snapshot_named("o", "s1").unwrap(), Some(s.clone()));
    let e = a.destroy_snapshot(&o).unwrap_err();
    assert!(matches!(e, BdevError::ForeignVolume { .. }), "{e}");
    a.destroy_snapshot(&s).unwrap();
    assert!(!d.path().join(".snapshots/o").exists());
    assert_eq!(a.volume_named("o").unwrap(), Some(o));
}

#[test]
fn clones_stack_on_the_origins_branches() {
    let d = tempfile::tempdir().unwrap();
    let a = pool(d.path());
    let mut rv = Revert::new();
    let o = a.create("o", &CreateOpts::default(), &mut rv).unwrap();
    let c = a.snapshot_clone(&o, "c", &mut rv).unwrap();
    let c2 = a.snapshot_clone(&c, "c2", &mut rv).unwrap();
    let AufsSpec { lowers, upper } = AufsSpec::from_spec(&c2).unwrap();
    let p = d.path();
    assert_eq!(upper, p.join("c2/upper"));
    assert_eq!(
        lowers,
        vec![p.join("c/upper"), p.join("o/upper"), p.join("o/lower")]
    );
    // A plain tree becomes the single lower.
    let tree = p.join("tree");
    fs::create_dir(&tree).unwrap();
    let t = a.stack_on_tree(&tree, "t", &mut rv).unwrap();
    assert_eq!(t, spec(vec![tree], p.join("t/upper")));
    let odd = p.join("we:ird");
    let e = a.stack_on_tree(&odd, "w", &mut rv).unwrap_err();
    assert!(matches!(e, BdevError::InvalidSpec { .. }), "{e}");
    for other in ["qcow2:/x.qcow2", "dir:/x"] {
        let e = a
            .snapshot_clone(&other.parse().unwrap(), "q", &mut rv)
            .unwrap_err();
        assert!(matches!(e, BdevError::ForeignVolume { .. }), "{e}");
    }
    drop(rv);
    assert_eq!(
        fs::read_dir(p).unwrap().count(),
        1,
        "revert leaves only the tree"
    );
}

#[test]
fn volumes_with_unrecorded_lowers_are_found_and_destroyed() {
    let d = tempfile::tempdir().unwrap();
    let a = pool(d.path());
    let mut rv = Revert::new();
    let o = a.create("o", &CreateOpts::default(), &mut rv).unwrap();
    let c = a.snapshot_clone(&o, "c", &mut rv).unwrap();
    rv.commit();
    assert_eq!(a.volume_named("c").unwrap(), Some(c));
    fs::remove_file(d.path().join("c").join(lookup::LOWERS_FILE)).unwrap();
    let old = a.volume_named("c").unwrap().unwrap();
    assert_eq!(old, au(&[], &d.path().join("c/upper").to_string_lossy()));
    assert_eq!(a.branch_dirs(&old), [d.path().join("c/upper")]);
    a.destroy(&old).unwrap();
    assert_eq!(a.volume_names().unwrap(), ["o"]);
}
