//! Unit tests of the overlay backend (no mounts).

use super::*;

fn backend() -> Overlay {
    Overlay::open(&PoolConfig::new("o", NAME).with_path("/pool")).unwrap()
}

fn ov(lowers: &[&str], upper: &str) -> VolumeSpec {
    spec(lowers.iter().map(PathBuf::from).collect(), upper.into())
}

fn layers_of(v: &VolumeSpec) -> Result<Vec<PathBuf>> {
    let layers = OverlaySpec::from_spec(v)?.layers();
    check_layer_limit(v, &layers)?;
    Ok(layers)
}

#[test]
fn specs_round_trip_through_their_string_form() {
    let v: VolumeSpec = "overlay:/we\\:ird\\\\dir:/u\\:p".parse().unwrap();
    let s = OverlaySpec::from_spec(&v).unwrap();
    assert_eq!(s.lowers, [PathBuf::from("/we:ird\\dir")]);
    assert_eq!(s.upper, Path::new("/u:p"));
    assert_eq!(s.to_spec().to_string(), "overlay:/we\\:ird\\\\dir:/u\\:p");
    let lxc: VolumeSpec = "overlayfs:/a:/b:/up".parse().unwrap();
    assert_eq!(
        OverlaySpec::canonical(&lxc).unwrap().to_string(),
        "overlay:/a:/b:/up"
    );
    assert_eq!(OverlaySpec::from_spec(&lxc).unwrap().lowers.len(), 2);
    assert_eq!(
        OverlaySpec::new(vec![], "/p/c/upper".into()).workdir(),
        Path::new("/p/c/work")
    );
}

#[test]
fn bad_specs_are_rejected_with_a_reason() {
    for (s, why) in [
        ("overlay:/only", "overlay needs LOWER[:LOWER…]:UPPER"),
        ("overlay:", "LOWER"),
        ("overlay:rel:/u", "absolute"),
        ("overlay:/a/../b:/u", ".."),
    ] {
        let e = OverlaySpec::from_spec(&s.parse().unwrap()).unwrap_err();
        assert!(matches!(e, BdevError::InvalidSpec { .. }), "{s}: {e}");
        assert!(e.to_string().contains(why), "{s}: {e}");
    }
    let e = OverlaySpec::from_spec(&"aufs:/l:/u".parse().unwrap()).unwrap_err();
    assert!(matches!(e, BdevError::ForeignVolume { .. }), "{e}");
}

#[test]
fn unknown_pool_options_are_refused() {
    let cfg = PoolConfig::new("o", NAME)
        .with_path("/pool")
        .with_option("dataset", "x");
    let e = Overlay::open(&cfg).unwrap_err().to_string();
    assert!(e.contains("dataset"), "{e}");
    let e = Overlay::open(&PoolConfig::new("o", NAME))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--path"), "{e}");
}

#[test]
fn specs_are_classified_by_their_upper() {
    let b = backend();
    let (_, o) = b.parts(&ov(&["/pool/c1/lower"], "/pool/c1/upper")).unwrap();
    assert_eq!(
        (o.at.as_path(), o.key()),
        (Path::new("/pool/c1"), "c1".into())
    );
    let (_, o) = b
        .parts(&ov(&["/x"], "/pool/.snapshots/c1/s1/upper"))
        .unwrap();
    assert_eq!(o.at, Path::new("/pool/.snapshots/c1/s1"));
    assert_eq!(o.key(), "c1@s1");
    for bad in [
        ov(&["/x"], "/other/c1/upper"),
        ov(&["/x"], "/pool/c1/up"),
        ov(&["/x"], "/pool/upper"),
        ov(&["/x"], "/pool/a/b/upper"),
    ] {
        let e = b.parts(&bad).unwrap_err();
        assert!(matches!(e, BdevError::ForeignVolume { .. }), "{bad}: {e}");
    }
    assert!(b.parts(&"dir:/pool/c1".parse().unwrap()).is_err());
    assert_eq!(
        b.branch_dirs(&ov(&["/a", "/b"], "/pool/c/upper")),
        [Path::new("/a"), Path::new("/b"), Path::new("/pool/c/upper")]
    );
    assert!(b.branch_dirs(&"dir:/pool/c1".parse().unwrap()).is_empty());
}

#[test]
fn clones_stack_on_the_origin_layers() {
    let base = ov(&["/pool/b/lower"], "/pool/b/upper");
    assert_eq!(
        layers_of(&base).unwrap(),
        vec![PathBuf::from("/pool/b/upper"), "/pool/b/lower".into()]
    );
    let c2 = ov(
        &["/pool/c1/upper", "/pool/b/upper", "/pool/b/lower"],
        "/pool/c2/upper",
    );
    assert_eq!(layers_of(&c2).unwrap().len(), 4);
    let mut rv = Revert::new();
    for other in ["dir:/d/v", "zfs:tank/v"] {
        let e = backend()
            .snapshot_clone(&other.parse().unwrap(), "c", &mut rv)
            .unwrap_err();
        assert!(matches!(e, BdevError::ForeignVolume { .. }), "{e}");
    }
}

