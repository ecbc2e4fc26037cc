//! Never lose data: a tree holding file capabilities, access and default ACLs,
//! user and trusted xattrs, hardlinks, a sparse file, a fifo, device nodes and
//! setuid/setgid files goes through every clone and copy path (snapshot clone,
//! same-pool copy, copy to and from dir, snapshot restore) on every backend that
//! runs here. Each result is identical by the comparer, after what the target
//! declares (`coarse_timestamps`; `lacks_xattrs` with `--drop-xattrs`), or the
//! operation is refused before anything is written: no volume, no record.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::path::PathBuf;

use berth_bdev::copy::{copy_tree, NoProgress};
use berth_bdev::generic::with_mounted;
use berth_bdev::plan::CloneMode;
use berth_fixtures::compare::read_xattrs;
use berth_tests::fidelity::{
    attempt, expected_drops, xattr_refusal, xattrs_of, Expect, Log, Warnings, World, SETUPS,
};
use berth_tests::harness::skip;

/// The tree of a volume of a dir pool.
fn dir_tree(v: &berth_bdev::VolumeSpec) -> std::path::PathBuf {
    use berth_bdev::SpecForm;
    berth_backends::dir::DirSpec::from_spec(v)
        .unwrap_or_else(|e| panic!("not a dir volume: {e}"))
        .path
}

#[test]
fn every_clone_and_copy_path_keeps_everything_or_refuses() {
    let kinds: Vec<&str> = SETUPS.iter().map(|(k, _)| *k).collect();
    let w = World::new(&kinds);
    let mut log = Log::default();
    // The source of every path: the full reference created in each pool, or,
    // where the pool cannot store xattrs, refused and created without them.
    let mut sources = Vec::new();
    for p in &w.pools {
        let caps = w.caps(&p.name);
        let name = format!("src_{}", p.name);
        let full = w.refs.full();
        let keeps = Expect::default().through(&caps);
        let first = if caps.lacks_xattrs { None } else { Some(keeps) };
        log.note(attempt(
            &w,
            &format!("create in {}", p.name),
            &name,
            first,
            || w.create(&name, &p.name, &full, false),
        ));
        let made = if caps.lacks_xattrs {
            w.create(&name, &p.name, &full, true)
        } else {
            w.create(&name, &p.name, &full, false)
        };
        made.unwrap_or_else(|e| panic!("create {name}: {e}"));
        let d = w.differences(&name, &w.refs.path(keeps));
        assert!(d.is_empty(), "{name} differs:\n  {}", d.join("\n  "));
        sources.push((p.name.clone(), name, keeps));
    }

    for (pool, src, keeps) in &sources {
        let caps = w.caps(pool);
        // Snapshot clones into every pool: shared data, or refused.
        for q in &w.pools {
            let dst = format!("snap_{pool}_{}", q.name);
            let e = keeps.through(&w.caps(&q.name));
            let expect = (!e.no_xattrs || keeps.no_xattrs).then_some(e);
            log.note(attempt(
                &w,
                &format!("snapshot clone {pool} -> {}", q.name),
                &dst,
                expect,
                || w.clone_to(src, &dst, &q.name, CloneMode::Snapshot, false, &NoProgress),
            ));
        }
        // Copies: within the pool, out to dir, in from dir.
        let dst = format!("copy_{pool}");
        log.note(attempt(
            &w,
            &format!("copy {pool} -> {pool}"),
            &dst,
            Some(*keeps),
            || w.clone_to(src, &dst, pool, CloneMode::Copy, false, &NoProgress),
        ));
        if w.has("dir") && pool != "dir" {
            let dst = format!("todir_{pool}");
            log.note(attempt(
                &w,
                &format!("copy {pool} -> dir"),
                &dst,
                Some(*keeps),
                || w.clone_to(src, &dst, "dir", CloneMode::Copy, false, &NoProgress),
            ));
            let dst = format!("fromdir_{pool}");
            let into = Expect::default().through(&caps);
            let expect = (!caps.lacks_xattrs).then_some(into);
            log.note(attempt(
                &w,
                &format!("copy dir -> {pool}"),
                &dst,
                expect,
                || w.clone_to("src_dir", &dst, pool, CloneMode::Copy, false, &NoProgress),
            ));
            if caps.lacks_xattrs {
                let said = Warnings::default();
                log.note(attempt(
                    &w,
                    &format!("copy dir -> {pool} --drop-xattrs"),
                    &dst,
                    Some(into),
                    || w.clone_to("src_dir", &dst, pool, CloneMode::Copy, true, &said),
                ));
                expected_drops(&w.refs.full(), said.0.into_inner().unwrap());
            }
        }
        // Snapshot, change, restore: the snapshot's tree is back.
        if caps.snapshot {
            w.b().snapshot(src, Some("s0")).unwrap();
            w.scribble(src);
            let what = format!("restore in {pool}");
            log.note(match w.b().restore(src, "s0", &NoProgress) {
                Ok(()) => {
                    let d = w.differences(src, &w.refs.path(*keeps));
                    if d.is_empty() {
                        Ok(format!("{what}: identical ({keeps:?})"))
                    } else {
                        Err(format!(
                            "{what}: {} differences:\n    {}",
                            d.len(),
                            d.join("\n    ")
                        ))
                    }
                }
                Err(e) => Err(format!("{what}: {e}")),
            });
            w.b().snapshot_rm(src, "s0").unwrap();
        }
    }
    eprintln!("{}", log.report.join("\n"));
    assert!(
        log.failures.is_empty(),
        "{} paths lost data:\n  {}",
        log.failures.len(),
        log.failures.join("\n  ")
    );
    for (_, src, _) in sources.iter().rev() {
        w.destroy(src);
    }
}

