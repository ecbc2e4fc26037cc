//! The zfs spec form (`zfs:POOL/PARENT/NAME[@SNAP]`), the pool settings, and
//! finding which volume or snapshot of the pool a spec names.

use berth_bdev::spec::one_field;
use berth_bdev::{BdevError, PoolConfig, Result, SpecForm, VolumeSpec};
use serde::Deserialize;

use super::{Zfs, NAME};
use crate::layout::Located;

/// A zfs volume or snapshot: `zfs:DATASET`, where a snapshot's dataset is
/// `VOLUME@SNAP`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZfsSpec {
    pub dataset: String,
}

impl ZfsSpec {
    /// The spec of `dataset` (`tank/berth/c1` or `tank/berth/c1@snap`).
    pub fn spec(dataset: impl Into<String>) -> VolumeSpec {
        ZfsSpec {
            dataset: dataset.into(),
        }
        .to_spec()
    }
}

/// Whether `ds` reads as a dataset name: relative, no empty component.
fn dataset_ok(ds: &str) -> bool {
    !ds.is_empty()
        && !ds.starts_with('/')
        && !ds.contains('\0')
        && !ds.split('/').any(str::is_empty)
}

impl SpecForm for ZfsSpec {
    const BACKEND: &'static str = NAME;

    fn from_fields(fields: &[String]) -> std::result::Result<Self, String> {
        let ds = one_field(fields)?;
        if !dataset_ok(ds) {
            return Err("expected a dataset like tank/berth/c1".to_owned());
        }
        Ok(ZfsSpec {
            dataset: ds.to_owned(),
        })
    }

    fn to_fields(&self) -> Vec<String> {
        vec![self.dataset.clone()]
    }
}

/// The settings of a zfs pool (`berth pool add --dataset`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ZfsOptions {
    /// The parent dataset of the pool's volumes.
    pub dataset: String,
}

impl ZfsOptions {
    /// The pool's parent dataset, checked.
    pub(super) fn parent(pool: &PoolConfig) -> Result<String> {
        let ZfsOptions { dataset } = pool.options()?;
        if !dataset_ok(&dataset) || dataset.contains('@') {
            return Err(BdevError::PoolSetting {
                pool: pool.name.clone(),
                reason: format!("{dataset:?} is not a dataset like tank/berth"),
                hint: "give the parent dataset with --dataset POOL/PARENT".to_owned(),
            });
        }
        Ok(dataset)
    }
}

/// A dataset of this pool named by a spec: `at` is its full name
/// (`PARENT/NAME` or `PARENT/NAME@SNAP`).
pub(super) type Target = Located<String>;

/// The volume's own dataset of a target: its name without `@SNAP`.
pub(super) trait VolumeDataset {
    fn dataset(&self) -> &str;
}

impl VolumeDataset for Target {
    fn dataset(&self) -> &str {
        self.at.split_once('@').map_or(&self.at, |(d, _)| d)
    }
}

impl Zfs {
    /// The volume or snapshot of this pool that `v` names; anything else is
    /// foreign, as are the temporary clones that mount snapshots (`NAME:SNAP`).
    pub(super) fn target(&self, v: &VolumeSpec) -> Result<Target> {
        let foreign = || BdevError::foreign(v, format!("the zfs pool under {}", self.parent));
        if v.backend() != NAME {
            return Err(foreign());
        }
        let dataset = ZfsSpec::from_spec(v)?.dataset;
        let rest = dataset
            .strip_prefix(&self.parent)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(foreign)?;
        let (name, snap) = match rest.split_once('@') {
            Some((n, s)) => (n, Some(s.to_owned())),
            None => (rest, None),
        };
        if name.is_empty() || name.contains('/') || name.contains(':') {
            return Err(foreign());
        }
        Ok(Located {
            name: name.to_owned(),
            snap,
            at: dataset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip() {
        for s in [
            "zfs:tank/berth/c1",
            "zfs:tank/berth/c1@snap1",
            "zfs:t\\:x/c",
        ] {
            let v: VolumeSpec = s.parse().unwrap();
            assert_eq!(ZfsSpec::canonical(&v).unwrap().to_string(), s);
        }
        let v = ZfsSpec::spec("tank/b:x/c1@s");
        assert_eq!(v.to_string(), "zfs:tank/b\\:x/c1@s");
        assert_eq!(
            ZfsSpec::from_spec(&v.to_string().parse().unwrap()).unwrap(),
            ZfsSpec {
                dataset: "tank/b:x/c1@s".to_owned()
            }
        );
    }

    #[test]
    fn bad_specs_are_rejected() {
        for (s, why) in [
            ("zfs:/abs", "dataset"),
            ("zfs:tank//x", "dataset"),
            ("zfs:tank/", "dataset"),
            ("zfs:", "exactly one"),
            ("zfs:a:b", "exactly one"),
        ] {
            let e = ZfsSpec::canonical(&s.parse().unwrap()).unwrap_err();
            assert!(matches!(e, BdevError::InvalidSpec { .. }), "{s}: {e}");
            assert!(e.to_string().contains(why), "{s}: {e}");
        }
        let e = ZfsSpec::from_spec(&"dir:/x".parse().unwrap()).unwrap_err();
        assert!(matches!(e, BdevError::ForeignVolume { .. }), "{e}");
    }

    #[test]
    fn the_parent_dataset_is_a_checked_setting() {
        let p = |ds: &str| PoolConfig::new("z", NAME).with_option("dataset", ds);
        assert_eq!(ZfsOptions::parent(&p("tank/berth")).unwrap(), "tank/berth");
        for bad in ["/tank", "tank//b", "tank@s", ""] {
            let e = ZfsOptions::parent(&p(bad)).unwrap_err();
            assert!(matches!(e, BdevError::PoolSetting { .. }), "{bad}: {e}");
        }
        let e = ZfsOptions::parent(&PoolConfig::new("z", NAME)).unwrap_err();
        assert!(e.to_string().contains("dataset"), "{e}");
        let e = ZfsOptions::parent(&p("tank/b").with_option("vg", "x")).unwrap_err();
        assert!(e.to_string().contains("vg"), "{e}");
    }
}
