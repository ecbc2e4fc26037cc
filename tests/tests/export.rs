//! `berth export` / `berth import` on real pools: a container holding every
//! kind of file (capabilities, ACLs, devices, a socket, hardlinks, a sparse
//! file, nanosecond times) and a snapshot round-trips bit for bit on every
//! backend, through portable bundles and, where the backend sends, native
//! ones; an incremental export after a small change is a small fraction of
//! the full one and re-applies exactly; the binary streams through a pipe;
//! hostile or damaged bundles and interrupted imports leave nothing behind
//! and write nothing outside their target. (lvm is not here: its pools exist
//! only inside the test VM; its backend has no send streams, so it goes the
//! portable way every other backend here is tested on.)
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::path::{Path, PathBuf};

use berth_bdev::copy::NoProgress;
use berth_bdev::generic::with_mounted;
use berth_bdev::VolumeSpec;
use berth_core::images::bundle::{BundleWriter, Manifest, FORMAT, PORTABLE};
use berth_core::ops::{Compress, Encoding, ExportRequest, ImportRequest};
use berth_core::store::Container;
use berth_core::BerthError;
use berth_fixtures::compare::compare_trees_ignoring;
use berth_tests::cli::{unique_name, Store};
use berth_tests::consistency::doctor_clean;
use berth_tests::fidelity::{Expect, World};
use berth_tests::harness::fill_incompressible;

/// Exports `name` as `req` says; the bundle's bytes.
fn export(w: &World, name: &str, req: &ExportRequest) -> Vec<u8> {
    let mut out = Vec::new();
    w.b()
        .export(name, req, &mut out)
        .unwrap_or_else(|e| panic!("export {name}: {e}"));
    out
}

fn import(w: &World, bundle: &[u8], req: &ImportRequest) -> Result<Container, BerthError> {
    let mut input = bundle;
    w.b()
        .import(&mut input, req, &NoProgress)
        .map(|i| i.container)
}

fn into(name: &str, pool: &str) -> ImportRequest {
    ImportRequest {
        name: Some(name.to_owned()),
        pool: Some(pool.to_owned()),
        ..ImportRequest::default()
    }
}

/// How volume `va` of pool `pa` and `vb` of `pb` differ (empty: identical).
fn diff_volumes(
    w: &World,
    (pa, va): (&str, &VolumeSpec),
    (pb, vb): (&str, &VolumeSpec),
) -> Vec<String> {
    let b = w.b();
    let ba = b.backend(&b.store().pool(pa).unwrap()).unwrap();
    let bb = b.backend(&b.store().pool(pb).unwrap()).unwrap();
    let lost = Path::new("lost+found");
    with_mounted(ba.as_ref(), va, &b.scratch(), true, |ra| {
        with_mounted(bb.as_ref(), vb, &b.scratch(), true, |rb| {
            Ok(compare_trees_ignoring(ra, rb, &[lost])
                .err()
                .unwrap_or_default())
        })
    })
    .unwrap_or_else(|e| vec![format!("mount {va} or {vb}: {e}")])
}

/// Container `b` holds what `a` holds: its rootfs and every snapshot by name.
fn assert_same_container(w: &World, a: &str, b: &str) {
    let s = w.b().store();
    let (ca, cb) = (s.container(a).unwrap(), s.container(b).unwrap());
    let mut d = diff_volumes(w, (&ca.pool, &ca.volume), (&cb.pool, &cb.volume));
    let names = |c: &Container| {
        c.snapshots
            .iter()
            .map(|s| s.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&ca), names(&cb), "snapshots of {a} and {b}");
    for (sa, sb) in ca.snapshots.iter().zip(&cb.snapshots) {
        for line in diff_volumes(w, (&ca.pool, &sa.volume), (&cb.pool, &sb.volume)) {
            d.push(format!("@{}: {line}", sa.name));
        }
    }
    assert!(d.is_empty(), "{b} differs from {a}:\n  {}", d.join("\n  "));
}

