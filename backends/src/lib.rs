//! berth-backends: one module per storage backend, and the registry that lists
//! them. Adding a backend is a new module plus one line in [`REGISTRY`] (see
//! README.md).
#![forbid(unsafe_code)]

use std::sync::Arc;

use berth_bdev::cmd::Runner;
use berth_bdev::{Backend, BdevError, PoolConfig, Registration, Result, VolumeSpec};

pub mod aufs;
mod blockfs;
pub mod btrfs;
pub mod dir;
mod layout;
mod lookup;
pub mod r#loop;
pub mod lvm;
pub mod overlay;
pub mod qcow2;
mod spec_shapes;
pub mod zfs;

/// Every backend berth knows, in the order help texts list them.
pub static REGISTRY: &[Registration] = &[
    dir::REGISTRATION,
    btrfs::REGISTRATION,
    zfs::REGISTRATION,
    lvm::REGISTRATION,
    r#loop::REGISTRATION,
    aufs::REGISTRATION,
    overlay::REGISTRATION,
    qcow2::REGISTRATION,
];

/// The registered names, for help texts and errors.
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|r| r.name).collect()
}

/// The backend called `name` (or one of its aliases).
pub fn lookup(name: &str) -> Result<&'static Registration> {
    REGISTRY
        .iter()
        .find(|r| r.name == name || r.aliases.contains(&name))
        .ok_or_else(|| BdevError::Parse {
            what: "backend",
            reason: format!(
                "{name:?} is not a backend; expected one of {}",
                names().join(", ")
            ),
        })
}

/// Opens the backend of `pool`. Nothing on the host is touched; call `probe` next.
pub fn open(pool: &PoolConfig, runner: Arc<dyn Runner>) -> Result<Box<dyn Backend>> {
    (lookup(&pool.backend)?.open)(pool, runner)
}

/// Parses a spec in LXC's string form and checks it with its backend: the
/// result names the backend by its registry name (`overlayfs:` becomes `overlay:`).
pub fn parse_spec(s: &str) -> Result<VolumeSpec> {
    let v: VolumeSpec = s.parse()?;
    let reg = lookup(v.backend()).map_err(|e| BdevError::InvalidSpec {
        spec: s.to_owned(),
        reason: e.to_string(),
    })?;
    (reg.check_spec)(&v)
}

/// Backends whose snapshot clones stack on plain trees, for refusal hints.
pub fn stackers() -> Vec<&'static str> {
    REGISTRY
        .iter()
        .filter(|r| r.stacks_on_trees)
        .map(|r| r.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_are_unique() {
        let mut all: Vec<&str> = REGISTRY
            .iter()
            .flat_map(|r| std::iter::once(r.name).chain(r.aliases.iter().copied()))
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "{all:?}");
    }

    #[test]
    fn lxc_style_specs_round_trip_through_their_backend() {
        for s in [
            "dir:/srv/c1",
            "btrfs:/var/lib/berth/c1",
            "zfs:tank/berth/c1@snap1",
            "lvm:/dev/vg0/c1",
            "loop:/p/c1.img",
            "aufs:/l1:/l2:/up",
            "overlay:/a:/b:/up",
            "overlay:/we\\:ird\\\\dir:/u\\:p",
            "qcow2:/p/c1.qcow2",
        ] {
            let v = parse_spec(s).unwrap();
            assert_eq!(v.to_string(), s);
        }
        assert_eq!(
            parse_spec("overlayfs:/l:/u").unwrap().to_string(),
            "overlay:/l:/u"
        );
    }

    #[test]
    fn bad_specs_are_rejected_with_a_reason() {
        for (s, why) in [
            ("nope:/x", "expected one of dir, btrfs"),
            ("dir", "BACKEND:LOCATION"),
            ("dir:relative", "absolute"),
            ("dir:/a/../b", ".."),
            ("dir:/a:/b", "exactly one"),
            ("overlay:/only", "LOWER"),
            ("zfs:/abs", "dataset"),
            ("zfs:tank//x", "dataset"),
            ("lvm:/dev/vg", "/dev/VG/LV"),
        ] {
            let e = parse_spec(s).unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }
}
