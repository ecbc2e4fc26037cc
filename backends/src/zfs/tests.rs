//! Unit tests of the zfs backend against scripted `zfs` runs.

use super::*;
use berth_bdev::cmd::ScriptedRunner;
use berth_bdev::mount::MountInfo;

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

/// What `zfs get` prints on stderr for each missing dataset.
fn missing(datasets: &[&str]) -> String {
    datasets
        .iter()
        .map(|d| format!("cannot open '{d}': dataset does not exist\n"))
        .collect()
}

#[test]
fn clone_of_a_live_volume_goes_through_a_hidden_snapshot() {
    let (z, r) = zfs_with(
        ScriptedRunner::new()
            // One query: the name is free, no hidden snapshot is left over, the refquota.
            .fail_with(
                "zfs get -Hp -o name,property,value type,refquota tank/berth/c1 tank/berth/v1 tank/berth/v1@berth-clone-c1",
                "tank/berth/v1\ttype\tfilesystem\ntank/berth/v1\trefquota\t268435456\n",
                &missing(&["tank/berth/c1", "tank/berth/v1@berth-clone-c1"]),
            )
            .expect("zfs snapshot tank/berth/v1@berth-clone-c1", "")
            .expect(
                "zfs clone -o canmount=noauto -o mountpoint=/srv/z/c1 -o refquota=268435456 tank/berth/v1@berth-clone-c1 tank/berth/c1",
                "",
            ),
    );
    let mut rv = Revert::new();
    let c = z
        .snapshot_clone(&ds("tank/berth/v1"), "c1", &mut rv)
        .unwrap();
    rv.commit();
    assert_eq!(c, ds("tank/berth/c1"));
    // tank/berth/c1 is not in this host's mount table: nothing to unmount.
    assert_eq!(r.calls().len(), 3, "{:?}", r.calls());
}

#[test]
fn a_clone_left_mounted_is_unmounted() {
    // zfs-fuse mounts a fresh clone despite canmount=noauto.
    let (z, r) = zfs_with(
        ScriptedRunner::new()
            .fail(
                "zfs unmount tank/berth/c1",
                "cannot unmount 'tank/berth/c1': dataset is busy",
            )
            .expect("zfs unmount tank/berth/c1", ""),
    );
    let listed = |source: &str| MountInfo {
        mount_point: "/srv/z/c1".into(),
        fstype: "fuse.zfs".to_owned(),
        source: source.to_owned(),
    };
    z.unmount_if_listed("tank/berth/c1", &[listed("tank/berth/c10")])
        .unwrap();
    assert!(r.calls().is_empty(), "{:?}", r.calls());
    z.unmount_if_listed("tank/berth/c1", &[listed("tank/berth/c1")])
        .unwrap();
    assert_eq!(r.calls().len(), 2, "{:?}", r.calls());
}

#[test]
fn a_leftover_hidden_snapshot_is_replaced() {
    let (z, r) = zfs_with(
        ScriptedRunner::new()
            .fail_with(
                "zfs get -Hp -o name,property,value type,refquota tank/berth/c1 tank/berth/v1 tank/berth/v1@berth-clone-c1",
                "tank/berth/v1\ttype\tfilesystem\ntank/berth/v1\trefquota\t0\n\
                 tank/berth/v1@berth-clone-c1\ttype\tsnapshot\ntank/berth/v1@berth-clone-c1\trefquota\t-\n",
                &missing(&["tank/berth/c1"]),
            )
            .expect("zfs destroy tank/berth/v1@berth-clone-c1", "")
            .expect("zfs snapshot tank/berth/v1@berth-clone-c1", "")
            .expect(
                "zfs clone -o canmount=noauto -o mountpoint=/srv/z/c1 tank/berth/v1@berth-clone-c1 tank/berth/c1",
                "",
            ),
    );
    let mut rv = Revert::new();
    z.snapshot_clone(&ds("tank/berth/v1"), "c1", &mut rv)
        .unwrap();
    rv.commit();
    assert_eq!(r.calls().len(), 4, "{:?}", r.calls());
}