/// The source container: '_' keeps `create` from writing its hostname, so
/// it starts as the reference tree.
const SRC: &str = "src_c";

/// The reference tree in pool `kind`, as [`SRC`], with snapshots `s0` and
/// `s0b` taken between changes.
fn source(w: &World, kind: &str) {
    let caps = w.caps(kind);
    let keeps = Expect::default().through(&caps);
    w.create(SRC, kind, &w.refs.full(), caps.lacks_xattrs)
        .unwrap_or_else(|e| panic!("create src in {kind}: {e}"));
    let d = w.differences(SRC, &w.refs.path(keeps));
    assert!(d.is_empty(), "{SRC} in {kind}:\n  {}", d.join("\n  "));
    // Data enough that a small change is small beside it, whatever a
    // backend's streams cost per change (zfs sends whole metadata blocks).
    let c = w.b().store().container(SRC).unwrap();
    let backend = w.b().backend_of(&c).unwrap();
    with_mounted(
        backend.as_ref(),
        &c.volume,
        &w.b().scratch(),
        false,
        |root| fill_incompressible(root, 16, 7).map_err(berth_bdev::BdevError::io("fill", root)),
    )
    .unwrap();
    w.b().snapshot(SRC, Some("s0")).unwrap();
    w.scribble(SRC);
    w.b().snapshot(SRC, Some("s0b")).unwrap();
    small_change(w, SRC, 2);
}

/// The `i`th small change: one file written, one removed.
fn small_change(w: &World, name: &str, i: usize) {
    let b = w.b();
    let c = b.store().container(name).unwrap();
    let backend = b.backend_of(&c).unwrap();
    let gone = ["etc/readonly", "data/pair-b", "home/user/.profile"][i];
    with_mounted(backend.as_ref(), &c.volume, &b.scratch(), false, |root| {
        fs::write(root.join(format!("etc/small-{i}")), vec![b'x'; 4096]).unwrap();
        fs::remove_file(root.join(gone)).unwrap();
        Ok(())
    })
    .unwrap();
}

/// Full round trips (portable; native where the backend sends) into the same
/// pool and, portable, into a dir pool; then an incremental export applied
/// to a copy that holds its base.
fn round_trip(kind: &str) {
    let kinds: &[&str] = if kind == "dir" {
        &["dir"]
    } else {
        &[kind, "dir"]
    };
    let w = World::new(kinds);
    if !w.has(kind) {
        return;
    }
    source(&w, kind);
    let caps = w.caps(kind);
    let mut encodings = vec![(Encoding::Portable, Compress::Zstd)];
    if caps.send_stream {
        encodings.push((Encoding::Native, Compress::None));
    }
    for (encoding, compress) in &encodings {
        let req = ExportRequest {
            encoding: *encoding,
            compress: *compress,
            ..ExportRequest::default()
        };
        let full = export(&w, SRC, &req);
        let mut pools = vec![kind];
        if *encoding == Encoding::Portable && w.has("dir") && kind != "dir" {
            pools.push("dir");
        }
        for pool in pools {
            let dst = format!("dst-{pool}");
            import(&w, &full, &into(&dst, pool))
                .unwrap_or_else(|e| panic!("{encoding:?} import from {kind} into {pool}: {e}"));
            assert_same_container(&w, SRC, &dst);
            w.destroy(&dst);
        }
    }

    // Incremental: a copy holding the latest snapshot, a small change, only
    // that sent.
    for (i, (encoding, _)) in encodings.iter().enumerate() {
        let snap = format!("s{}", i + 1);
        w.b().snapshot(SRC, Some(&snap)).unwrap();
        let req = ExportRequest {
            encoding: *encoding,
            ..ExportRequest::default()
        };
        let copy = format!("copy{i}");
        let full = export(&w, SRC, &req);
        import(&w, &full, &into(&copy, kind)).unwrap();
        small_change(&w, SRC, i);
        let inc = export(
            &w,
            SRC,
            &ExportRequest {
                since: Some(snap.clone()),
                ..req.clone()
            },
        );
        assert!(
            inc.len() * 20 < full.len(),
            "{encoding:?} on {kind}: incremental {} bytes vs full {}",
            inc.len(),
            full.len()
        );
        let plain = ImportRequest {
            name: Some(copy.clone()),
            ..ImportRequest::default()
        };
        import(&w, &inc, &plain)
            .unwrap_or_else(|e| panic!("{encoding:?} incremental import on {kind}: {e}"));
        let (a, b) = (
            w.b().store().container(SRC).unwrap(),
            w.b().store().container(&copy).unwrap(),
        );
        let d = diff_volumes(&w, (&a.pool, &a.volume), (&b.pool, &b.volume));
        assert!(
            d.is_empty(),
            "{encoding:?} incremental on {kind}:\n  {}",
            d.join("\n  ")
        );
        // The copy still holds the base unchanged: it applies again.
        import(&w, &inc, &plain).unwrap();
        let b = w.b().store().container(&copy).unwrap();
        let d = diff_volumes(&w, (&a.pool, &a.volume), (&b.pool, &b.volume));
        assert!(
            d.is_empty(),
            "{encoding:?} incremental again on {kind}:\n  {}",
            d.join("\n  ")
        );
        w.destroy(&copy);
    }
}

