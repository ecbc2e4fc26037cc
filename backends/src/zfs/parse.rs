//! Pure parsers for `zfs`/`zpool` machine-readable output (`-H -p`), unit-tested on
//! text captured from zfs-fuse 0.7.

use std::collections::BTreeMap;

use berth_bdev::names::validate_name;
use berth_bdev::{BdevError, Result};

/// Parses `zfs get -Hp -o property,value P1,P2… DATASET` into property → value.
pub fn props(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('\t')?;
            Some((k.trim().to_owned(), v.trim_end().to_owned()))
        })
        .collect()
}

/// Parses `zfs get -Hp -o name,property,value P1,P2… DS1 DS2…` into dataset →
/// property → value; a dataset that does not exist has no entry.
pub fn named_props(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for l in text.lines() {
        let mut f = l.splitn(3, '\t');
        if let (Some(name), Some(prop), Some(value)) = (f.next(), f.next(), f.next()) {
            out.entry(name.trim().to_owned())
                .or_default()
                .insert(prop.trim().to_owned(), value.trim_end().to_owned());
        }
    }
    out
}

/// A volume's place among clones and snapshots.
#[derive(Debug, Default, PartialEq)]
pub struct Family {
    /// The snapshot it was cloned from.
    pub origin: Option<String>,
    /// Whether that snapshot's volume was destroyed and waits for its clones
    /// (`berth:origin-destroyed` on this volume).
    pub origin_destroyed: bool,
    /// Its snapshots' names (after `@`).
    pub snapshots: Vec<String>,
}

/// The [`Family`] of `dataset`, from `zfs list -H -o
/// name,origin,berth:origin-destroyed -t filesystem,snapshot -r DATASET`.
pub fn family(text: &str, dataset: &str) -> Family {
    let mut f = Family::default();
    for l in text.lines() {
        let mut cols = l.split('\t').map(str::trim);
        let name = cols.next().unwrap_or_default();
        if name == dataset {
            f.origin = cols.next().filter(|o| o.contains('@')).map(str::to_owned);
            f.origin_destroyed = cols.next() == Some("on");
        } else if let Some(s) = name.strip_prefix(dataset).and_then(|r| r.strip_prefix('@')) {
            f.snapshots.push(s.to_owned());
        }
    }
    f
}

/// A byte count from `-p` output; `-`, `none` and `0` (no quota) read as `None`.
pub fn bytes_opt(v: Option<&String>) -> Option<u64> {
    v.and_then(|s| s.parse::<u64>().ok()).filter(|n| *n > 0)
}

/// A byte count that must be there.
pub fn bytes(map: &BTreeMap<String, String>, key: &'static str) -> Result<u64> {
    map.get(key)
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| BdevError::Parse {
            what: "zfs get output",
            reason: format!("no numeric {key:?} in {map:?}"),
        })
}

/// Snapshot names (after `@`) of `dataset` from `zfs list -H -o name -t snapshot -r`.
pub fn snapshot_names(text: &str, dataset: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(dataset)?.strip_prefix('@'))
        .map(str::to_owned)
        .collect()
}

/// Volume names from `zfs list -H -o name,PROP -t filesystem -r PARENT`, sorted:
/// the direct children of `parent` with a valid berth name (never the temporary
/// `NAME:SNAP` clones) whose `PROP` (the destroyed mark) is not `on`.
pub fn volume_names(text: &str, parent: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let (name, mark) = l.split_once('\t').unwrap_or((l, "-"));
            let child = name.trim().strip_prefix(parent)?.strip_prefix('/')?;
            (mark.trim() != "on" && validate_name(child).is_ok()).then(|| child.to_owned())
        })
        .collect();
    out.sort();
    out
}

/// Pool names from `zpool list -H -o name`.
pub fn pool_names(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("no pools"))
        .map(str::to_owned)
        .collect()
}

/// The clones `zfs destroy` named when it refused because clones depend on the
/// dataset or snapshot (the lines after "use '-R' to destroy the following datasets:").
pub fn dependent_clones(stderr: &str) -> Option<Vec<String>> {
    if !stderr.contains("dependent clones") {
        return None;
    }
    let list = stderr
        .lines()
        .skip_while(|l| !l.contains("use '-R'"))
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    Some(list)
}

/// Whether a zfs command failed only because the dataset was momentarily busy
/// (zfs-fuse answers this right after an unmount).
pub fn is_busy(stderr: &str) -> bool {
    stderr.contains("is busy") || stderr.contains("Device or resource busy")
}

/// Whether zfs-fuse lost the descriptor a `zfs send` passed it over its socket
/// (rare, seen once in a CI run: the command aborts with this before writing
/// anything); the same command run again works.
pub fn is_lost_descriptor(stderr: &str) -> bool {
    stderr.contains("internal error: Bad file descriptor")
}

/// Whether a zfs command failed because the dataset does not exist.
pub fn is_missing(stderr: &str) -> bool {
    stderr.contains("does not exist") || stderr.contains("could not find any snapshots")
}

/// Whether every line of `stderr` says that a dataset does not exist (and there
/// is at least one): what `zfs get` of several datasets prints for the missing.
pub fn only_missing(stderr: &str) -> bool {
    let mut lines = stderr.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next();
    first.is_some_and(|l| l.contains("dataset does not exist"))
        && lines.all(|l| l.contains("dataset does not exist"))
}

/// Whether `zfs create`, `clone` or `snapshot` failed because the name is taken.
pub fn is_exists(stderr: &str) -> bool {
    stderr.contains("dataset already exists")
}

/// Whether `zfs mount` failed because the dataset is mounted already.
pub fn is_already_mounted(stderr: &str) -> bool {
    stderr.contains("already mounted")
}

