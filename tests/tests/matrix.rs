//! The clone matrix on the real kernel: every backend copied to every other, and
//! every `--snapshot` pair either sharing data as `plan_clone` promises or refused
//! with alternatives, never quietly copied.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use berth_bdev::copy::NoProgress;
use berth_bdev::plan::{plan_clone, CloneMode, ClonePlan};
use berth_bdev::{BdevError, PoolConfig};
use berth_cli::ops::{CloneRequest, CreateRequest, DestroyRequest};
use berth_cli::{Berth, BerthError};
use berth_fixtures::templates::Template;
use berth_tests::harness::{assert_no_leaks, skip, Setup};
use berth_tests::pools;

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
                    };
                    let caps = b.backend(dst).unwrap().caps();
                    let planned =
                        plan_clone(src.backend, dst.backend, &caps, src.name == dst.name, mode);
                    let got = b.clone_container(&src_name, &dst_name, &req, &NoProgress);
                    match (&planned, got) {
                        (Ok(plan), Ok(c)) => {
                            assert_eq!(read_marker(&b, &dst_name), src_name, "{dst_name}");
                            let pinned = c.origin.as_ref().is_some_and(|o| o.pinned);
                            assert_eq!(
                                pinned,
                                matches!(plan, ClonePlan::SnapshotClone { pins_origin: true }),
                                "{dst_name}: recorded dependency"
                            );
                            assert_eq!(c.volume.kind(), dst.backend);
                            report.push(format!("{dst_name}: ok"));
                            b.destroy(&dst_name, DestroyRequest::default())
                                .unwrap_or_else(|e| panic!("destroy {dst_name}: {e}"));
                        }
                        (
                            Err(_),
                            Err(BerthError::Bdev(BdevError::CloneRefused { alternatives, .. })),
                        ) => {
                            assert!(!alternatives.is_empty());
                            assert!(!b.store().exists(&dst_name));
                            report.push(format!("{dst_name}: refused"));
                        }
                        (p, g) => panic!("{dst_name}: planned {p:?}, got {g:?}"),
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
