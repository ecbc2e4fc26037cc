//! Unit tests of the qcow2 backend against scripted `qemu-img` runs.

use super::*;
use berth_bdev::cmd::ScriptedRunner;

fn q() -> Qcow2 {
    let pool = PoolConfig::new("t", NAME).with_path("/p");
    Qcow2::new(&pool, Arc::new(ScriptedRunner::new())).unwrap()
}

fn spec(p: &str) -> VolumeSpec {
    Qcow2Spec::spec(p)
}

#[test]
fn a_snapshot_clone_is_a_new_image_backed_by_its_origin() {
    let d = tempfile::tempdir().unwrap();
    let origin = d.path().join("o.qcow2");
    fs::write(&origin, b"QFI\xfb").unwrap();
    let clone = d.path().join("c.qcow2");
    let line = format!(
        "qemu-img create -q -f qcow2 -b {} -F qcow2 {}",
        origin.display(),
        clone.display()
    );
    let r = Arc::new(ScriptedRunner::new().expect(&line, ""));
    let pool = PoolConfig::new("t", NAME).with_path(d.path());
    let q = Qcow2::new(&pool, r.clone()).unwrap();
    let mut rv = Revert::new();
    let c = q
        .snapshot_clone(&Qcow2Spec::spec(origin), "c", &mut rv)
        .unwrap();
    rv.commit();
    assert_eq!(c, Qcow2Spec::spec(clone));
    assert_eq!(r.calls(), vec![line]);
}

#[test]
fn a_snapshot_cannot_mount_writable() {
    let e = q()
        .mount(&spec("/p/.snapshots/c1/s1.qcow2"), Path::new("/mnt"), false)
        .unwrap_err();
    assert!(matches!(e, BdevError::SnapshotReadOnly { .. }), "{e}");
}

#[test]
fn a_clone_backs_on_an_image_of_another_pool() {
    let d = tempfile::tempdir().unwrap();
    let other = d.path().join("other");
    fs::create_dir(&other).unwrap();
    let origin = other.join("o.qcow2");
    fs::write(&origin, b"QFI\xfb").unwrap();
    let clone = d.path().join("pool").join("c.qcow2");
    let line = format!(
        "qemu-img create -q -f qcow2 -b {} -F qcow2 {}",
        origin.display(),
        clone.display()
    );
    let r = Arc::new(ScriptedRunner::new().expect(&line, ""));
    let pool = PoolConfig::new("t", NAME).with_path(d.path().join("pool"));
    let q = Qcow2::new(&pool, r.clone()).unwrap();
    assert!(q.caps().clones_span_pools);
    let mut rv = Revert::new();
    let c = q
        .snapshot_clone(&Qcow2Spec::spec(&origin), "c", &mut rv)
        .unwrap();
    rv.commit();
    assert_eq!(c, Qcow2Spec::spec(clone));
    assert_eq!(r.calls(), vec![line]);
}

#[test]
fn snapshots_refuse_changes() {
    let q = q();
    let s = spec("/p/.snapshots/c1/s1.qcow2");
    for e in [
        q.resize(&s, 1 << 30).err(),
        q.snapshot(&s, "c1", "s2", &mut Revert::new()).err(),
    ] {
        let e = e.expect("refused");
        assert!(matches!(e, BdevError::SnapshotReadOnly { .. }), "{e}");
    }
}

#[test]
fn settings_and_tools() {
    let pool = PoolConfig::new("t", NAME)
        .with_path("/p")
        .with_option("vg", "x");
    let e = Qcow2::new(&pool, Arc::new(ScriptedRunner::new())).unwrap_err();
    assert!(matches!(e, BdevError::PoolSetting { .. }), "{e}");
    assert!(e.to_string().contains("vg"), "{e}");
    let e = Qcow2::new(&PoolConfig::new("t", NAME), Arc::new(ScriptedRunner::new())).unwrap_err();
    assert!(e.to_string().contains("--path"), "{e}");
    for f in [FsType::Ext4, FsType::Xfs, FsType::Btrfs] {
        let t = tools(f);
        assert_eq!(&t[..2], QEMU_TOOLS);
        assert_eq!(&t[2..], bfs::tools(f));
    }
}