#[test]
fn round_trip_dir() {
    round_trip("dir");
}

#[test]
fn round_trip_btrfs() {
    round_trip("btrfs");
}

#[test]
fn round_trip_zfs() {
    round_trip("zfs");
}

#[test]
fn round_trip_loop() {
    round_trip("loop");
}

#[test]
fn round_trip_overlay() {
    round_trip("overlay");
}

#[test]
fn round_trip_aufs() {
    round_trip("aufs");
}

#[test]
fn round_trip_qcow2() {
    round_trip("qcow2");
}

/// An incremental export refuses a container whose base snapshot differs
/// from the one it was made against, and one without it, changing nothing.
#[test]
fn incremental_needs_the_matching_base() {
    let w = World::new(&["dir"]);
    w.create("a", "dir", &w.refs.full(), false).unwrap();
    w.b().snapshot("a", Some("s1")).unwrap();
    let full = export(&w, "a", &ExportRequest::default());
    import(&w, &full, &into("b", "dir")).unwrap();
    small_change(&w, "a", 0);
    let inc = export(
        &w,
        "a",
        &ExportRequest {
            since: Some("s1".to_owned()),
            ..ExportRequest::default()
        },
    );
    // A container with another s1.
    w.create("c", "dir", &w.refs.full(), false).unwrap();
    small_change(&w, "c", 1);
    w.b().snapshot("c", Some("s1")).unwrap();
    let plain = |n: &str| ImportRequest {
        name: Some(n.to_owned()),
        ..ImportRequest::default()
    };
    let e = import(&w, &inc, &plain("c")).unwrap_err();
    assert!(e.to_string().contains("not the one"), "{e}");
    let e = import(&w, &inc, &plain("nobody")).unwrap_err();
    assert!(matches!(e, BerthError::NoContainer(_)), "{e}");
    w.b().snapshot_rm("b", "s1").unwrap();
    let before_b = w.state();
    let e = import(&w, &inc, &plain("b")).unwrap_err();
    assert!(e.to_string().contains("has no snapshot"), "{e}");
    assert_eq!(w.state(), before_b);
}

/// A bundle with `layer` as its only stream, claiming `digest`.
fn crafted(layer: &[u8], digest: &str) -> Vec<u8> {
    let m = Manifest {
        format: FORMAT,
        kind: "container".to_owned(),
        name: "evil".to_owned(),
        created: 1,
        encoding: PORTABLE.to_owned(),
        source_backend: "dir".to_owned(),
        template: None,
        digest: digest.to_owned(),
        bytes: 0,
        size: None,
        since: None,
        snapshots: Vec::new(),
        streams: Manifest::plan_streams(&[], None),
        run: Default::default(),
    };
    let mut w = BundleWriter::new(Vec::new(), &m).unwrap();
    let mut s = w.stream(&m.streams[0].path);
    std::io::Write::write_all(&mut s, layer).unwrap();
    s.end().unwrap();
    w.finish().unwrap()
}