#[test]
fn clone_refuses_a_taken_name_or_a_missing_source_before_making_anything() {
    let query = "zfs get -Hp -o name,property,value type,refquota tank/berth/c1 tank/berth/v1";
    let (z, r) = zfs_with(
        ScriptedRunner::new()
            .expect(
                query,
                "tank/berth/c1\ttype\tfilesystem\ntank/berth/v1\ttype\tfilesystem\n",
            )
            .fail_with(
                query,
                "",
                &missing(&[
                    "tank/berth/c1",
                    "tank/berth/v1",
                    "tank/berth/v1@berth-clone-c1",
                ]),
            )
            // Anything but "does not exist" is a real error.
            .fail_with(
                query,
                "tank/berth/v1\ttype\tfilesystem\n",
                "internal error: failed to initialize ZFS library",
            ),
    );
    for want in ["already exists", "not found", "failed to initialize"] {
        let e = z
            .snapshot_clone(&ds("tank/berth/v1"), "c1", &mut Revert::new())
            .unwrap_err();
        assert!(e.to_string().contains(want), "{want}: {e}");
    }
    assert_eq!(r.calls().len(), 3, "{:?}", r.calls());
}

#[test]
fn clone_of_a_snapshot_keeps_its_volume_s_refquota() {
    let (z, r) = zfs_with(
        ScriptedRunner::new()
            .fail_with(
                "zfs get -Hp -o name,property,value type,refquota tank/berth/c1 tank/berth/v1",
                "tank/berth/v1\ttype\tfilesystem\ntank/berth/v1\trefquota\t1000\n",
                &missing(&["tank/berth/c1"]),
            )
            .expect(
                "zfs clone -o canmount=noauto -o mountpoint=/srv/z/c1 -o refquota=1000 tank/berth/v1@s1 tank/berth/c1",
                "",
            ),
    );
    let mut rv = Revert::new();
    z.snapshot_clone(&ds("tank/berth/v1@s1"), "c1", &mut rv)
        .unwrap();
    rv.commit();
    assert_eq!(r.calls().len(), 2, "{:?}", r.calls());
}

#[test]
fn copy_sends_a_temporary_snapshot_and_removes_it() {
    let (z, r) = zfs_with(
        ScriptedRunner::new()
            .fail_with(
                "zfs get -Hp -o name,property,value type,refquota tank/berth/c1 tank/berth/v1 tank/berth/v1@berth-copy-c1",
                "tank/berth/v1\ttype\tfilesystem\ntank/berth/v1\trefquota\t4096\n",
                &missing(&["tank/berth/c1", "tank/berth/v1@berth-copy-c1"]),
            )
            .expect("zfs snapshot tank/berth/v1@berth-copy-c1", "")
            .expect(
                "zfs send tank/berth/v1@berth-copy-c1 | zfs recv -u tank/berth/c1",
                "",
            )
            .expect("zfs destroy tank/berth/c1@berth-copy-c1", "")
            .expect("zfs set canmount=noauto tank/berth/c1", "")
            .expect("zfs set mountpoint=/srv/z/c1 tank/berth/c1", "")
            .expect("zfs set refquota=4096 tank/berth/c1", "")
            .expect("zfs destroy tank/berth/v1@berth-copy-c1", ""),
    );
    let mut rv = Revert::new();
    let c = z
        .copy_clone(&ds("tank/berth/v1"), "c1", &CreateOpts::default(), &mut rv)
        .unwrap();
    rv.commit();
    assert_eq!(c, ds("tank/berth/c1"));
    assert_eq!(r.calls().len(), 8, "{:?}", r.calls());
}

