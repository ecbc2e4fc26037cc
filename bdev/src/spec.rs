//! Typed volume specs, parsed once, with an LXC-style string form for configs.
//!
//! The string form is `KIND:FIELD[:FIELD…]` (`dir:/var/lib/berth/c1`,
//! `overlay:/lower:/upper`, `zfs:tank/berth/c1`). Within a field, `\:` stands for
//! a colon and `\\` for a backslash, so any path round-trips.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::BdevError;

/// The eight storage backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Dir,
    Btrfs,
    Zfs,
    Lvm,
    Loop,
    Aufs,
    Overlay,
    Qcow2,
}

impl BackendKind {
    pub const ALL: [BackendKind; 8] = [
        BackendKind::Dir,
        BackendKind::Btrfs,
        BackendKind::Zfs,
        BackendKind::Lvm,
        BackendKind::Loop,
        BackendKind::Aufs,
        BackendKind::Overlay,
        BackendKind::Qcow2,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Dir => "dir",
            BackendKind::Btrfs => "btrfs",
            BackendKind::Zfs => "zfs",
            BackendKind::Lvm => "lvm",
            BackendKind::Loop => "loop",
            BackendKind::Aufs => "aufs",
            BackendKind::Overlay => "overlay",
            BackendKind::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = BdevError;
    fn from_str(s: &str) -> Result<Self, BdevError> {
        // LXC spells overlay both ways.
        let s = if s == "overlayfs" { "overlay" } else { s };
        BackendKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| BdevError::InvalidSpec {
                spec: s.to_owned(),
                reason: "unknown backend; expected one of dir, btrfs, zfs, lvm, loop, aufs, overlay, qcow2"
                    .to_owned(),
            })
    }
}

/// Where a volume's data lives. The mount point is never part of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VolumeSpec {
    /// A plain directory.
    Dir { path: PathBuf },
    /// A btrfs subvolume (or read-only snapshot).
    Btrfs { path: PathBuf },
    /// A ZFS dataset (`pool/a/b`) or snapshot (`pool/a/b@snap`).
    Zfs { dataset: String },
    /// An LVM logical volume.
    Lvm { vg: String, lv: String },
    /// An image file holding a filesystem.
    Loop { image: PathBuf },
    /// Read-only lower branches (topmost first) under a writable upper branch.
    Aufs {
        lowers: Vec<PathBuf>,
        upper: PathBuf,
    },
    /// Overlay layers (topmost lower first) under a writable upper directory; the work
    /// directory is the upper's sibling `work`.
    Overlay {
        lowers: Vec<PathBuf>,
        upper: PathBuf,
    },
    /// A qcow2 image (possibly with a backing chain) holding a filesystem.
    Qcow2 { image: PathBuf },
}

impl VolumeSpec {
    pub fn kind(&self) -> BackendKind {
        match self {
            VolumeSpec::Dir { .. } => BackendKind::Dir,
            VolumeSpec::Btrfs { .. } => BackendKind::Btrfs,
            VolumeSpec::Zfs { .. } => BackendKind::Zfs,
            VolumeSpec::Lvm { .. } => BackendKind::Lvm,
            VolumeSpec::Loop { .. } => BackendKind::Loop,
            VolumeSpec::Aufs { .. } => BackendKind::Aufs,
            VolumeSpec::Overlay { .. } => BackendKind::Overlay,
            VolumeSpec::Qcow2 { .. } => BackendKind::Qcow2,
        }
    }

    /// The directory that holds the root filesystem without mounting anything, for
    /// volumes that are plain directory trees (dir, btrfs). Union backends stack on it.
    pub fn tree_path(&self) -> Option<&Path> {
        match self {
            VolumeSpec::Dir { path } | VolumeSpec::Btrfs { path } => Some(path),
            _ => None,
        }
    }

