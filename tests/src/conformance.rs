//! The backend conformance suite: one function per property, run against every
//! backend by `conformance!` (as Docker's graphtest serves its drivers).
//!
//! Each property checks what the backend's `Caps` promise, and that operations whose
//! flag is off answer `Unsupported` rather than doing something else. It returns an
//! `Outcome`: `NotApplicable` (with the reason) where its flag is off, so that a
//! suite's summary shows what was really tested; `capability` has the properties
//! of the flags that name no operation.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use berth_bdev::copy::NoProgress;
use berth_bdev::generic::{copy_opts, copy_volume, with_mounted};
use berth_bdev::{BdevError, CreateOpts, Revert, VolumeSpec};

use crate::harness::{Harness, Outcome};

mod capability;
mod stream;
pub use capability::{copy_on_write, size_limit, tools};
pub use stream::send_receive_matches_caps;

fn opts() -> CreateOpts {
    CreateOpts {
        size: Some(256 << 20),
        fstype: None,
    }
}

fn create(h: &Harness, name: &str) -> VolumeSpec {
    let mut rv = Revert::new();
    let v = h
        .backend
        .create(name, &opts(), &mut rv)
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    rv.commit();
    v
}

fn write(h: &Harness, v: &VolumeSpec, files: &[(&str, &str)]) {
    with_mounted(h.backend.as_ref(), v, &h.scratch("mnt"), false, |root| {
        for (rel, content) in files {
            let p = root.join(rel);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent).map_err(BdevError::io("mkdir", parent))?;
            }
            fs::write(&p, content).map_err(BdevError::io("write", &p))?;
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("write into {v}: {e}"));
}

fn remove(h: &Harness, v: &VolumeSpec, rel: &str) {
    with_mounted(h.backend.as_ref(), v, &h.scratch("mnt"), false, |root| {
        fs::remove_file(root.join(rel)).map_err(BdevError::io("remove", root.join(rel)))
    })
    .unwrap_or_else(|e| panic!("remove {rel} from {v}: {e}"));
}

/// Reads `rel` from the volume; `None` when absent.
fn read(h: &Harness, v: &VolumeSpec, rel: &str) -> Option<String> {
    with_mounted(h.backend.as_ref(), v, &h.scratch("mnt"), true, |root| {
        Ok(fs::read_to_string(root.join(rel)).ok())
    })
    .unwrap_or_else(|e| panic!("read {rel} from {v}: {e}"))
}

fn destroy(h: &Harness, v: &VolumeSpec) {
    h.backend
        .destroy(v)
        .unwrap_or_else(|e| panic!("destroy {v}: {e}"));
}

fn is_unsupported<T>(r: &Result<T, BdevError>) -> bool {
    matches!(r, Err(BdevError::Unsupported { .. }))
}

/// create → mount → write → unmount → mount again → read → destroy.
pub fn create_write_read_destroy(h: &Harness) -> Outcome {
    let v = create(h, "c1");
    assert_eq!(v.backend(), h.backend.name());
    write(h, &v, &[("etc/hostname", "c1\n"), ("a/b/c.txt", "deep")]);
    assert_eq!(read(h, &v, "etc/hostname").as_deref(), Some("c1\n"));
    assert_eq!(read(h, &v, "a/b/c.txt").as_deref(), Some("deep"));
    let mut rv = Revert::new();
    let dup = h.backend.create("c1", &opts(), &mut rv);
    assert!(dup.is_err(), "creating c1 twice must fail");
    drop(rv);
    assert_eq!(
        read(h, &v, "a/b/c.txt").as_deref(),
        Some("deep"),
        "failed duplicate create must not harm c1"
    );
    destroy(h, &v);
    let mut rv = Revert::new();
    let again = h.backend.create("c1", &opts(), &mut rv);
    assert!(again.is_ok(), "create after destroy: {again:?}");
    drop(rv); // reverts the create
    let mut rv = Revert::new();
    let third = h.backend.create("c1", &opts(), &mut rv);
    assert!(
        third.is_ok(),
        "a reverted create must leave nothing behind: {third:?}"
    );
    Outcome::Passed
}

