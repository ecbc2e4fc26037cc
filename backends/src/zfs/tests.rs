//! Unit tests of the zfs backend against scripted `zfs` runs.

use super::*;
use berth_bdev::cmd::ScriptedRunner;

fn zfs_with(r: ScriptedRunner) -> (Zfs, Arc<ScriptedRunner>) {
    let r = Arc::new(r);
    let pool = PoolConfig::new("t", NAME)
        .with_option("dataset", "tank/berth")
        .with_path("/srv/z");
    (Zfs::new(&pool, r.clone()).unwrap(), r)
}

fn ds(s: &str) -> VolumeSpec {
    ZfsSpec::spec(s)
}

#[test]
fn specs_outside_the_parent_are_refused() {
    let (z, _) = zfs_with(ScriptedRunner::new());
    for foreign in ["tank/other/c1", "tank/berth/a/b", "tank/berth/c1:s1"] {
        let e = z.target(&ds(foreign)).unwrap_err();
        assert!(matches!(e, BdevError::ForeignVolume { .. }), "{e}");
    }
    let e = z.target(&"dir:/srv/z/c1".parse().unwrap()).unwrap_err();
    assert!(matches!(e, BdevError::ForeignVolume { .. }), "{e}");
    let t = z.target(&ds("tank/berth/c1@s1")).unwrap();
    assert_eq!((t.name.as_str(), t.snap.as_deref()), ("c1", Some("s1")));
    assert_eq!(t.at, "tank/berth/c1@s1");
    assert_eq!(t.dataset(), "tank/berth/c1");
}

#[test]
fn clone_of_a_live_volume_goes_through_a_hidden_snapshot() {
    let (z, r) = zfs_with(
        ScriptedRunner::new()
            .fail("zfs get -Hp -o property,value type tank/berth/c1", "cannot open 'tank/berth/c1': dataset does not exist")
            .fail("zfs get -Hp -o property,value type tank/berth/v1@berth-clone-c1", "dataset does not exist")
            .expect("zfs snapshot tank/berth/v1@berth-clone-c1", "")
            .expect("zfs get -Hp -o property,value refquota tank/berth/v1", "refquota\t268435456\n")
            .expect(
                "zfs clone -o canmount=noauto -o mountpoint=/srv/z/c1 -o refquota=268435456 tank/berth/v1@berth-clone-c1 tank/berth/c1",
                "",
            )
            .expect("zfs get -Hp -o property,value mounted tank/berth/c1", "mounted\tyes\n")
            .expect("zfs unmount tank/berth/c1", ""),
    );
    let mut rv = Revert::new();
    let c = z
        .snapshot_clone(&ds("tank/berth/v1"), "c1", &mut rv)
        .unwrap();
    rv.commit();
    assert_eq!(c, ds("tank/berth/c1"));
    assert_eq!(r.calls().len(), 7);
}

#[test]
fn destroying_a_clone_destroys_its_hidden_origin() {
    let (z, r) = zfs_with(
        ScriptedRunner::new()
            .expect("zfs list -H -o name -t snapshot -r tank/berth/c1", "")
            .expect(
                "zfs get -Hp -o property,value origin tank/berth/c1",
                "origin\ttank/berth/v1@berth-clone-c1\n",
            )
            .fail(
                "zfs destroy -r tank/berth/c1",
                "cannot destroy 'tank/berth/c1': dataset is busy",
            )
            .expect("zfs destroy -r tank/berth/c1", "")
            .expect("zfs destroy tank/berth/v1@berth-clone-c1", ""),
    );
    z.destroy(&ds("tank/berth/c1")).unwrap();
    assert_eq!(r.calls().len(), 5);
}

#[test]
fn a_user_snapshot_origin_is_kept() {
    let (z, r) = zfs_with(
        ScriptedRunner::new()
            .expect(
                "zfs list -H -o name -t snapshot -r tank/berth/c1",
                "tank/berth/c1@berth-copy-x\n",
            )
            .expect(
                "zfs get -Hp -o property,value origin tank/berth/c1",
                "origin\ttank/berth/v1@s1\n",
            )
            .expect("zfs destroy -r tank/berth/c1", ""),
    );
    z.destroy(&ds("tank/berth/c1")).unwrap();
    assert_eq!(r.calls().len(), 3);
}