#[test]
fn clones_stack_on_plain_trees() {
    let d = tempfile::tempdir().unwrap();
    let b = Overlay::open(&PoolConfig::new("o", NAME).with_path(d.path().join("p"))).unwrap();
    let tree = d.path().join("tree");
    fs::create_dir(&tree).unwrap();
    let mut rv = Revert::new();
    let t = b.stack_on_tree(&tree, "t", &mut rv).unwrap();
    assert_eq!(
        OverlaySpec::from_spec(&t).unwrap(),
        OverlaySpec::new(vec![tree.clone()], d.path().join("p/t/upper"))
    );
    let e = b
        .stack_on_tree(&d.path().join("missing"), "m", &mut rv)
        .unwrap_err();
    assert!(matches!(e, BdevError::NotFound { .. }), "{e}");
    drop(rv);
    assert!(!d.path().join("p/t").exists());
}

#[test]
fn layer_limit_is_checked_before_anything_is_made() {
    let many: Vec<String> = (0..MAX_LAYERS - 1)
        .map(|i| format!("/pool/c{i}/upper"))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    // MAX-2 lowers + upper = MAX-1 layers, + the clone's upper = MAX.
    assert!(layers_of(&ov(&refs[1..], "/pool/t/upper")).is_ok());
    let e = layers_of(&ov(&refs, "/pool/t/upper")).unwrap_err();
    assert!(
        matches!(
            e,
            BdevError::LayerLimit {
                backend: NAME,
                layers: 501,
                max: MAX_LAYERS,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("--copy"), "{e}");
}

#[test]
fn mount_options_rw_and_ro() {
    let s = OverlaySpec::new(
        vec![PathBuf::from("/p/a/upper"), "/p/a/lower".into()],
        "/p/c/upper".into(),
    );
    let rw = mount_options(&s, false);
    let keys: Vec<&str> = rw.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        keys,
        [
            "lowerdir+",
            "lowerdir+",
            "upperdir",
            "workdir",
            "index",
            "redirect_dir",
            "metacopy"
        ]
    );
    assert_eq!(rw[0].1, "/p/a/upper");
    assert_eq!(rw[3].1, "/p/c/work");
    let ro = mount_options(&s, true);
    let lows: Vec<&OsString> = ro
        .iter()
        .filter(|(k, _)| *k == "lowerdir+")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(lows, ["/p/c/upper", "/p/a/upper", "/p/a/lower"]);
    assert!(!ro.iter().any(|(k, _)| *k == "upperdir" || *k == "workdir"));
}

#[test]
fn volumes_are_found_by_name_with_their_lowers() {
    let d = tempfile::tempdir().unwrap();
    let b = Overlay::open(&PoolConfig::new("o", NAME).with_path(d.path())).unwrap();
    let mut rv = Revert::new();
    let base = b.create("base", &CreateOpts::default(), &mut rv).unwrap();
    let clone = b.snapshot_clone(&base, "clone", &mut rv).unwrap();
    let snap = b.snapshot(&clone, "clone", "s1", &mut rv).unwrap();
    rv.commit();
    let mut rv = Revert::new();
    let e = b.snapshot(&snap, "clone", "s2", &mut rv).unwrap_err();
    assert!(matches!(e, BdevError::SnapshotReadOnly { .. }), "{e}");
    assert_eq!(b.volume_names().unwrap(), ["base", "clone"]);
    assert_eq!(b.volume_named("base").unwrap(), Some(base.clone()));
    assert_eq!(b.volume_named("clone").unwrap(), Some(clone.clone()));
    assert_eq!(b.volume_named("none").unwrap(), None);
    assert_eq!(b.snapshot_names("clone").unwrap(), ["s1"]);
    assert_eq!(b.snapshot_named("clone", "s1").unwrap(), Some(snap.clone()));

    // Made before lowers were recorded: found with none, and destroyable.
    fs::remove_file(d.path().join("clone").join(lookup::LOWERS_FILE)).unwrap();
    let old = b.volume_named("clone").unwrap().unwrap();
    assert_eq!(
        old,
        ov(&[], &d.path().join("clone/upper").to_string_lossy())
    );
    b.destroy_snapshot(&snap).unwrap();
    b.destroy_snapshot(&snap).unwrap();
    b.destroy(&old).unwrap();
    b.destroy(&clone).unwrap();
    assert_eq!(b.volume_named("clone").unwrap(), None);

    // Partly made: a directory without upper or work.
    fs::remove_dir(d.path().join("base/work")).unwrap();
    fs::remove_dir(d.path().join("base/upper")).unwrap();
    let partial = b.volume_named("base").unwrap().unwrap();
    assert_eq!(partial, base);
    b.destroy(&partial).unwrap();
    assert!(b.volume_names().unwrap().is_empty());
    assert!(!d.path().join(".snapshots/clone").exists());
}

#[test]
fn kernel_releases_parse() {
    assert_eq!(kernel_version("6.18.44-fc-v669"), Some((6, 18)));
    assert_eq!(kernel_version("6.1.0-28-cloud-amd64"), Some((6, 1)));
    assert_eq!(kernel_version("5.10"), Some((5, 10)));
    assert_eq!(kernel_version("garbage"), None);
    assert!(kernel_version("6.1.0").unwrap() < MIN_KERNEL);
    assert!(kernel_version("6.8.0").unwrap() >= MIN_KERNEL);
}