/// A read-only mount refuses writes with EROFS, on every backend (plain trees
/// get a read-only bind mount), and leaves the volume as it was.
pub fn read_only_mount(h: &Harness) -> Outcome {
    let v = create(h, "ro");
    write(h, &v, &[("f", "x")]);
    let r = with_mounted(h.backend.as_ref(), &v, &h.scratch("mnt"), true, |root| {
        Ok((
            fs::write(root.join("g"), "y").map_err(|e| e.raw_os_error()),
            fs::remove_file(root.join("f")).map_err(|e| e.raw_os_error()),
        ))
    })
    .expect("read-only mount");
    assert_eq!(r.0, Err(Some(libc::EROFS)), "create on a read-only mount");
    assert_eq!(r.1, Err(Some(libc::EROFS)), "remove on a read-only mount");
    assert_eq!(read(h, &v, "f").as_deref(), Some("x"));
    assert_eq!(read(h, &v, "g"), None);
    destroy(h, &v);
    Outcome::Passed
}

/// Removes every extended attribute below `dir` (symlinks included).
pub fn strip_xattrs(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let mut buf = vec![0u8; 64 * 1024];
        let n = rustix::fs::llistxattr(&p, &mut buf).expect("list xattrs");
        for name in buf[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
            let name = std::ffi::OsStr::from_bytes(name);
            rustix::fs::lremovexattr(&p, name).expect("remove xattr");
        }
        let md = fs::symlink_metadata(&p).expect("stat");
        if md.is_dir() {
            for e in fs::read_dir(&p).expect("read dir") {
                stack.push(e.expect("dir entry").path());
            }
        }
    }
}

/// Truncates every file time below `dir` to whole seconds.
pub fn truncate_times(dir: &Path) {
    use rustix::fs::{utimensat, AtFlags, Timespec, Timestamps, CWD};
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).expect("stat");
        let secs = |s: i64| Timespec {
            tv_sec: s,
            tv_nsec: 0,
        };
        let times = Timestamps {
            last_access: secs(md.atime()),
            last_modification: secs(md.mtime()),
        };
        utimensat(CWD, &p, &times, AtFlags::SYMLINK_NOFOLLOW).expect("set times");
        if md.is_dir() {
            for e in fs::read_dir(&p).expect("read dir") {
                stack.push(e.expect("dir entry").path());
            }
        }
    }
}

/// Every file type survives a copy into the volume and a remount. A backend that
/// cannot store xattrs must say so in its caps, and refuse a tree that has them
/// rather than drop them.
pub fn file_types_preserved(h: &Harness) -> Outcome {
    let reference = h.scratch("reference");
    berth_fixtures::filetypes::build_all_types(&reference).expect("build reference tree");
    let v = create(h, "types");
    let copy_in = |from: &Path| {
        with_mounted(h.backend.as_ref(), &v, &h.scratch("mnt"), false, |root| {
            let dst = root.join("types");
            if dst.exists() {
                berth_bdev::delete::remove_tree(&dst, root)?;
            }
            fs::create_dir(&dst).map_err(BdevError::io("mkdir", &dst))?;
            berth_bdev::copy::copy_tree(from, &dst, &NoProgress)?;
            Ok(())
        })
    };
    if h.backend.caps().lacks_xattrs {
        let e = copy_in(&reference).expect_err("xattrs must not be dropped silently");
        assert!(e.to_string().contains("xattr"), "unclear error: {e}");
        strip_xattrs(&reference);
    }
    if h.backend.caps().coarse_timestamps {
        truncate_times(&reference);
    }
    copy_in(&reference).expect("copy into volume");
    with_mounted(h.backend.as_ref(), &v, &h.scratch("mnt"), true, |root| {
        berth_fixtures::compare::assert_same_tree(&reference, &root.join("types"));
        Ok(())
    })
    .expect("compare");
    destroy(h, &v);
    Outcome::Passed
}