#[test]
fn a_failed_copy_still_removes_the_temporary_snapshot() {
    let (z, r) = zfs_with(
        ScriptedRunner::new()
            .fail_with(
                "zfs get -Hp -o name,property,value type,refquota tank/berth/c1 tank/berth/v1 tank/berth/v1@berth-copy-c1",
                "tank/berth/v1\ttype\tfilesystem\ntank/berth/v1\trefquota\t0\n",
                &missing(&["tank/berth/c1", "tank/berth/v1@berth-copy-c1"]),
            )
            .expect("zfs snapshot tank/berth/v1@berth-copy-c1", "")
            .fail("zfs send tank/berth/v1@berth-copy-c1 | zfs recv", "out of space")
            .expect("zfs destroy tank/berth/v1@berth-copy-c1", ""),
    );
    let e = z
        .copy_clone(
            &ds("tank/berth/v1"),
            "c1",
            &CreateOpts::default(),
            &mut Revert::new(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("out of space"), "{e}");
    assert_eq!(r.calls().len(), 4, "{:?}", r.calls());
}

#[test]
fn taken_names_are_refused_by_the_command_itself() {
    let (z, r) = zfs_with(
        ScriptedRunner::new()
            .fail(
                "zfs create -o canmount=noauto -o mountpoint=/srv/z/v1 tank/berth/v1",
                "cannot create 'tank/berth/v1': dataset already exists",
            )
            .fail(
                "zfs snapshot tank/berth/v1@s1",
                "cannot create snapshot 'tank/berth/v1@s1': dataset already exists",
            )
            .fail(
                "zfs snapshot tank/berth/gone@s1",
                "cannot open 'tank/berth/gone': dataset does not exist",
            ),
    );
    let mut rv = Revert::new();
    let e = z.create("v1", &CreateOpts::default(), &mut rv).unwrap_err();
    assert!(
        matches!(&e, BdevError::Exists { what: "zfs dataset", name } if name == "tank/berth/v1"),
        "{e}"
    );
    let e = z
        .snapshot(&ds("tank/berth/v1"), "v1", "s1", &mut rv)
        .unwrap_err();
    assert!(
        matches!(&e, BdevError::Exists { what: "zfs snapshot", name } if name == "tank/berth/v1@s1"),
        "{e}"
    );
    let e = z
        .snapshot(&ds("tank/berth/gone"), "gone", "s1", &mut rv)
        .unwrap_err();
    assert!(!matches!(e, BdevError::Exists { .. }), "{e}");
    assert_eq!(r.calls().len(), 3, "{:?}", r.calls());
}

#[test]
fn probe_diagnoses_only_after_its_query_failed() {
    let missing_parent = || BdevError::NotFound {
        what: "zfs dataset",
        name: "tank/berth".to_owned(),
    };
    let (z, r) = zfs_with(
        ScriptedRunner::new()
            .fail("zpool list -H -o name", "connect: Connection refused")
            .expect("zpool list -H -o name", "other\n")
            .expect("zpool list -H -o name", "tank\n")
            .expect("zfs create -o canmount=off tank/berth", ""),
    );
    let e = z.probe_failed(missing_parent()).unwrap_err();
    assert!(e.to_string().contains("daemon"), "{e}");
    let e = z.probe_failed(missing_parent()).unwrap_err();
    assert!(
        e.to_string().contains("zpool \"tank\" does not exist"),
        "{e}"
    );
    z.probe_failed(missing_parent()).unwrap();
    assert_eq!(r.calls().len(), 4, "{:?}", r.calls());
}

#[test]
fn a_mountpoint_elsewhere_is_refused_and_the_mount_undone() {
    let (z, r) = zfs_with(
        ScriptedRunner::new()
            .expect("zfs mount tank/berth/v1", "")
            .expect(
                "zfs get -Hp -o property,value mountpoint tank/berth/v1",
                "mountpoint\t/elsewhere\n",
            )
            .expect("zfs unmount tank/berth/v1", "")
            .fail(
                "zfs mount tank/berth/v1",
                "cannot mount 'tank/berth/v1': filesystem already mounted",
            )
            .expect(
                "zfs get -Hp -o property,value mountpoint tank/berth/v1",
                "mountpoint\t/elsewhere\n",
            ),
    );
    for _ in 0..2 {
        let e = z.mount_at_own("tank/berth/v1", "/srv/z/v1").unwrap_err();
        assert!(matches!(e, BdevError::PoolSetting { .. }), "{e}");
        assert!(e.to_string().contains("/elsewhere"), "{e}");
    }
    // Mounted elsewhere by someone else: left alone.
    assert_eq!(r.calls().len(), 5, "{:?}", r.calls());
}

#[test]
fn destroying_a_clone_destroys_its_hidden_origin() {
    let (z, r) = zfs_with(
        ScriptedRunner::new()
            .expect(
                "zfs list -H -o name,origin,berth:origin-destroyed -t filesystem,snapshot -r tank/berth/c1",
                "tank/berth/c1\ttank/berth/v1@berth-clone-c1\n",
            )
            .fail(
                "zfs destroy -r tank/berth/c1",
                "cannot destroy 'tank/berth/c1': dataset is busy",
            )
            .expect("zfs destroy -r tank/berth/c1", "")
            .expect("zfs destroy tank/berth/v1@berth-clone-c1", ""),
    );
    z.destroy(&ds("tank/berth/c1")).unwrap();
    assert_eq!(r.calls().len(), 4);
}

#[test]
fn a_user_snapshot_origin_is_kept() {
    let (z, r) = zfs_with(
        ScriptedRunner::new()
            .expect(
                "zfs list -H -o name,origin,berth:origin-destroyed -t filesystem,snapshot -r tank/berth/c1",
                "tank/berth/c1\ttank/berth/v1@s1\ntank/berth/c1@berth-copy-x\t-\n",
            )
            .expect("zfs destroy -r tank/berth/c1", ""),
    );
    z.destroy(&ds("tank/berth/c1")).unwrap();
    assert_eq!(r.calls().len(), 2);
}

#[test]
fn a_volume_with_snapshots_lingers_until_its_last_snapshot_goes() {
    let list =
        "zfs list -H -o name,origin,berth:origin-destroyed -t filesystem,snapshot -r tank/berth/v1";
    let (z, r) = zfs_with(
        ScriptedRunner::new()
            .expect(list, "tank/berth/v1\t-\ntank/berth/v1@s1\t-\n")
            .expect("zfs unmount tank/berth/v1", "")
            .expect("zfs set berth:destroyed=on tank/berth/v1", "")
            .expect("zfs destroy tank/berth/v1@s1", "")
            .expect(
                "zfs get -Hp -o property,value berth:destroyed tank/berth/v1",
                "berth:destroyed\ton\n",
            )
            .expect(list, "tank/berth/v1\t-\n")
            .expect("zfs destroy -r tank/berth/v1", ""),
    );
    z.destroy(&ds("tank/berth/v1")).unwrap();
    z.destroy_snapshot(&ds("tank/berth/v1@s1")).unwrap();
    assert_eq!(r.calls().len(), 7);
}

#[test]
fn destroying_an_origin_with_clones_is_refused_by_name() {
    let (z, _) = zfs_with(
        ScriptedRunner::new()
            .expect(
                "zfs list -H -o name,origin,berth:origin-destroyed -t filesystem,snapshot -r tank/berth/v1",
                "tank/berth/v1\t-\ntank/berth/v1@berth-clone-c1\t-\n",
            )
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
                "zfs list -H -o name,origin,berth:origin-destroyed -t filesystem,snapshot -r tank/berth/gone",
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

#[test]
fn a_send_whose_descriptor_zfs_fuse_lost_is_sent_again() {
    const LOST: &str = "internal error: Bad file descriptor";
    let (z, r) = zfs_with(
        ScriptedRunner::new()
            .fail("zfs send tank/berth/c1@s1 > stream", LOST)
            .expect("zfs send tank/berth/c1@s1 > stream", "STREAM"),
    );
    let mut out = Vec::new();
    z.send_stream(&ds("tank/berth/c1@s1"), None, &mut out)
        .unwrap();
    assert_eq!(out, b"STREAM");
    assert_eq!(r.calls().len(), 2, "{:?}", r.calls());

    // Not forever: the third loss is the error.
    let mut script = ScriptedRunner::new();
    for _ in 0..3 {
        script = script.fail("zfs send tank/berth/c1@s1 > stream", LOST);
    }
    let (z, r) = zfs_with(script);
    let e = z
        .send_stream(&ds("tank/berth/c1@s1"), None, &mut Vec::new())
        .unwrap_err();
    assert!(e.to_string().contains("Bad file descriptor"), "{e}");
    assert_eq!(r.calls().len(), 3, "{:?}", r.calls());
}
