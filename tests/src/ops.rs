//! Conformance at the level of berth's operations: the store, the dependency
//! graph, snapshots with restore, ephemeral clones and `run`, on each backend.

use std::fs;

use berth_bdev::copy::NoProgress;
use berth_bdev::generic::with_mounted;
use berth_bdev::plan::CloneMode;
use berth_bdev::BdevError;
use berth_core::ops::{CloneRequest, CreateRequest, DestroyRequest};
use berth_core::templates::Template;
use berth_core::{Berth, BerthError};

use crate::harness::{Harness, Outcome};

/// A berth state root with the harness's pool added as `test`.
pub fn berth(h: &Harness) -> Berth {
    let b = Berth::open(&h.scratch("state"), true).expect("open state root");
    b.pool_add(&h.pool).expect("add pool");
    b
}

pub fn create(b: &Berth, h: &Harness, name: &str) {
    let req = CreateRequest {
        pool: Some(h.pool.name.clone()),
        template: Some(Template::Minimal),
        size: Some(256 << 20),
        ..CreateRequest::default()
    };
    b.create(name, &req, &NoProgress)
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
}

fn write(b: &Berth, name: &str, rel: &str, content: &str) {
    let c = b.store().container(name).expect("container");
    let backend = b.backend_of(&c).expect("backend");
    with_mounted(backend.as_ref(), &c.volume, &b.scratch(), false, |root| {
        fs::write(root.join(rel), content).map_err(BdevError::io("write", root.join(rel)))
    })
    .unwrap_or_else(|e| panic!("write {rel} in {name}: {e}"));
}

fn read(b: &Berth, name: &str, rel: &str) -> Option<String> {
    let c = b.store().container(name).expect("container");
    let backend = b.backend_of(&c).expect("backend");
    with_mounted(backend.as_ref(), &c.volume, &b.scratch(), true, |root| {
        Ok(fs::read_to_string(root.join(rel)).ok())
    })
    .unwrap_or_else(|e| panic!("read {rel} in {name}: {e}"))
}

fn snap_clone(b: &Berth, h: &Harness, src: &str, dst: &str) -> Result<(), BerthError> {
    let req = CloneRequest {
        mode: CloneMode::Snapshot,
        pool: Some(h.pool.name.clone()),
        backend: None,
        ephemeral: false,
        drop_xattrs: false,
        size: None,
        freeze: false,
    };
    b.clone_container(src, dst, &req, &NoProgress).map(drop)
}

/// Snapshot, change, restore: the content is back, the record points at the
/// restored volume, and the old one is gone.
pub fn ops_snapshot_restore(h: &Harness) -> Outcome {
    if !h.backend.caps().snapshot {
        return Outcome::NotApplicable("no snapshots".into());
    }
    let b = berth(h);
    create(&b, h, "c1");
    write(&b, "c1", "etc/state", "one");
    b.snapshot("c1", None).expect("snapshot");
    assert_eq!(b.snapshots("c1").expect("list")[0].name, "snap0");
    write(&b, "c1", "etc/state", "two");
    let before = b.store().container("c1").expect("c1").volume;
    b.restore("c1", "snap0", &NoProgress).expect("restore");
    assert_eq!(read(&b, "c1", "etc/state").as_deref(), Some("one"));
    let after = b.store().container("c1").expect("c1").volume;
    assert_ne!(
        before, after,
        "restore builds a new volume beside the old one"
    );
    // Restoring twice works (the snapshot is not consumed).
    write(&b, "c1", "etc/state", "three");
    b.restore("c1", "snap0", &NoProgress)
        .expect("restore again");
    assert_eq!(read(&b, "c1", "etc/state").as_deref(), Some("one"));
    // Destroy refuses while snapshots exist, then takes them along.
    assert!(matches!(
        b.destroy("c1", DestroyRequest::default()),
        Err(BerthError::HasSnapshots { .. })
    ));
    b.snapshot_rm("c1", "snap0").expect("snapshot rm");
    b.destroy("c1", DestroyRequest::default()).expect("destroy");
    Outcome::Passed
}