/// Usage grows when data is written.
pub fn usage_changes(h: &Harness) -> Outcome {
    let v = create(h, "u");
    let before = h.backend.usage(&v).expect("usage").used_bytes;
    let data: String = (0..8 << 20)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    write(h, &v, &[("big", &data)]);
    let after = h.backend.usage(&v).expect("usage").used_bytes;
    assert!(
        after >= before + (4 << 20),
        "usage {before} -> {after} after writing 8 MiB"
    );
    destroy(h, &v);
    Outcome::Passed
}

/// A snapshot keeps its point in time while the volume changes.
pub fn snapshot_point_in_time(h: &Harness) -> Outcome {
    let v = create(h, "s");
    write(h, &v, &[("f", "before")]);
    let mut rv = Revert::new();
    let snap = h.backend.snapshot(&v, "s", "snap1", &mut rv);
    if !h.backend.caps().snapshot {
        assert!(
            is_unsupported(&snap),
            "snapshot flag off but snapshot answered {snap:?}"
        );
        destroy(h, &v);
        return Outcome::NotApplicable("no snapshots (snapshot answers Unsupported)".into());
    }
    let snap = snap.expect("snapshot");
    rv.commit();
    write(h, &v, &[("f", "after"), ("new", "n")]);
    assert_eq!(read(h, &snap, "f").as_deref(), Some("before"));
    assert_eq!(read(h, &snap, "new"), None);
    assert_eq!(read(h, &v, "f").as_deref(), Some("after"));
    h.backend.destroy_snapshot(&snap).expect("destroy snapshot");
    destroy(h, &v);
    Outcome::Passed
}

/// A snapshot clone starts equal and is independent both ways.
pub fn snapshot_clone_independent(h: &Harness) -> Outcome {
    let v = create(h, "origin");
    write(h, &v, &[("shared", "origin"), ("gone", "x")]);
    let mut rv = Revert::new();
    let c = h.backend.snapshot_clone(&v, "clone", &mut rv);
    if !h.backend.caps().snapshot_clone {
        assert!(
            is_unsupported(&c),
            "snapshot_clone flag off but it answered {c:?}"
        );
        destroy(h, &v);
        return Outcome::NotApplicable(
            "no snapshot clones (snapshot_clone answers Unsupported)".into(),
        );
    }
    let c = c.expect("snapshot clone");
    rv.commit();
    assert_eq!(read(h, &c, "shared").as_deref(), Some("origin"));
    write(h, &c, &[("shared", "clone"), ("only-clone", "c")]);
    remove(h, &c, "gone");
    assert_eq!(read(h, &v, "shared").as_deref(), Some("origin"));
    assert_eq!(read(h, &v, "only-clone"), None);
    assert_eq!(read(h, &v, "gone").as_deref(), Some("x"));
    if !h.backend.caps().clone_pins_origin {
        write(h, &v, &[("only-origin", "o")]);
        assert_eq!(read(h, &c, "only-origin"), None);
    }
    destroy(h, &c);
    destroy(h, &v);
    Outcome::Passed
}

