//! The lvm spec form (`lvm:/dev/VG/LV`), the pool settings, and finding which
//! volume or snapshot of the pool a spec names.

use berth_bdev::spec::one_field;
use berth_bdev::{BdevError, PoolConfig, Result, SpecForm, VolumeSpec};
use serde::{Deserialize, Deserializer};

use super::{Lvm, NAME, SNAP_SEP};
use crate::layout::Located;

/// An lvm volume or snapshot: `lvm:/dev/VG/LV` (`lvm:VG/LV` is read too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvmSpec {
    pub vg: String,
    pub lv: String,
}

impl LvmSpec {
    /// The spec of logical volume `lv` in volume group `vg`.
    pub fn spec(vg: &str, lv: &str) -> VolumeSpec {
        LvmSpec {
            vg: vg.to_owned(),
            lv: lv.to_owned(),
        }
        .to_spec()
    }
}

impl SpecForm for LvmSpec {
    const BACKEND: &'static str = NAME;

    fn from_fields(fields: &[String]) -> std::result::Result<Self, String> {
        let dev = one_field(fields)?;
        let parts: Vec<&str> = dev
            .strip_prefix("/dev/")
            .unwrap_or(dev)
            .split('/')
            .collect();
        match parts.as_slice() {
            [vg, lv] if !vg.is_empty() && !lv.is_empty() => Ok(LvmSpec {
                vg: (*vg).to_owned(),
                lv: (*lv).to_owned(),
            }),
            _ => Err("expected /dev/VG/LV".to_owned()),
        }
    }

    fn to_fields(&self) -> Vec<String> {
        vec![format!("/dev/{}/{}", self.vg, self.lv)]
    }
}

/// The settings of an lvm pool (`berth pool add --vg [--thinpool]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LvmOptions {
    pub vg: String,
    #[serde(default, deserialize_with = "some_string")]
    pub thinpool: Option<String>,
}

/// A present option: pool options are plain strings, which serde does not read
/// as an `Option` by itself.
fn some_string<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// Whether `name` is a valid VG or LV name for LVM (`lvm(8)`: `[a-zA-Z0-9+_.-]`,
/// not starting with `-`, not `.` or `..`).
pub(super) fn lvm_name_ok(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '_' | '.' | '-'))
}

impl LvmOptions {
    /// The pool's settings, with valid LVM names.
    pub(super) fn of(pool: &PoolConfig) -> Result<Self> {
        let o: LvmOptions = pool.options()?;
        for n in std::iter::once(&o.vg).chain(o.thinpool.iter()) {
            if !lvm_name_ok(n) {
                return Err(BdevError::PoolSetting {
                    pool: pool.name.clone(),
                    reason: format!(
                        "{n:?} is not a valid LVM name (letters, digits, '+', '_', '.', '-')"
                    ),
                    hint: "give the names of an existing volume group and thin pool".to_owned(),
                });
            }
        }
        Ok(o)
    }
}

impl Lvm {
    /// The LV of this pool's volume group that `v` names (`at`), read as volume
    /// `NAME` or snapshot `NAME+SNAP`.
    pub(super) fn locate(&self, v: &VolumeSpec) -> Result<Located<String>> {
        let foreign =
            || BdevError::foreign(v, format!("the lvm pool in volume group {:?}", self.vg));
        if v.backend() != NAME {
            return Err(foreign());
        }
        let LvmSpec { vg, lv } = LvmSpec::from_spec(v)?;
        if vg != self.vg {
            return Err(foreign());
        }
        let (name, snap) = match lv.split_once(SNAP_SEP) {
            Some((n, s)) => (n.to_owned(), Some(s.to_owned())),
            None => (lv.clone(), None),
        };
        Ok(Located { at: lv, name, snap })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip() {
        let v: VolumeSpec = "lvm:/dev/vg0/c1".parse().unwrap();
        assert_eq!(
            LvmSpec::from_spec(&v).unwrap(),
            LvmSpec {
                vg: "vg0".into(),
                lv: "c1".into()
            }
        );
        assert_eq!(
            LvmSpec::canonical(&v).unwrap().to_string(),
            "lvm:/dev/vg0/c1"
        );
        // Without /dev/ it reads the same and is written canonically.
        let short: VolumeSpec = "lvm:vg0/c1+s1".parse().unwrap();
        assert_eq!(
            LvmSpec::canonical(&short).unwrap(),
            LvmSpec::spec("vg0", "c1+s1")
        );
        assert_eq!(
            LvmSpec::spec("vg0", "c1+s1").to_string(),
            "lvm:/dev/vg0/c1+s1"
        );
    }

    #[test]
    fn bad_specs_are_rejected() {
        for (s, why) in [
            ("lvm:/dev/vg", "/dev/VG/LV"),
            ("lvm:/dev/vg/", "/dev/VG/LV"),
            ("lvm:/dev/a/b/c", "/dev/VG/LV"),
            ("lvm:vg", "/dev/VG/LV"),
            ("lvm:", "exactly one"),
            ("lvm:/dev/vg/a:/dev/vg/b", "exactly one"),
        ] {
            let e = LvmSpec::canonical(&s.parse().unwrap()).unwrap_err();
            assert!(matches!(e, BdevError::InvalidSpec { .. }), "{s}: {e}");
            assert!(e.to_string().contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn settings_are_named_and_checked() {
        let p = PoolConfig::new("l", NAME)
            .with_option("vg", "vg0")
            .with_option("thinpool", "pool");
        let o = LvmOptions::of(&p).unwrap();
        assert_eq!(
            (o.vg.as_str(), o.thinpool.as_deref()),
            ("vg0", Some("pool"))
        );
        let o = LvmOptions::of(&PoolConfig::new("l", NAME).with_option("vg", "vg0")).unwrap();
        assert_eq!(o.thinpool, None);
        for p in [
            PoolConfig::new("l", NAME),
            PoolConfig::new("l", NAME).with_option("vg", "bad/vg"),
            PoolConfig::new("l", NAME)
                .with_option("vg", "vg0")
                .with_option("thinpool", "-x"),
            PoolConfig::new("l", NAME)
                .with_option("vg", "vg0")
                .with_option("dataset", "t"),
        ] {
            let e = LvmOptions::of(&p).unwrap_err();
            assert!(matches!(e, BdevError::PoolSetting { .. }), "{e}");
        }
    }
}