    /// The plain directories that together hold the volume's files, readable
    /// without mounting: the tree itself (dir, btrfs) or every branch of a union
    /// (lowers, then upper). Empty for volumes inside a dataset or an image.
    pub fn branch_dirs(&self) -> Vec<&Path> {
        match self {
            VolumeSpec::Dir { path } | VolumeSpec::Btrfs { path } => vec![path],
            VolumeSpec::Aufs { lowers, upper } | VolumeSpec::Overlay { lowers, upper } => lowers
                .iter()
                .chain(std::iter::once(upper))
                .map(PathBuf::as_path)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The work directory of an overlay volume.
    pub fn overlay_workdir(upper: &Path) -> PathBuf {
        upper
            .parent()
            .map(|p| p.join("work"))
            .unwrap_or_else(|| PathBuf::from("work"))
    }

    fn fields(&self) -> Vec<String> {
        let p = |p: &Path| p.to_string_lossy().into_owned();
        match self {
            VolumeSpec::Dir { path } | VolumeSpec::Btrfs { path } => vec![p(path)],
            VolumeSpec::Loop { image } | VolumeSpec::Qcow2 { image } => vec![p(image)],
            VolumeSpec::Zfs { dataset } => vec![dataset.clone()],
            VolumeSpec::Lvm { vg, lv } => vec![format!("/dev/{vg}/{lv}")],
            VolumeSpec::Aufs { lowers, upper } | VolumeSpec::Overlay { lowers, upper } => lowers
                .iter()
                .chain(std::iter::once(upper))
                .map(|x| p(x))
                .collect(),
        }
    }
}

fn escape(field: &str) -> String {
    field.replace('\\', "\\\\").replace(':', "\\:")
}

fn split_fields(s: &str) -> Result<Vec<String>, String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('\\' | ':')) => out.last_mut().map(|f| f.push(e)).unwrap_or(()),
                _ => return Err("a backslash must be followed by ':' or '\\'".to_owned()),
            },
            ':' => out.push(String::new()),
            c => out.last_mut().map(|f| f.push(c)).unwrap_or(()),
        }
    }
    Ok(out)
}

impl fmt::Display for VolumeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind().as_str())?;
        for field in self.fields() {
            write!(f, ":{}", escape(&field))?;
        }
        Ok(())
    }
}

fn abs_path(spec: &str, field: &str) -> Result<PathBuf, BdevError> {
    let bad = |reason: &str| BdevError::InvalidSpec {
        spec: spec.to_owned(),
        reason: format!("{field:?}: {reason}"),
    };
    if field.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let path = Path::new(field);
    if !path.is_absolute() {
        return Err(bad("paths must be absolute"));
    }
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(bad("paths must not contain '..'"));
    }
    Ok(path.to_path_buf())
}

impl FromStr for VolumeSpec {
    type Err = BdevError;

    fn from_str(s: &str) -> Result<Self, BdevError> {
        let bad = |reason: String| BdevError::InvalidSpec {
            spec: s.to_owned(),
            reason,
        };
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| bad("expected KIND:LOCATION, e.g. dir:/var/lib/berth/c1".to_owned()))?;
        let kind: BackendKind = kind.parse()?;
        let fields = split_fields(rest).map_err(bad)?;
        let one = || -> Result<&String, BdevError> {
            match fields.as_slice() {
                [f] if !f.is_empty() => Ok(f),
                _ => Err(bad(format!("{kind} takes exactly one location"))),
            }
        };
        Ok(match kind {
            BackendKind::Dir => VolumeSpec::Dir {
                path: abs_path(s, one()?)?,
            },
            BackendKind::Btrfs => VolumeSpec::Btrfs {
                path: abs_path(s, one()?)?,
            },
            BackendKind::Loop => VolumeSpec::Loop {
                image: abs_path(s, one()?)?,
            },
            BackendKind::Qcow2 => VolumeSpec::Qcow2 {
                image: abs_path(s, one()?)?,
            },
            BackendKind::Zfs => {
                let ds = one()?;
                if ds.starts_with('/') || ds.contains('\0') || ds.split('/').any(|c| c.is_empty()) {
                    return Err(bad("expected a dataset like tank/berth/c1".to_owned()));
                }
                VolumeSpec::Zfs {
                    dataset: ds.clone(),
                }
            }
            BackendKind::Lvm => {
                let dev = one()?;
                let parts: Vec<&str> = dev
                    .strip_prefix("/dev/")
                    .unwrap_or(dev)
                    .split('/')
                    .collect();
                match parts.as_slice() {
                    [vg, lv] if !vg.is_empty() && !lv.is_empty() => VolumeSpec::Lvm {
                        vg: (*vg).to_owned(),
                        lv: (*lv).to_owned(),
                    },
                    _ => return Err(bad("expected /dev/VG/LV".to_owned())),
                }
            }
            BackendKind::Aufs | BackendKind::Overlay => {
                if fields.len() < 2 {
                    return Err(bad(format!("{kind} needs LOWER[:LOWER…]:UPPER")));
                }
                let mut paths = fields
                    .iter()
                    .map(|f| abs_path(s, f))
                    .collect::<Result<Vec<_>, _>>()?;
                let upper = paths.pop().ok_or_else(|| bad("no upper".to_owned()))?;
                if kind == BackendKind::Aufs {
                    VolumeSpec::Aufs {
                        lowers: paths,
                        upper,
                    }
                } else {
                    VolumeSpec::Overlay {
                        lowers: paths,
                        upper,
                    }
                }
            }
        })
    }
}