/// Snapshot clones record their dependency; destroying the origin is refused
/// only where a real one exists, and `--force` destroys dependents first.
pub fn ops_dependents(h: &Harness) -> Outcome {
    let caps = h.backend.caps();
    if !caps.snapshot_clone {
        return Outcome::NotApplicable("no snapshot clones".into());
    }
    let b = berth(h);
    create(&b, h, "base");
    write(&b, "base", "etc/who", "base");
    snap_clone(&b, h, "base", "child").expect("snapshot clone");
    snap_clone(&b, h, "child", "grandchild").expect("clone of a clone");
    assert_eq!(read(&b, "grandchild", "etc/who").as_deref(), Some("base"));
    let refused = b.destroy("base", DestroyRequest::default());
    if caps.clone_pins_origin {
        match refused {
            Err(BerthError::HasDependents { dependents, .. }) => {
                assert_eq!(dependents, vec!["child".to_owned()])
            }
            other => panic!("destroying a pinned origin: {other:?}"),
        }
        let done = b
            .destroy(
                "base",
                DestroyRequest {
                    force: true,
                    ..DestroyRequest::default()
                },
            )
            .expect("forced destroy");
        assert_eq!(done, vec!["grandchild", "child", "base"]);
    } else {
        refused.expect("an unpinned origin can go");
        assert_eq!(read(&b, "grandchild", "etc/who").as_deref(), Some("base"));
        b.destroy("grandchild", DestroyRequest::default())
            .expect("destroy");
        b.destroy("child", DestroyRequest::default())
            .expect("destroy");
    }
    assert!(b.store().containers().expect("list").is_empty());
    Outcome::Passed
}

/// `run` starts the command in the container's rootfs, with its hostname, as
/// PID 1, and an ephemeral clone is gone after its run.
pub fn ops_run_and_ephemeral(h: &Harness) -> Outcome {
    let b = berth(h);
    create(&b, h, "r1");
    let m = b.start_run("r1").expect("mount for run");
    let spec = berth_runtime::RunSpec::new(
        &m.rootfs,
        "r1",
        vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo $(hostname) $$ > /etc/ran".into(),
        ],
    );
    let status = berth_runtime::run(&spec, &berth_runtime::LinuxSys).expect("run");
    assert!(status.success(), "{status:?}");
    b.finish_run(m).expect("unmount after run");
    assert_eq!(read(&b, "r1", "etc/ran").as_deref(), Some("r1 1\n"));

    if h.backend.caps().snapshot_clone {
        let req = CloneRequest {
            mode: CloneMode::Snapshot,
            pool: Some(h.pool.name.clone()),
            backend: None,
            ephemeral: true,
            drop_xattrs: false,
            size: None,
            freeze: false,
        };
        b.clone_container("r1", "eph", &req, &NoProgress)
            .expect("ephemeral clone");
        let m = b.start_run("eph").expect("mount ephemeral");
        let spec = berth_runtime::RunSpec::new(&m.rootfs, "eph", vec!["/bin/true".into()]);
        berth_runtime::run(&spec, &berth_runtime::LinuxSys).expect("run ephemeral");
        b.finish_run(m).expect("finish ephemeral");
        assert!(!b.store().exists("eph"), "ephemeral clone survived its run");
    }
    b.destroy("r1", DestroyRequest::default()).expect("destroy");
    Outcome::Passed
}

/// Destroying an origin while keeping its clones (`--keep-clones`): one clone is
/// promoted where the backend can, the others become independent copies.
pub fn ops_destroy_keeping_clones(h: &Harness) -> Outcome {
    if !h.backend.caps().snapshot_clone {
        return Outcome::NotApplicable("no snapshot clones".into());
    }
    let b = berth(h);
    create(&b, h, "origin");
    write(&b, "origin", "etc/who", "origin");
    snap_clone(&b, h, "origin", "first").expect("snapshot clone");
    write(&b, "first", "etc/mine", "first");
    snap_clone(&b, h, "origin", "second").expect("snapshot clone");
    let keep = DestroyRequest {
        keep_clones: true,
        ..DestroyRequest::default()
    };
    let done = b.destroy("origin", keep).expect("destroy keeping clones");
    assert_eq!(done, vec!["origin"]);
    assert_eq!(read(&b, "first", "etc/who").as_deref(), Some("origin"));
    assert_eq!(read(&b, "first", "etc/mine").as_deref(), Some("first"));
    assert_eq!(read(&b, "second", "etc/who").as_deref(), Some("origin"));
    for c in ["first", "second"] {
        let o = b
            .store()
            .container(c)
            .expect("clone")
            .origin
            .expect("origin kept");
        assert!(!o.pinned, "{c} still depends on the destroyed origin");
    }
    b.destroy("second", DestroyRequest::default())
        .expect("destroy");
    b.destroy("first", DestroyRequest::default())
        .expect("destroy");
    Outcome::Passed
}