fn header(kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(size);
    h
}

/// Writes `path` into a GNU header's name field as is (the tar crate's
/// setters refuse `..` and absolute paths, which is the point here).
fn raw_entry(b: &mut tar::Builder<Vec<u8>>, mut h: tar::Header, path: &str, data: &[u8]) {
    h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// Hostile and damaged bundles: each import fails, leaves no record and no
/// volume, and writes nothing outside its target.
#[test]
fn hostile_bundles_leave_nothing() {
    let w = World::new(&["dir"]);
    let outside = w.tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let o = outside.display().to_string();
    let fake = format!("sha256:{}", "0".repeat(64));
    let layer = |f: &dyn Fn(&mut tar::Builder<Vec<u8>>)| {
        let mut b = tar::Builder::new(Vec::new());
        f(&mut b);
        b.into_inner().unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "absolute path",
            layer(&|b| {
                raw_entry(
                    b,
                    header(tar::EntryType::Regular, 3),
                    &format!("{o}/abs"),
                    b"abs",
                )
            }),
            false,
        ),
        (
            "dot-dot",
            layer(&|b| {
                raw_entry(
                    b,
                    header(tar::EntryType::Regular, 3),
                    "../../outside/dd",
                    b"dd!",
                )
            }),
            false,
        ),
        (
            "symlink then a write through it",
            layer(&|b| {
                let mut h = header(tar::EntryType::Symlink, 0);
                b.append_link(&mut h, "link", &outside).unwrap();
                let mut h = header(tar::EntryType::Regular, 3);
                b.append_data(&mut h, "link/through", &b"thr"[..]).unwrap();
            }),
            false,
        ),
        (
            "device node, unprivileged",
            layer(&|b| {
                let mut h = header(tar::EntryType::Char, 0);
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
                b.append_data(&mut h, "dev/null", std::io::empty()).unwrap();
            }),
            true,
        ),
        (
            "huge declared size",
            layer(&|b| raw_entry(b, header(tar::EntryType::Regular, 1 << 40), "big", b"tiny")),
            false,
        ),
        (
            "digest mismatch",
            layer(&|b| {
                let mut h = header(tar::EntryType::Regular, 2);
                b.append_data(&mut h, "fine", &b"ok"[..]).unwrap();
            }),
            false,
        ),
    ];
    let before = w.state();
    for (what, layer, unprivileged) in cases {
        let req = ImportRequest {
            unprivileged,
            ..into("evil", "dir")
        };
        let e = import(&w, &crafted(&layer, &fake), &req);
        assert!(e.is_err(), "{what}: imported");
        assert_eq!(w.state(), before, "{what}: left something behind");
        let escaped: Vec<_> = fs::read_dir(&outside)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(escaped.is_empty(), "{what}: wrote outside: {escaped:?}");
    }

    // A part of the bundle declaring far more than it holds.
    let mut huge = crafted(&[0u8; 1024], &fake);
    let pos = {
        let mut ar = tar::Archive::new(&huge[..]);
        let part = ar.entries().unwrap().nth(1).unwrap().unwrap();
        usize::try_from(part.raw_header_position()).unwrap()
    };
    let mut h = tar::Header::new_gnu();
    h.as_mut_bytes().copy_from_slice(&huge[pos..pos + 512]);
    h.set_size(1 << 40);
    h.set_cksum();
    huge[pos..pos + 512].copy_from_slice(h.as_bytes());
    let e = import(&w, &huge, &into("evil", "dir")).unwrap_err();
    assert!(e.to_string().contains("cut off"), "{e}");
    assert_eq!(w.state(), before, "huge part: left something behind");

    // A real export, damaged in its data, or cut off.
    w.create("good", "dir", &w.refs.full(), false).unwrap();
    let good = export(&w, "good", &ExportRequest::default());
    let before = w.state();
    let mut flipped = good.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x40;
    for (what, bytes) in [
        ("flipped byte", &flipped[..]),
        ("cut off", &good[..good.len() / 2]),
    ] {
        let e = import(&w, bytes, &into("copy", "dir"));
        assert!(e.is_err(), "{what}: imported");
        assert_eq!(w.state(), before, "{what}: left something behind");
    }
}

