//! The clone matrix on the real kernel: every backend copied to every other, and
//! every `--snapshot` pair either sharing data or refused with alternatives, never
//! quietly copied, as the hand-written `EXPECTED` table says (not `plan_clone`,
//! whose answers are what is under test).
#![allow(clippy::unwrap_used)]

use std::path::Path;

use berth_bdev::copy::NoProgress;
use berth_bdev::plan::CloneMode;
use berth_bdev::{BdevError, PoolConfig};
use berth_core::ops::{CloneRequest, CreateRequest, DestroyRequest};
use berth_core::templates::Template;
use berth_core::{Berth, BerthError};
use berth_tests::harness::{assert_no_leaks, skip, Setup};
use berth_tests::pools;

/// What `clone --snapshot` from a row's backend into a column's does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Snap {
    /// Refused, with alternatives; nothing is made.
    R,
    /// Shares data; the clone does not depend on its origin.
    S,
    /// Shares data; the clone pins its origin (a recorded dependency).
    P,
}
use Snap::{P, R, S};

/// Columns, in the order of each row.
const KINDS: [&str; 8] = [
    "dir", "btrfs", "overlay", "loop", "aufs", "zfs", "qcow2", "lvm",
];

/// `clone --snapshot` src (row) → dst (column), each backend with one pool (loop's
/// on xfs, so it reflinks; lvm's a thin pool). `clone --copy` works for all 64
/// pairs and leaves no dependency. lvm needs device-mapper, so its row and column
/// run only where the host has it (here: never; the VM covers lvm → lvm).
#[rustfmt::skip]
const EXPECTED: [(&str, [Snap; 8]); 8] = [
    //          dir btrfs overlay loop aufs zfs qcow2 lvm
    ("dir",     [R,  R,    P,      R,   P,   R,  R,    R]),
    ("btrfs",   [R,  S,    P,      R,   P,   R,  R,    R]),
    ("overlay", [R,  R,    P,      R,   R,   R,  R,    R]),
    ("loop",    [R,  R,    R,      S,   R,   R,  R,    R]),
    ("aufs",    [R,  R,    R,      R,   P,   R,  R,    R]),
    ("zfs",     [R,  R,    R,      R,   R,   P,  R,    R]),
    ("qcow2",   [R,  R,    R,      R,   R,   R,  P,    R]),
    ("lvm",     [R,  R,    R,      R,   R,   R,  R,    S]),
];

fn expected(src: &str, dst: &str, mode: CloneMode) -> Snap {
    let row = EXPECTED.iter().find(|(k, _)| *k == src).unwrap();
    let col = KINDS.iter().position(|k| *k == dst).unwrap();
    match mode {
        // A copy is made and depends on nothing, as `S` checks.
        CloneMode::Copy => S,
        CloneMode::Snapshot => row.1[col],
    }
}

#[test]
fn the_expected_table_is_complete() {
    let rows: Vec<&str> = EXPECTED.iter().map(|(k, _)| *k).collect();
    assert_eq!(rows, KINDS);
}

type SetupFn = fn(&Path) -> Result<Setup, String>;

const SETUPS: [(&str, SetupFn); 7] = [
    ("dir", pools::dir::setup),
    ("btrfs", pools::btrfs::setup),
    ("overlay", pools::overlay::setup),
    ("loop", pools::r#loop::setup),
    ("aufs", pools::aufs::setup),
    ("zfs", pools::zfs::setup),
    ("qcow2", pools::qcow2::setup),
];

fn read_marker(b: &Berth, name: &str) -> String {
    let c = b.store().container(name).unwrap();
    let backend = b.backend_of(&c).unwrap();
    berth_bdev::generic::with_mounted(backend.as_ref(), &c.volume, &b.scratch(), true, |root| {
        std::fs::read_to_string(root.join("etc/marker")).map_err(BdevError::io("read", root))
    })
    .unwrap_or_else(|e| panic!("read marker of {name}: {e}"))
}

#[test]
fn every_backend_to_every_other() {
    let tmp = tempfile::Builder::new()
        .prefix("berth-matrix-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mut keep = Vec::new();
    let mut pools: Vec<PoolConfig> = Vec::new();
    for (kind, setup) in SETUPS {
        let dir = tmp.path().join(kind);
        std::fs::create_dir_all(&dir).unwrap();
        match setup(&dir) {
            Ok(s) => {
                let mut pool = s.pool;
                pool.name = format!("p-{kind}");
                pools.push(pool);
                keep.extend(s.keep);
            }
            Err(reason) => skip(&format!("{kind} pool: {reason}")),
        }
    }
    {
        let b = Berth::open(&tmp.path().join("state"), true).unwrap();
        for p in &pools {
            b.pool_add(p)
                .unwrap_or_else(|e| panic!("pool {}: {e}", p.name));
        }
        for p in &pools {
            let name = format!("src-{}", p.backend);
            let req = CreateRequest {
                pool: Some(p.name.clone()),
                template: Some(Template::Minimal),
                size: Some(256 << 20),
                ..CreateRequest::default()
            };
            b.create(&name, &req, &NoProgress)
                .unwrap_or_else(|e| panic!("create {name}: {e}"));
            let c = b.store().container(&name).unwrap();
            let backend = b.backend_of(&c).unwrap();
            berth_bdev::generic::with_mounted(
                backend.as_ref(),
                &c.volume,
                &b.scratch(),
                false,
                |root| {
                    std::fs::write(root.join("etc/marker"), &name)
                        .map_err(BdevError::io("write", root))
                },
            )
            .unwrap();
        }
        let mut report = Vec::new();
        for src in &pools {
            for dst in &pools {
                let src_name = format!("src-{}", src.backend);
                for mode in [CloneMode::Copy, CloneMode::Snapshot] {
                    let dst_name =
                        format!("x-{}-{}-{mode:?}", src.backend, dst.backend).to_lowercase();
                    let req = CloneRequest {
                        mode,
                        pool: Some(dst.name.clone()),
                        backend: None,
                        ephemeral: false,
                        drop_xattrs: false,
                        size: None,
                        freeze: false,
                    };
                    let want = expected(&src.backend, &dst.backend, mode);
                    let got = b.clone_container(&src_name, &dst_name, &req, &NoProgress);
                    match (want, got) {
                        (S | P, Ok(c)) => {
                            assert_eq!(read_marker(&b, &dst_name), src_name, "{dst_name}");
                            let pinned = c.origin.as_ref().is_some_and(|o| o.pinned);
                            assert_eq!(pinned, want == P, "{dst_name}: recorded dependency");
                            assert_eq!(c.volume.backend(), dst.backend);
                            report.push(format!("{dst_name}: ok"));
                            b.destroy(&dst_name, DestroyRequest::default())
                                .unwrap_or_else(|e| panic!("destroy {dst_name}: {e}"));
                        }
                        (
                            R,
                            Err(BerthError::Bdev(BdevError::CloneRefused { alternatives, .. })),
                        ) => {
                            assert!(!alternatives.is_empty());
                            assert!(!b.store().exists(&dst_name));
                            report.push(format!("{dst_name}: refused"));
                        }
                        (w, g) => panic!("{dst_name}: expected {w:?}, got {g:?}"),
                    }
                }
            }
        }
        eprintln!("{}", report.join("\n"));
        for p in &pools {
            b.destroy(&format!("src-{}", p.backend), DestroyRequest::default())
                .unwrap();
        }
    }
    drop(keep);
    assert_no_leaks(tmp.path());
}