/// A clone of a snapshot sees the snapshot's content, not the volume's later state.
pub fn clone_from_snapshot(h: &Harness) -> Outcome {
    let caps = h.backend.caps();
    if !caps.snapshot {
        return Outcome::NotApplicable("no snapshots".into());
    }
    let v = create(h, "cs");
    write(h, &v, &[("f", "at-snap")]);
    let mut rv = Revert::new();
    let snap = h
        .backend
        .snapshot(&v, "cs", "s1", &mut rv)
        .expect("snapshot");
    rv.commit();
    write(h, &v, &[("f", "later")]);
    let mut rv = Revert::new();
    let c = h.backend.snapshot_clone(&snap, "from-snap", &mut rv);
    if !caps.clone_from_snapshot {
        assert!(
            is_unsupported(&c),
            "clone_from_snapshot flag off but it answered {c:?}"
        );
    } else {
        let c = c.expect("clone from snapshot");
        rv.commit();
        assert_eq!(read(h, &c, "f").as_deref(), Some("at-snap"));
        write(h, &c, &[("f", "clone")]);
        assert_eq!(read(h, &snap, "f").as_deref(), Some("at-snap"));
        destroy(h, &c);
    }
    h.backend.destroy_snapshot(&snap).expect("destroy snapshot");
    destroy(h, &v);
    if caps.clone_from_snapshot {
        Outcome::Passed
    } else {
        Outcome::NotApplicable("no clones of snapshots (answers Unsupported)".into())
    }
}

/// A snapshot of a snapshot clone keeps its point in time, and can itself be
/// cloned; everything is destroyed in dependency order.
pub fn snapshot_of_a_clone(h: &Harness) -> Outcome {
    let caps = h.backend.caps();
    if !(caps.snapshot && caps.snapshot_clone) {
        return Outcome::NotApplicable("needs snapshots and snapshot clones".into());
    }
    let v = create(h, "base");
    write(h, &v, &[("f", "base")]);
    let c = h.clone_of(&v, "mid");
    write(h, &c, &[("f", "mid")]);
    let s = h.snapshot(&c, "mid", "s1");
    write(h, &c, &[("f", "mid-later")]);
    assert_eq!(read(h, &s, "f").as_deref(), Some("mid"));
    if caps.clone_from_snapshot {
        let cc = h.clone_of(&s, "leaf");
        assert_eq!(read(h, &cc, "f").as_deref(), Some("mid"));
        write(h, &cc, &[("f", "leaf")]);
        assert_eq!(read(h, &s, "f").as_deref(), Some("mid"));
        assert_eq!(read(h, &c, "f").as_deref(), Some("mid-later"));
        destroy(h, &cc);
    }
    h.backend.destroy_snapshot(&s).expect("destroy snapshot");
    destroy(h, &c);
    destroy(h, &v);
    Outcome::Passed
}

/// A full copy (the backend's own tool, or through mounts) is independent.
pub fn copy_independent(h: &Harness) -> Outcome {
    let v = create(h, "src");
    write(h, &v, &[("f", "src"), ("d/g", "g")]);
    let mut rv = Revert::new();
    let c = match h.backend.copy_clone(&v, "copy", &opts(), &mut rv) {
        Ok(c) => c,
        Err(BdevError::Unsupported { .. }) => {
            let c = h
                .backend
                .create("copy", &opts(), &mut rv)
                .expect("create copy");
            let b = h.backend.as_ref();
            let copy = copy_opts(b, &v, b, &h.scratch("mnt"), false).expect("copy options");
            copy_volume(b, &v, b, &c, &h.scratch("mnt"), &copy, &NoProgress).expect("generic copy");
            c
        }
        Err(e) => panic!("copy clone: {e}"),
    };
    rv.commit();
    assert_eq!(read(h, &c, "d/g").as_deref(), Some("g"));
    write(h, &c, &[("f", "copy")]);
    write(h, &v, &[("f", "changed")]);
    assert_eq!(read(h, &c, "f").as_deref(), Some("copy"));
    // A copy does not depend on its source.
    destroy(h, &v);
    assert_eq!(read(h, &c, "d/g").as_deref(), Some("g"));
    destroy(h, &c);
    Outcome::Passed
}