impl Serialize for VolumeSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VolumeSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(s: &str) -> VolumeSpec {
        let v: VolumeSpec = s.parse().unwrap();
        assert_eq!(v.to_string(), s);
        v
    }

    #[test]
    fn lxc_style_specs_round_trip() {
        assert_eq!(
            roundtrip("btrfs:/var/lib/berth/c1"),
            VolumeSpec::Btrfs {
                path: "/var/lib/berth/c1".into()
            }
        );
        roundtrip("dir:/srv/c1");
        roundtrip("zfs:tank/berth/c1@snap1");
        roundtrip("loop:/p/c1.img");
        roundtrip("qcow2:/p/c1.qcow2");
        assert_eq!(
            roundtrip("lvm:/dev/vg0/c1"),
            VolumeSpec::Lvm {
                vg: "vg0".into(),
                lv: "c1".into()
            }
        );
        let o = roundtrip("overlay:/a:/b:/up");
        assert_eq!(
            o,
            VolumeSpec::Overlay {
                lowers: vec!["/a".into(), "/b".into()],
                upper: "/up".into()
            }
        );
    }

    #[test]
    fn colons_and_backslashes_in_paths_are_escaped() {
        let v = VolumeSpec::Overlay {
            lowers: vec!["/we:ird\\dir".into()],
            upper: "/u:p".into(),
        };
        let s = v.to_string();
        assert_eq!(s, "overlay:/we\\:ird\\\\dir:/u\\:p");
        assert_eq!(s.parse::<VolumeSpec>().unwrap(), v);
    }

    #[test]
    fn overlayfs_is_accepted_as_overlay() {
        let v: VolumeSpec = "overlayfs:/l:/u".parse().unwrap();
        assert_eq!(v.kind(), BackendKind::Overlay);
    }

    #[test]
    fn bad_specs_are_rejected_with_a_reason() {
        for (s, why) in [
            ("nope:/x", "unknown backend"),
            ("dir", "KIND:LOCATION"),
            ("dir:relative", "absolute"),
            ("dir:/a/../b", ".."),
            ("dir:/a:/b", "exactly one"),
            ("overlay:/only", "LOWER"),
            ("zfs:/abs", "dataset"),
            ("zfs:tank//x", "dataset"),
            ("lvm:/dev/vg", "/dev/VG/LV"),
            ("dir:/a\\b", "backslash"),
        ] {
            let e = s.parse::<VolumeSpec>().unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn serde_uses_the_string_form() {
        #[derive(Serialize, Deserialize)]
        struct C {
            v: VolumeSpec,
        }
        let t = toml::to_string(&C {
            v: "dir:/x".parse().unwrap(),
        })
        .unwrap();
        assert_eq!(t.trim(), "v = \"dir:/x\"");
        let c: C = toml::from_str(&t).unwrap();
        assert_eq!(c.v.kind(), BackendKind::Dir);
    }
}
