//! Privileged tests of the aufs backend (unionfs-fuse where the kernel has no
//! aufs): the upper takes every change, lowers stay untouched, stacked clones keep
//! hiding what a middle layer deleted, and no unionfs daemon outlives its mount.

use std::fs;
use std::path::{Path, PathBuf};

use berth_backends::aufs::AufsSpec;
use berth_bdev::cmd::{self, HostRunner};
use berth_bdev::copy::{copy_tree, NoProgress};
use berth_bdev::generic::with_mounted;
use berth_bdev::mount;
use berth_bdev::{BdevError, CreateOpts, MountGuard, Revert, SpecForm, VolumeSpec};
use berth_fixtures::compare::{assert_same_tree, compare_trees};
use berth_tests::harness::{harness, wait_for, Harness};
use berth_tests::pools::aufs::setup;

fn unionfs_mech(h: &Harness) -> bool {
    h.backend
        .describe()
        .iter()
        .any(|(k, v)| *k == "mechanism" && v == "unionfs-fuse")
}

/// Live (not zombie) unionfs processes whose command line mentions `dir`.
fn daemons_under(dir: &Path) -> Vec<(i32, String)> {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let needle = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(raw) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_unionfs = args
            .first()
            .is_some_and(|a0| Path::new(a0).file_name().is_some_and(|n| n == "unionfs"));
        let zombie = fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rfind(')')
                    .map(|i| s[i + 1..].trim_start().starts_with(['Z', 'X']))
            })
            .unwrap_or(true);
        if is_unionfs && !zombie && args.iter().any(|a| a.contains(&needle)) {
            out.push((pid, args.join(" ")));
        }
    }
    out
}

fn assert_no_daemons(h: &Harness) {
    let dir = h.tmp.path();
    assert!(
        wait_for(|| daemons_under(dir).is_empty()),
        "unionfs daemons survived: {:#?}",
        daemons_under(dir)
    );
}

fn mount_at(h: &Harness, v: &VolumeSpec, name: &str, ro: bool) -> MountGuard {
    h.backend
        .mount(v, &h.scratch(name), ro)
        .unwrap_or_else(|e| panic!("mount {v}: {e}"))
}

