//! Which logical volumes of the volume group are berth's volumes and snapshots,
//! decided from `lvs` rows alone.

use berth_bdev::names::validate_name;

use super::parse::LvInfo;
use super::SNAP_SEP;

/// The volume names among `lvs`, sorted: LVs with a valid berth name that are
/// neither snapshots (`NAME+SNAP`, classic COW snapshots) nor thin pools. With a
/// thin pool, volumes are its thin LVs; without, the group's plain LVs.
pub fn volumes(lvs: &[LvInfo], thinpool: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = lvs
        .iter()
        .filter(|l| {
            let kind_ok = match thinpool {
                Some(tp) => l.is_thin_volume() && l.pool_lv.as_deref() == Some(tp),
                None => !l.is_thin_volume() && !l.is_thin_pool() && !l.is_classic_snapshot(),
            };
            kind_ok && !l.name.contains(SNAP_SEP) && validate_name(&l.name).is_ok()
        })
        .map(|l| l.name.clone())
        .collect();
    out.sort();
    out
}

/// The snapshot names of volume `name` among `lvs` (LVs `NAME+SNAP`), sorted.
pub fn snapshots(lvs: &[LvInfo], name: &str) -> Vec<String> {
    let mut out: Vec<String> = lvs
        .iter()
        .filter_map(|l| l.name.strip_prefix(name)?.strip_prefix(SNAP_SEP))
        .filter(|s| validate_name(s).is_ok())
        .map(str::to_owned)
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lv(name: &str, attr: &str, pool: &str) -> LvInfo {
        LvInfo {
            name: name.to_owned(),
            vg: "vg0".to_owned(),
            size: 1 << 28,
            data_percent: None,
            origin: None,
            pool_lv: (!pool.is_empty()).then(|| pool.to_owned()),
            attr: attr.to_owned(),
        }
    }

    #[test]
    fn thin_volumes_of_our_pool_only() {
        let lvs = [
            lv("pool", "twi-aotz--", ""),
            lv("c2", "Vwi-a-tz--", "pool"),
            lv("c1", "Vwi-a-tz--", "pool"),
            lv("c1+s1", "Vwi-a-tz-k", "pool"),
            lv("other", "Vwi-a-tz--", "pool2"),
            lv("[pool_tdata]", "Twi-ao----", ""),
            lv("plain", "-wi-a-----", ""),
        ];
        assert_eq!(volumes(&lvs, Some("pool")), ["c1", "c2"]);
        assert_eq!(snapshots(&lvs, "c1"), ["s1"]);
        assert!(snapshots(&lvs, "c2").is_empty());
    }

    #[test]
    fn classic_volumes_skip_snapshots_and_thin_lvs() {
        let lvs = [
            lv("b", "owi-a-s---", ""),
            lv("b+s", "swi-a-s---", ""),
            lv("b+x", "Swi-I-s---", ""),
            lv("a", "-wi-a-----", ""),
            lv("pool", "twi-aotz--", ""),
            lv("t", "Vwi-a-tz--", "pool"),
            lv("ab+s", "swi-a-s---", ""),
        ];
        assert_eq!(volumes(&lvs, None), ["a", "b"]);
        assert_eq!(snapshots(&lvs, "b"), ["s", "x"]);
        assert_eq!(snapshots(&lvs, "a"), Vec::<String>::new());
    }
}