/// Whether `zfs unmount` failed because nothing was mounted.
pub fn is_not_mounted(stderr: &str) -> bool {
    stderr.contains("not currently mounted") || stderr.contains("not mounted")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_output_is_parsed() {
        // zfs get -Hp -o property,value used,referenced,refquota,origin,mounted tpool/b/c1
        let text = "used\t0\nreferenced\t21118976\nrefquota\t0\norigin\ttpool/b/v1@berth-clone-c1\nmounted\tyes\n";
        let m = props(text);
        assert_eq!(bytes(&m, "used").unwrap(), 0);
        assert_eq!(bytes(&m, "referenced").unwrap(), 21_118_976);
        assert_eq!(bytes_opt(m.get("refquota")), None);
        assert_eq!(m.get("mounted").map(String::as_str), Some("yes"));

        let v1 = props("used\t21118976\nreferenced\t21118976\nrefquota\t268435456\norigin\t-\n");
        assert_eq!(bytes_opt(v1.get("refquota")), Some(268_435_456));
        // Snapshots have no refquota.
        assert_eq!(bytes_opt(props("refquota\t-\n").get("refquota")), None);
        assert!(bytes(&props("used\t-\n"), "used").is_err());
    }

    #[test]
    fn get_of_several_datasets_is_parsed() {
        // zfs get -Hp -o name,property,value type,refquota ztrace/berth/c1@berth-clone-c2
        //   ztrace/berth/nope ztrace/berth/c2 (exit 1)
        let text = "ztrace/berth/c1@berth-clone-c2\ttype\tsnapshot\n\
                    ztrace/berth/c1@berth-clone-c2\trefquota\t-\n\
                    ztrace/berth/c2\ttype\tfilesystem\nztrace/berth/c2\trefquota\t0\n";
        let m = named_props(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m["ztrace/berth/c1@berth-clone-c2"]["type"], "snapshot");
        assert_eq!(bytes_opt(m["ztrace/berth/c2"].get("refquota")), None);
        assert!(!m.contains_key("ztrace/berth/nope"));
        assert!(named_props("").is_empty());

        let missing = "cannot open 'ztrace/berth/nope': dataset does not exist\n\
                       cannot open 'ztrace/berth/c1@x': dataset does not exist\n";
        assert!(only_missing(missing));
        assert!(!only_missing(""));
        assert!(!only_missing(
            "cannot open 'a/b': dataset does not exist\ninternal error: failed to initialize ZFS library"
        ));
        assert!(is_exists(
            "cannot create snapshot 'ztrace/berth/c1@x1': dataset already exists"
        ));
        assert!(!is_exists(missing));
    }

    #[test]
    fn family_list_is_parsed() {
        // zfs list -H -o name,origin,berth:origin-destroyed -t filesystem,snapshot -r ztrace/berth/c2
        let text = "ztrace/berth/c2\tztrace/berth/c1@berth-clone-c2\ton\n\
                    ztrace/berth/c2@s1\t-\t-\nztrace/berth/c2@berth-copy-x\t-\t-\n";
        let f = family(text, "ztrace/berth/c2");
        assert_eq!(f.origin.as_deref(), Some("ztrace/berth/c1@berth-clone-c2"));
        assert!(f.origin_destroyed);
        assert_eq!(f.snapshots, ["s1", "berth-copy-x"]);
        let f = family("ztrace/berth/c1\t-\t-\n", "ztrace/berth/c1");
        assert_eq!(f, Family::default());
    }

    #[test]
    fn snapshot_list_is_parsed() {
        let text = "tank/b/v1@berth-clone-c1\ntank/b/v1@s1\ntank/b/v10@x\n";
        assert_eq!(
            snapshot_names(text, "tank/b/v1"),
            vec!["berth-clone-c1", "s1"]
        );
        assert!(snapshot_names("", "tank/b/v1").is_empty());
    }

    #[test]
    fn volume_list_is_parsed() {
        // zfs list -H -o name,berth:destroyed -t filesystem -r zxp/b
        let text = "zxp/b\t-\nzxp/b/v2\t-\nzxp/b/v1\t-\nzxp/b/gone\ton\nzxp/b/v1:s1\t-\n\
                    zxp/b/v1/nested\t-\nzxp/bb/x\t-\n";
        assert_eq!(volume_names(text, "zxp/b"), ["v1", "v2"]);
        assert!(volume_names("", "zxp/b").is_empty());
    }

    #[test]
    fn pool_list_is_parsed() {
        assert_eq!(pool_names("tpool\nother\n"), vec!["tpool", "other"]);
        assert!(pool_names("").is_empty());
        assert!(pool_names("no pools available\n").is_empty());
    }

    #[test]
    fn destroy_refusals_are_recognised() {
        let clones = "cannot destroy 'zexp/b/v1': filesystem has dependent clones\n\
                      use '-R' to destroy the following datasets:\n\
                      zexp/b/c1\n\
                      zexp/b/c2";
        assert_eq!(
            dependent_clones(clones).unwrap(),
            vec!["zexp/b/c1", "zexp/b/c2"]
        );
        let children = "cannot destroy 'zexp/b/v1': filesystem has children\n\
                        use '-r' to destroy the following datasets:\n\
                        zexp/b/v1@s1";
        assert_eq!(dependent_clones(children), None);
        assert!(is_busy("cannot destroy 'zexp/berth/c1': dataset is busy"));
        assert!(!is_busy(clones));
        assert!(is_missing("cannot open 'zexp/b/x': dataset does not exist"));
        assert!(is_not_mounted(
            "cannot unmount 'zexp/b/v1': not currently mounted"
        ));
    }
}