/// Dir and aufs pools, when aufs goes through unionfs-fuse (kernel aufs keeps
/// xattrs, so these tests do not apply there).
fn unionfs_world() -> Option<World> {
    let w = World::new(&["dir", "aufs"]);
    if !(w.has("dir") && w.has("aufs")) {
        skip("needs a dir and an aufs pool");
        return None;
    }
    if !w.caps("aufs").lacks_xattrs {
        eprintln!("aufs is the kernel's here, which keeps xattrs");
        return None;
    }
    Some(w)
}

/// The measured regression: a snapshot clone onto unionfs-fuse of a tree with
/// xattrs used to succeed and hide them. It is refused before anything is
/// written, naming a file and an attribute and the way out.
#[test]
fn aufs_snapshot_clone_of_an_xattr_tree_is_refused() {
    let Some(w) = unionfs_world() else { return };
    w.create("deb_src", "dir", &w.refs.full(), false).unwrap();
    let before = w.state();
    let e = w
        .clone_to(
            "deb_src",
            "k",
            "aufs",
            CloneMode::Snapshot,
            false,
            &NoProgress,
        )
        .expect_err("a snapshot clone onto unionfs-fuse hides the xattrs");
    let (path, name) = xattr_refusal(&e).unwrap_or_else(|| panic!("not an xattr refusal: {e}"));
    let msg = e.to_string();
    assert!(msg.contains("--copy --drop-xattrs"), "{msg}");
    let deb = w.b().store().container("deb_src").unwrap().volume;
    let tree = dir_tree(&deb);
    let rel = path.strip_prefix(&tree).unwrap().to_path_buf();
    assert!(xattrs_of(&w.refs.full()).contains(&(rel, name)), "{msg}");
    assert!(!w.b().store().exists("k"));
    assert_eq!(w.state(), before, "the refusal wrote something");
    // Without xattrs the same clone works.
    w.create(
        "plain_src",
        "dir",
        &w.refs.path(Expect {
            no_xattrs: true,
            coarse: false,
        }),
        false,
    )
    .unwrap();
    w.clone_to(
        "plain_src",
        "k",
        "aufs",
        CloneMode::Snapshot,
        false,
        &NoProgress,
    )
    .unwrap();
}

