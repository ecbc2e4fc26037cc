//! Unit tests of the lvm backend against scripted LVM runs.

use super::*;
use berth_bdev::cmd::ScriptedRunner;

fn pool(thin: bool) -> PoolConfig {
    let p = PoolConfig::new("t", NAME).with_option("vg", "vg0");
    if thin {
        p.with_option("thinpool", "pool")
    } else {
        p
    }
}

fn lvs_json(rows: &[(&str, &str, &str)]) -> String {
    let rows: Vec<String> = rows
        .iter()
        .map(|(name, origin, attr)| {
            format!(
                r#"{{"lv_name":"{name}", "vg_name":"vg0", "lv_size":"268435456", "data_percent":"", "origin":"{origin}", "pool_lv":"", "lv_attr":"{attr}"}}"#
            )
        })
        .collect();
    format!(r#"{{"report":[{{"lv":[{}]}}]}}"#, rows.join(","))
}

#[test]
fn a_pool_needs_a_valid_vg() {
    let r: Arc<dyn Runner> = Arc::new(ScriptedRunner::new());
    let mut p = pool(false);
    p.options.remove("vg");
    assert!(Lvm::open(&p, r.clone()).is_err());
    let p = p.with_option("vg", "bad/vg");
    assert!(Lvm::open(&p, r.clone()).is_err());
    assert!(Lvm::open(&pool(true), r).is_ok());
    assert!(spec::lvm_name_ok("c1+snap"));
    assert!(!spec::lvm_name_ok("-x"));
}

#[test]
fn caps_follow_the_mode() {
    let r: Arc<dyn Runner> = Arc::new(ScriptedRunner::new());
    let thin = Lvm::open(&pool(true), r.clone()).unwrap().caps();
    assert!(thin.snapshot_clone && thin.clone_from_snapshot && thin.copy_on_write);
    let classic = Lvm::open(&pool(false), r).unwrap().caps();
    assert!(classic.snapshot && !classic.snapshot_clone && !classic.clone_from_snapshot);
    assert!(!thin.clone_pins_origin && !classic.clone_pins_origin);
}

#[test]
fn caps_list_lvm_then_the_filesystem_tools() {
    for f in [FsType::Ext4, FsType::Xfs, FsType::Btrfs] {
        let t = tools(f);
        assert_eq!(t[0], Tool::new("lvm", "lvm2"));
        assert_eq!(&t[1..], fs::tools(f));
    }
}

#[test]
fn thin_create_runs_lvcreate_then_reverts() {
    let r = Arc::new(
        ScriptedRunner::new()
            .expect("lvs --reportformat json", &lvs_json(&[]))
            .expect("lvcreate -q --yes -T vg0/pool -V 268435456b -n c1", "")
            .fail("lvchange -ay -K vg0/c1", "no such device")
            .expect("lvremove -f vg0/c1", ""),
    );
    let l = Lvm::open(&pool(true), r.clone()).unwrap();
    let opts = CreateOpts {
        size: Some(256 << 20),
        fstype: None,
    };
    let mut rv = Revert::new();
    // /dev/vg0/c1 does not exist here, so activation is attempted first.
    let e = l.create("c1", &opts, &mut rv);
    drop(rv);
    assert!(e.is_err());
    let calls = r.calls();
    assert!(
        calls.iter().any(|c| c.starts_with("lvcreate -q --yes -T")),
        "{calls:?}"
    );
    assert_eq!(calls.last().map(String::as_str), Some("lvremove -f vg0/c1"));
}

#[test]
fn destroying_an_origin_of_classic_snapshots_is_refused() {
    let json = lvs_json(&[("c1", "", "owi-a-s---"), ("c1+s1", "c1", "swi-a-s---")]);
    let r = Arc::new(ScriptedRunner::new().expect("lvs", &json));
    let l = Lvm::open(&pool(false), r.clone()).unwrap();
    let e = l
        .destroy(&LvmSpec::spec("vg0", "c1"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("c1+s1"), "{e}");
    assert_eq!(r.calls().len(), 1, "nothing is removed");
}

#[test]
fn classic_pools_refuse_clones_and_foreign_specs() {
    let l = Lvm::open(&pool(false), Arc::new(ScriptedRunner::new())).unwrap();
    let v = LvmSpec::spec("vg0", "c1");
    assert!(matches!(
        l.snapshot_clone(&v, "c2", &mut Revert::new()),
        Err(BdevError::Unsupported { .. })
    ));
    let other = LvmSpec::spec("vg1", "c1");
    assert!(matches!(
        l.locate(&other),
        Err(BdevError::ForeignVolume { .. })
    ));
    assert_eq!(snapshot_lv("c1", "s1"), "c1+s1");
    let s = l.locate(&LvmSpec::spec("vg0", "c1+s1")).unwrap();
    assert_eq!(
        (s.at.as_str(), s.name.as_str(), s.key()),
        ("c1+s1", "c1", "c1@s1".to_owned())
    );
    assert!(!l.locate(&v).unwrap().is_snapshot());
    // A snapshot is read-only: refused before anything runs.
    let e = l
        .resize(&LvmSpec::spec("vg0", "c1+s1"), 1 << 30)
        .unwrap_err();
    assert!(matches!(e, BdevError::SnapshotReadOnly { .. }), "{e}");
}