/// Applies writes (`Some`) and deletions (`None`) through a read-write mount.
fn change(h: &Harness, v: &VolumeSpec, edits: &[(&str, Option<&str>)]) {
    with_mounted(h.backend.as_ref(), v, &h.scratch("mnt"), false, |root| {
        for (rel, what) in edits {
            let p = root.join(rel);
            match what {
                Some(content) => {
                    if let Some(parent) = p.parent() {
                        fs::create_dir_all(parent).map_err(BdevError::io("mkdir", parent))?;
                    }
                    fs::write(&p, content).map_err(BdevError::io("write", &p))?
                }
                None => fs::remove_file(&p).map_err(BdevError::io("remove", &p))?,
            }
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("change {v}: {e}"));
}

fn read(h: &Harness, v: &VolumeSpec, rel: &str) -> Option<String> {
    with_mounted(h.backend.as_ref(), v, &h.scratch("mnt"), true, |root| {
        Ok(fs::read_to_string(root.join(rel)).ok())
    })
    .unwrap_or_else(|e| panic!("read {rel} from {v}: {e}"))
}

fn upper(v: &VolumeSpec) -> PathBuf {
    aufs(v).upper
}

fn aufs(v: &VolumeSpec) -> AufsSpec {
    AufsSpec::from_spec(v).unwrap_or_else(|e| panic!("not aufs: {e}"))
}

#[test]
fn writes_and_deletes_land_only_in_the_upper() {
    let Some(h) = harness(setup) else { return };
    let base = h.scratch("base");
    for (rel, content) in [
        ("keep", "lower"),
        ("change", "lower"),
        ("gone", "lower"),
        ("dir/inner", "lower"),
    ] {
        fs::create_dir_all(base.join(rel).parent().unwrap()).unwrap();
        fs::write(base.join(rel), content).unwrap();
    }
    let reference = h.scratch("base-ref");
    copy_tree(&base, &reference, &NoProgress).expect("reference copy");

    let c = h.stack_on(&base, "c");
    change(
        &h,
        &c,
        &[
            ("change", Some("upper")),
            ("gone", None),
            ("dir/inner", None),
            ("new", Some("n")),
        ],
    );
    // The lower is untouched, times included.
    assert_same_tree(&reference, &base);
    // The upper holds exactly the changes.
    let up = upper(&c);
    assert_eq!(fs::read_to_string(up.join("change")).unwrap(), "upper");
    assert_eq!(fs::read_to_string(up.join("new")).unwrap(), "n");
    assert!(!up.join("keep").exists());
    if unionfs_mech(&h) {
        assert!(up.join(".unionfs-fuse/gone_HIDDEN~").exists());
        assert!(up.join(".unionfs-fuse/dir/inner_HIDDEN~").exists());
    } else {
        assert!(up.join(".wh.gone").exists());
    }
    // The merged view, from a fresh mount.
    let g = mount_at(&h, &c, "view", true);
    let root = g.path().to_path_buf();
    assert_eq!(fs::read_to_string(root.join("keep")).unwrap(), "lower");
    assert_eq!(fs::read_to_string(root.join("change")).unwrap(), "upper");
    assert!(!root.join("gone").exists());
    assert!(!root.join("dir/inner").exists());
    let mut names: Vec<String> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["change", "dir", "keep", "new"],
        "whiteouts must not show"
    );
    g.release().expect("unmount");

    // A fresh volume's own lower stays empty.
    let v = h.create("fresh", &CreateOpts::default());
    change(&h, &v, &[("etc/hostname", Some("fresh"))]);
    let lowers = aufs(&v).lowers;
    assert_eq!(fs::read_dir(&lowers[0]).unwrap().count(), 0);
    assert_eq!(
        fs::read_to_string(upper(&v).join("etc/hostname")).unwrap(),
        "fresh"
    );
    h.backend.destroy(&c).expect("destroy");
    h.backend.destroy(&v).expect("destroy");
    assert!(
        base.join("gone").exists(),
        "destroying a clone must not touch its lower"
    );
    assert_no_daemons(&h);
}

#[test]
fn stacked_clones_hide_what_a_middle_layer_deleted() {
    let Some(h) = harness(setup) else { return };
    let o = h.create("o", &CreateOpts::default());
    change(
        &h,
        &o,
        &[("f1", Some("o")), ("f2", Some("o")), ("f3", Some("o"))],
    );
    let c1 = h.clone_of(&o, "c1");
    change(&h, &c1, &[("f1", None), ("f2", Some("c1"))]);
    let c2 = h.clone_of(&c1, "c2");
    let lowers = aufs(&c2).lowers;
    let o_lowers = aufs(&o).lowers;
    assert_eq!(lowers, [upper(&c1), upper(&o), o_lowers[0].clone()]);
    assert_eq!(
        read(&h, &c2, "f1"),
        None,
        "f1 was deleted in the middle layer"
    );
    assert_eq!(read(&h, &c2, "f2").as_deref(), Some("c1"));
    assert_eq!(read(&h, &c2, "f3").as_deref(), Some("o"));
    change(&h, &c2, &[("f3", None), ("f4", Some("c2"))]);
    assert_eq!(read(&h, &c1, "f3").as_deref(), Some("o"));
    assert_eq!(read(&h, &c1, "f4"), None);
    for (f, want) in [("f1", "o"), ("f2", "o"), ("f3", "o")] {
        assert_eq!(read(&h, &o, f).as_deref(), Some(want));
    }

    // A snapshot of the middle layer, and a clone of that snapshot, hide the same.
    let mut rv = Revert::new();
    let snap = h
        .backend
        .snapshot(&c1, "c1", "s1", &mut rv)
        .expect("snapshot");
    rv.commit();
    change(&h, &c1, &[("f2", Some("later"))]);
    let from_snap = h.clone_of(&snap, "from-snap");
    assert_eq!(read(&h, &from_snap, "f1"), None);
    assert_eq!(read(&h, &from_snap, "f2").as_deref(), Some("c1"));
    // Snapshots mount read-only.
    let g = mount_at(&h, &snap, "snap", false);
    assert!(fs::write(g.path().join("x"), "x").is_err());
    g.release().expect("unmount");

    for v in [&from_snap, &c2] {
        h.backend.destroy(v).expect("destroy");
    }
    h.backend.destroy_snapshot(&snap).expect("destroy snapshot");
    h.backend.destroy(&c1).expect("destroy");
    h.backend.destroy(&o).expect("destroy");
    assert_no_daemons(&h);
}

#[test]
fn no_unionfs_daemon_outlives_its_mount() {
    let Some(h) = harness(setup) else { return };
    if !unionfs_mech(&h) {
        eprintln!("the kernel has aufs: no daemon to check");
        return;
    }
    let v = h.create("d", &CreateOpts::default());
    let at = h.scratch("m");

    // Guard release.
    let g = h.backend.mount(&v, &at, false).expect("mount");
    let pids = daemons_under(&at);
    assert_eq!(pids.len(), 1, "exactly one daemon serves a mount: {pids:?}");
    g.release().expect("unmount");
    assert!(!mount::is_mountpoint(&at));
    assert_no_daemons(&h);

    // Guard dropped without release.
    drop(h.backend.mount(&v, &at, true).expect("mount"));
    assert!(!mount::is_mountpoint(&at));
    assert_no_daemons(&h);

    // A persisted mount, undone later by `unmount`.
    let kept = h.backend.mount(&v, &at, false).expect("mount").persist();
    assert_eq!(daemons_under(&at).len(), 1);
    h.backend.unmount(&v, &kept).expect("unmount persisted");
    assert!(!mount::is_mountpoint(&at));
    assert_no_daemons(&h);

    // A busy mount: the unmount fails and detaches lazily; the daemon still goes.
    let g = h.backend.mount(&v, &at, false).expect("mount");
    let pid = daemons_under(&at)[0].0;
    let busy = fs::File::create(at.join("held-open")).expect("open a file in the mount");
    let r = g.release();
    assert!(r.is_err(), "unmounting a busy mount should report it");
    assert!(
        !mount::is_mountpoint(&at),
        "the busy mount was not detached"
    );
    assert!(
        wait_for(|| !Path::new(&format!("/proc/{pid}/cmdline")).exists()
            || daemons_under(&at).is_empty()),
        "daemon {pid} survived"
    );
    drop(busy);
    assert_no_daemons(&h);
    h.backend.destroy(&v).expect("destroy");
}

/// Lists every xattr below `dir` (`getfattr` prints `# file: PATH` then names).
fn xattrs_below(dir: &Path) -> Vec<(PathBuf, String)> {
    let out = cmd::run(
        &HostRunner,
        "getfattr",
        &[
            "-R",
            "-h",
            "-m",
            "-",
            "--absolute-names",
            &dir.to_string_lossy(),
        ],
    )
    .expect("getfattr");
    let mut file = PathBuf::new();
    let mut found = Vec::new();
    for line in out.stdout.lines() {
        if let Some(p) = line.strip_prefix("# file: ") {
            file = PathBuf::from(p);
        } else if !line.is_empty() {
            found.push((file.clone(), line.to_owned()));
        }
    }
    found
}

/// unionfs-fuse 1.0 as Debian builds it has no xattr support: setting one fails
/// with EOPNOTSUPP (this test notices when that changes). Every other file type
/// and attribute survives a copy into the volume.
#[test]
fn unionfs_keeps_every_file_type_but_xattrs() {
    let Some(h) = harness(setup) else { return };
    if !unionfs_mech(&h) {
        eprintln!("the kernel has aufs: xattrs are its business");
        return;
    }
    let reference = h.scratch("reference");
    berth_fixtures::filetypes::build_all_types(&reference).expect("build reference tree");
    let attrs = xattrs_below(&reference);
    assert!(!attrs.is_empty());
    for (file, name) in &attrs {
        cmd::run(
            &HostRunner,
            "setfattr",
            &["-h", "-x", name, &file.to_string_lossy()],
        )
        .expect("strip xattr");
    }
    let v = h.create("types", &CreateOpts::default());
    with_mounted(h.backend.as_ref(), &v, &h.scratch("mnt"), false, |root| {
        let f = root.join("probe");
        fs::write(&f, "x").map_err(BdevError::io("write", &f))?;
        let set = cmd::run(
            &HostRunner,
            "setfattr",
            &["-n", "user.x", "-v", "1", &f.to_string_lossy()],
        );
        let e = set.expect_err("unionfs-fuse gained xattr support: revisit this backend's docs");
        assert!(e.stderr().contains("not supported"), "{e}");
        fs::remove_file(&f).map_err(BdevError::io("remove", &f))?;
        let dst = root.join("types");
        fs::create_dir(&dst).map_err(BdevError::io("mkdir", &dst))?;
        copy_tree(&reference, &dst, &NoProgress)?;
        Ok(())
    })
    .expect("copy into volume");
    with_mounted(h.backend.as_ref(), &v, &h.scratch("mnt"), true, |root| {
        if let Err(d) = compare_trees(&reference, &root.join("types")) {
            panic!("lost in the union:\n  {}", d.join("\n  "));
        }
        Ok(())
    })
    .expect("compare");
    h.backend.destroy(&v).expect("destroy");
    assert_no_daemons(&h);
}

/// While a union uses a volume's branches, the volume cannot be destroyed, and a
/// snapshot of an upper being written is refused.
#[test]
fn branches_in_use_are_protected() {
    let Some(h) = harness(setup) else { return };
    if !unionfs_mech(&h) {
        eprintln!("the kernel has aufs: branch use is not tracked");
        return;
    }
    let o = h.create("o", &CreateOpts::default());
    change(&h, &o, &[("f", Some("o"))]);
    let c = h.clone_of(&o, "c");
    let g = mount_at(&h, &c, "m", false);
    let e = h
        .backend
        .destroy(&o)
        .expect_err("origin is a branch of a mount");
    assert!(format!("{e:?}").contains("uses it as a branch"), "{e:?}");
    let e = h.backend.destroy(&c).expect_err("clone is mounted");
    assert!(format!("{e:?}").contains("uses it as a branch"), "{e:?}");
    let mut rv = Revert::new();
    assert!(h.backend.snapshot(&c, "c", "s", &mut rv).is_err());
    // The origin's upper is only a read-only branch here: it can be snapshotted.
    let snap = h
        .backend
        .snapshot(&o, "o", "s", &mut rv)
        .expect("snapshot of a ro branch");
    rv.commit();
    g.release().expect("unmount");
    assert_eq!(read(&h, &o, "f").as_deref(), Some("o"));
    h.backend.destroy_snapshot(&snap).expect("destroy snapshot");
    h.backend.destroy(&c).expect("destroy");
    h.backend.destroy(&o).expect("destroy");
    assert_no_daemons(&h);
}