/// A copy out of an aufs volume whose branches hide xattrs (one made before the
/// refusal above existed) keeps everything or fails: here it fails up front,
/// and with `--drop-xattrs` it copies the rest.
#[test]
fn copy_out_of_aufs_keeps_everything_or_fails() {
    let Some(w) = unionfs_world() else { return };
    let stripped = w.refs.path(Expect {
        no_xattrs: true,
        coarse: false,
    });
    w.create("deb_src", "dir", &stripped, false).unwrap();
    w.clone_to(
        "deb_src",
        "k",
        "aufs",
        CloneMode::Snapshot,
        false,
        &NoProgress,
    )
    .unwrap();
    // What the bug left: xattrs in the lower branch, invisible through the union.
    let deb = w.b().store().container("deb_src").unwrap().volume;
    let tree = dir_tree(&deb);
    for (rel, name) in xattrs_of(&w.refs.full()) {
        let value = read_xattrs(&w.refs.full().join(&rel)).unwrap()[name.as_bytes()].clone();
        rustix::fs::lsetxattr(
            tree.join(&rel),
            name.as_str(),
            &value,
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
    }
    // The copy engine alone does not take "cannot list" for "none".
    let k = w.b().store().container("k").unwrap();
    let aufs = w.b().backend_of(&k).unwrap();
    let out = w.tmp.path().join("raw-copy");
    fs::create_dir(&out).unwrap();
    let e = with_mounted(aufs.as_ref(), &k.volume, &w.b().scratch(), true, |root| {
        copy_tree(root, &out, &NoProgress)
    })
    .expect_err("a listing that fails is not an empty one");
    assert!(e.to_string().contains("list xattrs"), "{e}");
    fs::remove_dir_all(&out).unwrap();

    // A snapshot clone within aufs is not refused and scans nothing: it
    // stacks on the same branches, so it shows what its source shows and the
    // xattrs stay where they are (a copy out of it is refused below as well).
    w.clone_to("k", "k2", "aufs", CloneMode::Snapshot, false, &NoProgress)
        .expect("an aufs snapshot clone of an aufs volume");
    let e = w
        .clone_to("k2", "y", "dir", CloneMode::Copy, false, &NoProgress)
        .expect_err("the clone's branches still hold the hidden xattrs");
    assert!(xattr_refusal(&e).is_some(), "not an xattr refusal: {e}");

    let before = w.state();
    let e = w
        .clone_to("k", "y", "dir", CloneMode::Copy, false, &NoProgress)
        .expect_err("the copy would lose the hidden xattrs");
    let (path, name) = xattr_refusal(&e).unwrap_or_else(|| panic!("not an xattr refusal: {e}"));
    assert!(path.starts_with(&tree), "{e}");
    assert!(!name.is_empty());
    assert!(!w.b().store().exists("y"));
    assert_eq!(w.state(), before, "the refusal wrote something");

    w.clone_to("k", "y", "dir", CloneMode::Copy, true, &NoProgress)
        .expect("--drop-xattrs accepts the loss");
    let d = w.differences("y", &stripped);
    assert!(d.is_empty(), "{}", d.join("\n"));
    // A sparse file read through unionfs-fuse stays sparse.
    let y = w.b().store().container("y").unwrap().volume;
    let sparse = dir_tree(&y).join("var/sparse.img");
    let md = fs::metadata(&sparse).unwrap();
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&md) * 512 < 4 << 20,
        "{sparse:?} takes {} blocks",
        std::os::unix::fs::MetadataExt::blocks(&md)
    );
}

/// `--drop-xattrs` into aufs drops them, says which, and keeps the rest; without
/// it the copy and the create are refused before anything is written.
#[test]
fn drop_xattrs_into_aufs_drops_them_and_says_so() {
    let Some(w) = unionfs_world() else { return };
    let full = w.refs.full();
    let stripped = w.refs.path(Expect {
        no_xattrs: true,
        coarse: false,
    });
    w.create("deb_src", "dir", &full, false).unwrap();

    let before = w.state();
    let e = w
        .clone_to("deb_src", "y", "aufs", CloneMode::Copy, false, &NoProgress)
        .expect_err("a copy into aufs would lose the xattrs");
    assert!(xattr_refusal(&e).is_some(), "{e}");
    assert!(e.to_string().contains("--drop-xattrs"), "{e}");
    let e = w
        .create("z_new", "aufs", &full, false)
        .expect_err("create into aufs would lose the xattrs");
    assert!(xattr_refusal(&e).is_some(), "{e}");
    assert_eq!(w.state(), before, "a refusal wrote something");

    let said = Warnings::default();
    w.clone_to("deb_src", "y", "aufs", CloneMode::Copy, true, &said)
        .unwrap();
    let dropped = said.0.into_inner().unwrap();
    expected_drops(&full, dropped.clone());
    assert!(
        dropped.contains(&(PathBuf::from("bin/ping"), "security.capability".to_owned())),
        "{dropped:?}"
    );
    for acl in ["system.posix_acl_access", "system.posix_acl_default"] {
        assert!(
            dropped.iter().any(|(_, n)| n == acl),
            "{acl} not reported: {dropped:?}"
        );
    }
    let d = w.differences("y", &stripped);
    assert!(d.is_empty(), "{}", d.join("\n"));

    w.create("z_new", "aufs", &full, true).unwrap();
    let d = w.differences("z_new", &stripped);
    assert!(d.is_empty(), "{}", d.join("\n"));
}