/// Declared capabilities match behaviour for resize.
pub fn resize_matches_caps(h: &Harness) -> Outcome {
    let v = create(h, "rs");
    let r = h.backend.resize(&v, 512 << 20);
    if h.backend.caps().resize {
        r.expect("resize");
        write(h, &v, &[("after-resize", "ok")]);
        assert_eq!(read(h, &v, "after-resize").as_deref(), Some("ok"));
    } else {
        assert!(is_unsupported(&r), "resize flag off but it answered {r:?}");
        destroy(h, &v);
        return Outcome::NotApplicable("no resize (answers Unsupported)".into());
    }
    destroy(h, &v);
    Outcome::Passed
}

/// `promote` works where the caps say so (and then frees the origin), and answers
/// `Unsupported` elsewhere.
pub fn promote_matches_caps(h: &Harness) -> Outcome {
    let caps = h.backend.caps();
    let v = create(h, "po");
    if !caps.snapshot_clone {
        destroy(h, &v);
        return Outcome::NotApplicable("no snapshot clones".into());
    }
    write(h, &v, &[("f", "origin")]);
    let c = h.clone_of(&v, "pc");
    let r = h.backend.promote(&c);
    if caps.promote {
        r.expect("promote");
        destroy(h, &v);
        assert_eq!(read(h, &c, "f").as_deref(), Some("origin"));
    } else {
        assert!(is_unsupported(&r), "promote flag off but it answered {r:?}");
        destroy(h, &c);
        destroy(h, &v);
        return Outcome::NotApplicable("no promote (promote answers Unsupported)".into());
    }
    destroy(h, &c);
    Outcome::Passed
}

/// Volumes, snapshots and clones are found again by name with exactly the specs
/// that made them (what a crash journal rolls back from), and destroying what is
/// already gone succeeds.
pub fn volumes_are_found_by_name(h: &Harness) -> Outcome {
    let b = h.backend.as_ref();
    let caps = b.caps();
    let names = || b.volume_names().expect("volume names");
    let named = |n: &str| {
        b.volume_named(n)
            .unwrap_or_else(|e| panic!("volume_named {n}: {e}"))
    };
    let snap_named = |n: &str, s: &str| {
        b.snapshot_named(n, s)
            .unwrap_or_else(|e| panic!("snapshot_named {n}@{s}: {e}"))
    };
    assert!(names().is_empty(), "a fresh pool lists {:?}", names());
    let one = create(h, "one");
    let two = create(h, "two");
    assert_eq!(names(), ["one", "two"]);
    assert_eq!(named("one"), Some(one.clone()));
    assert_eq!(named("two"), Some(two.clone()));
    assert_eq!(named("three"), None);

    let mut rv = Revert::new();
    let snap = b.snapshot(&one, "one", "s1", &mut rv);
    if !caps.snapshot {
        assert!(
            is_unsupported(&snap),
            "snapshot flag off but it answered {snap:?}"
        );
        drop(rv);
        destroy(h, &two);
        destroy(h, &one);
        return Outcome::Passed;
    }
    let snap = snap.expect("snapshot");
    rv.commit();
    assert_eq!(names(), ["one", "two"], "a snapshot is not a volume");
    assert_eq!(b.snapshot_names("one").expect("snapshot names"), ["s1"]);
    assert!(b.snapshot_names("two").expect("snapshot names").is_empty());
    assert_eq!(snap_named("one", "s1"), Some(snap.clone()));
    assert_eq!(snap_named("one", "s2"), None);
    assert_eq!(snap_named("two", "s1"), None);

    // Destroying twice, and naming what is gone.
    destroy(h, &two);
    assert_eq!(named("two"), None);
    assert_eq!(names(), ["one"]);
    b.destroy(&two)
        .expect("destroying a destroyed volume again");

    if caps.snapshot_clone {
        let c = h.clone_of(&one, "clone");
        assert_eq!(named("clone"), Some(c.clone()));
        assert_eq!(
            b.snapshot_names("one").expect("snapshot names"),
            ["s1"],
            "a clone's own helpers are not snapshots"
        );
        let from_snap = caps.clone_from_snapshot.then(|| {
            let cs = h.clone_of(&snap, "from-snap");
            assert_eq!(named("from-snap"), Some(cs.clone()));
            cs
        });
        let expected: &[&str] = match &from_snap {
            Some(_) => &["clone", "from-snap", "one"],
            None => &["clone", "one"],
        };
        assert_eq!(names(), expected);
        for v in from_snap.iter().chain([&c]) {
            destroy(h, v);
            b.destroy(v).expect("destroying a destroyed clone again");
        }
        assert_eq!(named("clone"), None);
    }

    b.destroy_snapshot(&snap).expect("destroy snapshot");
    b.destroy_snapshot(&snap)
        .expect("destroying a destroyed snapshot again");
    assert_eq!(snap_named("one", "s1"), None);
    assert!(b.snapshot_names("one").expect("snapshot names").is_empty());
    destroy(h, &one);
    b.destroy(&one)
        .expect("destroying a destroyed volume again");
    assert!(names().is_empty(), "left: {:?}", names());
    Outcome::Passed
}