/// Through the binary: `berth export c1 - | berth import - c1` between two
/// stores, full and then incremental; an import killed half way leaves
/// nothing once berth recovers.
#[test]
fn pipes_through_the_binary_and_crashes_leave_nothing() {
    let (a, b) = (Store::new(), Store::new());
    let c1 = unique_name("exp");
    a.ok(&["create", &c1]);
    a.ok(&["snapshot", &c1, "s1"]);
    let pipe = |args_a: &str, args_b: &str| {
        let script = format!(
            "set -o pipefail; {bin} --root {ra} {args_a} | {bin} --root {rb} {args_b}",
            bin = a.bin().display(),
            ra = a.root().display(),
            rb = b.root().display(),
        );
        berth_bdev::cmd::run(&berth_bdev::cmd::HostRunner, "bash", &["-c", &script])
            .unwrap_or_else(|e| panic!("{script}: {e}"));
    };
    pipe(&format!("export {c1} -"), &format!("import - {c1}"));
    let rootfs = |s: &Store| PathBuf::from(s.ok(&["mount", &c1]).lines().last().unwrap());
    let compare = |what: &str| {
        let (ra, rb) = (rootfs(&a), rootfs(&b));
        let d = compare_trees_ignoring(&ra, &rb, &[]);
        a.ok(&["umount", &c1]);
        b.ok(&["umount", &c1]);
        if let Err(d) = d {
            panic!("{what}: {}", d.join("\n  "));
        }
    };
    compare("full");
    let ra = rootfs(&a);
    fs::write(ra.join("etc/changed"), b"changed").unwrap();
    a.ok(&["umount", &c1]);
    pipe(
        &format!("export {c1} - --since s1"),
        &format!("import - {c1}"),
    );
    compare("incremental");

    // Killed after the volume is made, before the record: nothing stays.
    let file = a.root().join("c1.tar.gz");
    a.ok(&["export", &c1, &file.to_string_lossy()]);
    let c2 = unique_name("crash");
    let killed = b.berth_env(
        &[("BERTH_CRASH_AT", "import:made")],
        &["import", &file.to_string_lossy(), &c2],
    );
    assert!(
        killed.is_err_and(|f| f.killed()),
        "the crash point was not reached"
    );
    // The next command that changes the store recovers (doctor does).
    doctor_clean(&b).unwrap();
    let listed = b.ok(&["ls"]);
    assert!(!listed.contains(&c2), "{listed}");
    let storage = b.root().join("storage/default");
    assert!(!storage.join(&c2).exists(), "its volume stayed");
    assert!(
        !storage.join(".snapshots").join(&c2).exists(),
        "its snapshots stayed"
    );
    b.ok(&["import", &file.to_string_lossy(), &c2]);
    assert!(b.ok(&["ls"]).contains(&c2));
    // An export that fails, or is killed once the stream is written, leaves
    // FILE as it was and nothing beside it.
    let out = tempfile::tempdir().unwrap();
    let bad = out.path().join("nope.tar");
    assert!(a
        .berth(&["export", "no-such", &bad.to_string_lossy()])
        .is_err());
    let kept = out.path().join("kept.tar.gz");
    fs::write(&kept, b"the previous export").unwrap();
    let killed = a.berth_env(
        &[("BERTH_CRASH_AT", "export:written")],
        &["export", &c1, &kept.to_string_lossy()],
    );
    assert!(
        killed.is_err_and(|f| f.killed()),
        "the crash point was not reached"
    );
    assert_eq!(fs::read(&kept).unwrap(), b"the previous export");
    let left: Vec<_> = fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["kept.tar.gz"], "left beside the exports");
}