#[test]
fn a_volume_with_snapshots_lingers_until_its_last_snapshot_goes() {
    let (z, r) = zfs_with(
        ScriptedRunner::new()
            .expect(
                "zfs list -H -o name -t snapshot -r tank/berth/v1",
                "tank/berth/v1@s1\n",
            )
            .expect("zfs unmount tank/berth/v1", "")
            .expect("zfs set berth:destroyed=on tank/berth/v1", "")
            .expect("zfs destroy tank/berth/v1@s1", "")
            .expect(
                "zfs get -Hp -o property,value berth:destroyed tank/berth/v1",
                "berth:destroyed\ton\n",
            )
            .expect("zfs list -H -o name -t snapshot -r tank/berth/v1", "")
            .expect(
                "zfs get -Hp -o property,value origin tank/berth/v1",
                "origin\t-\n",
            )
            .expect("zfs destroy -r tank/berth/v1", ""),
    );
    z.destroy(&ds("tank/berth/v1")).unwrap();
    z.destroy_snapshot(&ds("tank/berth/v1@s1")).unwrap();
    assert_eq!(r.calls().len(), 8);
}

#[test]
fn destroying_an_origin_with_clones_is_refused_by_name() {
    let (z, _) = zfs_with(
        ScriptedRunner::new()
            .expect("zfs list -H -o name -t snapshot -r tank/berth/v1", "tank/berth/v1@berth-clone-c1\n")
            .expect("zfs get -Hp -o property,value origin tank/berth/v1", "origin\t-\n")
            .fail(
                "zfs destroy -r tank/berth/v1",
                "cannot destroy 'tank/berth/v1': filesystem has dependent clones\nuse '-R' to destroy the following datasets:\ntank/berth/c1",
            ),
    );
    let e = z.destroy(&ds("tank/berth/v1")).unwrap_err();
    assert!(matches!(e, BdevError::DeleteRefused { .. }), "{e}");
    assert!(e.to_string().contains("tank/berth/c1"), "{e}");
}

#[test]
fn a_pool_needs_a_path_for_its_mount_points() {
    let pool = PoolConfig::new("t", NAME).with_option("dataset", "tank/berth");
    let e = Zfs::new(&pool, Arc::new(ScriptedRunner::new())).unwrap_err();
    assert!(e.to_string().contains("--path"), "{e}");
}

#[test]
fn destroying_what_is_gone_succeeds() {
    let missing = "cannot open 'tank/berth/gone': dataset does not exist";
    let (z, r) = zfs_with(
        ScriptedRunner::new()
            .fail(
                "zfs list -H -o name -t snapshot -r tank/berth/gone",
                missing,
            )
            .fail(
                "zfs destroy tank/berth/v1@s1",
                "cannot open 'tank/berth/v1@s1': dataset does not exist",
            )
            .expect(
                "zfs get -Hp -o property,value berth:destroyed tank/berth/v1",
                "berth:destroyed\t-\n",
            )
            .fail(
                "zfs destroy tank/berth/gone@s1",
                "cannot open 'tank/berth/gone@s1': dataset does not exist",
            )
            .fail(
                "zfs get -Hp -o property,value berth:destroyed tank/berth/gone",
                missing,
            ),
    );
    z.destroy(&ds("tank/berth/gone")).unwrap();
    z.destroy_snapshot(&ds("tank/berth/v1@s1")).unwrap();
    z.destroy_snapshot(&ds("tank/berth/gone@s1")).unwrap();
    assert_eq!(r.calls().len(), 5);
}

#[test]
fn reserved_snapshot_names_are_refused() {
    let (z, _) = zfs_with(ScriptedRunner::new());
    let mut rv = Revert::new();
    let e = z
        .snapshot(&ds("tank/berth/v1"), "v1", "berth-clone-x", &mut rv)
        .unwrap_err();
    assert!(matches!(e, BdevError::InvalidName { .. }), "{e}");
}

#[test]
fn resize_only_grows() {
    let (z, _) = zfs_with(ScriptedRunner::new().expect(
        "zfs get -Hp -o property,value refquota tank/berth/v1",
        "refquota\t1000\n",
    ));
    assert!(z.resize(&ds("tank/berth/v1"), 10).is_err());
}

#[test]
fn snapshots_refuse_changes() {
    let (z, r) = zfs_with(ScriptedRunner::new());
    let s = ds("tank/berth/v1@s1");
    for e in [
        z.resize(&s, 1 << 30).err(),
        z.promote(&s).err(),
        z.snapshot(&s, "v1", "s2", &mut Revert::new()).err(),
        z.mount(&s, Path::new("/mnt"), false).err(),
    ] {
        let e = e.expect("refused");
        assert!(matches!(e, BdevError::SnapshotReadOnly { .. }), "{e}");
    }
    assert!(r.calls().is_empty(), "{:?}", r.calls());
}