/// Probing twice is harmless and `describe` does not fail.
pub fn probe_is_idempotent(h: &Harness) -> Outcome {
    h.backend.probe().expect("probe");
    h.backend.probe().expect("probe again");
    let _ = h.backend.describe();
    let _ = Path::new("/");
    Outcome::Passed
}

/// Instantiates every property for one backend, as a module of tests plus
/// `TABLE`, the properties it runs:
/// `conformance!(btrfs, berth_tests::pools::btrfs::setup);`
/// Attributes before the name go on every test, e.g. `#[ignore = "…"]` for a
/// suite that only runs inside the lvm VM.
#[macro_export]
macro_rules! conformance {
    ($(#[$attr:meta])* $name:ident, $setup:path) => {
        $crate::conformance!(@suite [$(#[$attr])*] $name, $setup;
            conformance: create_write_read_destroy, read_only_mount, file_types_preserved,
                usage_changes, snapshot_point_in_time, snapshot_clone_independent,
                clone_from_snapshot, snapshot_of_a_clone, copy_independent,
                resize_matches_caps, promote_matches_caps, volumes_are_found_by_name,
                probe_is_idempotent, copy_on_write, size_limit, tools,
                send_receive_matches_caps;
            ops: ops_snapshot_restore, ops_dependents, ops_destroy_keeping_clones,
                ops_run_and_ephemeral);
    };
    (@suite $attrs:tt $name:ident, $setup:path;
        conformance: $($p:ident),*; ops: $($o:ident),*) => {
        pub mod $name {
            /// Every property this suite runs, by name (for runners outside libtest,
            /// such as the lvm VM's payload).
            pub const TABLE: &[(&str, fn(&$crate::harness::Harness) -> $crate::harness::Outcome)] = &[
                $((stringify!($p), $crate::conformance::$p as fn(&$crate::harness::Harness) -> $crate::harness::Outcome),)*
                $((stringify!($o), $crate::ops::$o as fn(&$crate::harness::Harness) -> $crate::harness::Outcome)),*
            ];
            $( $crate::conformance!(@one $attrs $name, $setup; conformance::$p); )*
            $( $crate::conformance!(@one $attrs $name, $setup; ops::$o); )*

            /// Not a property: in the child that the `tools` property starts with
            /// another PATH, probes the pool it is handed and prints the result;
            /// elsewhere it does nothing.
            #[test]
            fn probe_child() {
                if let Some(line) = $crate::harness::probe_child() {
                    use std::io::Write;
                    let _ = writeln!(std::io::stdout().lock(), "{line}");
                }
            }
        }
    };
    (@one [$(#[$attr:meta])*] $name:ident, $setup:path; $module:ident :: $prop:ident) => {
        #[test]
        $(#[$attr])*
        fn $prop() {
            let verdict = $crate::harness::run_property($setup, $crate::$module::$prop);
            $crate::harness::report(stringify!($name), stringify!($prop), TABLE.len(), verdict);
        }
    };
}
