//! dir: each volume is a plain directory under the pool; the reference backend.
//!
//! Layout: `POOL/NAME` is the root filesystem, `POOL/.snapshots/NAME/SNAP` a
//! snapshot (a full copy; reflinked where the filesystem can).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_bdev::cmd::Runner;
use berth_bdev::copy::{copy_tree, NoProgress};
use berth_bdev::delete::remove_tree;
use berth_bdev::fsutil::{allocated_bytes, claim_dir, create_dir_all, require_host};
use berth_bdev::mount::{self, MountGuard};
use berth_bdev::registry::PathUse;
use berth_bdev::{
    Backend, BdevError, Caps, CreateOpts, PoolConfig, Registration, Result, Revert, SpecForm,
    Usage, UsageKind, VolumeSpec,
};

use crate::layout::{Located, PoolDir};
use crate::lookup::{self, Entry, NoOptions};

pub const NAME: &str = "dir";

pub const REGISTRATION: Registration = Registration {
    name: NAME,
    aliases: &[],
    summary: "plain directories; snapshots are full copies, reflinked where the filesystem can",
    path: PathUse::Volumes,
    pool_options: &[],
    open,
    check_spec: <DirSpec as SpecForm>::canonical,
    stacks_on_trees: false,
};

crate::spec_shapes::path_spec!(
    /// A dir volume or snapshot: `dir:PATH`.
    DirSpec { path },
    NAME
);

pub fn open(pool: &PoolConfig, _runner: Arc<dyn Runner>) -> Result<Box<dyn Backend>> {
    Ok(Box::new(Dir::new(pool)?))
}

#[derive(Debug, Clone)]
pub struct Dir {
    layout: PoolDir,
}

impl Dir {
    fn new(pool: &PoolConfig) -> Result<Self> {
        pool.options::<NoOptions>()?;
        Ok(Dir {
            layout: PoolDir::new(pool.dir()?, Entry::Dir, ""),
        })
    }

    fn root(&self) -> &Path {
        self.layout.root()
    }

    /// The volume or snapshot of this pool that `v` names.
    fn locate(&self, v: &VolumeSpec) -> Result<Located<PathBuf>> {
        if v.backend() != NAME {
            let owner = format!("the {NAME} pool at {}", self.root().display());
            return Err(BdevError::foreign(v, owner));
        }
        self.layout.locate_spec(v, &DirSpec::from_spec(v)?.path)
    }

    /// Removes the tree of `v`, or warns that it is gone.
    fn remove(&self, v: &VolumeSpec, path: &Path) -> Result<()> {
        if !lookup::exists(path)? {
            lookup::already_gone(v);
            return Ok(());
        }
        remove_tree(path, self.root())
    }
}

impl Backend for Dir {
    fn name(&self) -> &'static str {
        NAME
    }

    fn caps(&self) -> Caps {
        Caps {
            snapshot: true,
            plain_tree: true,
            ..Caps::default()
        }
    }

    fn probe(&self) -> Result<()> {
        require_host(NAME, &self.caps())?;
        create_dir_all(self.root())
    }

    fn tree_path(&self, v: &VolumeSpec) -> Option<PathBuf> {
        self.locate(v).ok().map(|l| l.at)
    }

    fn create(&self, name: &str, _opts: &CreateOpts, rv: &mut Revert) -> Result<VolumeSpec> {
        let path = self.layout.volume(name);
        claim_dir(&path, self.root(), rv)?;
        Ok(DirSpec::spec(path))
    }

    fn mount(&self, v: &VolumeSpec, at: &Path, read_only: bool) -> Result<MountGuard> {
        mount::bind(&self.locate(v)?.at, at, read_only)?;
        Ok(MountGuard::mounted(at))
    }

    fn destroy(&self, v: &VolumeSpec) -> Result<()> {
        self.remove(v, &self.locate(v)?.at)
    }

    fn volume_names(&self) -> Result<Vec<String>> {
        self.layout.volume_names()
    }

    fn volume_named(&self, name: &str) -> Result<Option<VolumeSpec>> {
        Ok(self.layout.volume_named(name)?.map(DirSpec::spec))
    }

    fn snapshot_names(&self, name: &str) -> Result<Vec<String>> {
        self.layout.snapshot_names(name)
    }

    fn snapshot_named(&self, name: &str, snap: &str) -> Result<Option<VolumeSpec>> {
        Ok(self.layout.snapshot_named(name, snap)?.map(DirSpec::spec))
    }

    fn usage(&self, v: &VolumeSpec) -> Result<Usage> {
        Ok(Usage {
            used_bytes: allocated_bytes(&self.locate(v)?.at)?,
            kind: UsageKind::Allocated,
            limit_bytes: None,
            note: None,
        })
    }

    fn snapshot(
        &self,
        v: &VolumeSpec,
        name: &str,
        snap: &str,
        rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        let src = self.locate(v)?.at;
        let path = self.layout.snapshot(name, snap);
        claim_dir(&path, self.root(), rv)?;
        copy_tree(&src, &path, &NoProgress)?;
        Ok(DirSpec::spec(path))
    }

    fn destroy_snapshot(&self, snap: &VolumeSpec) -> Result<()> {
        let path = self.locate(snap)?.at;
        self.remove(snap, &path)?;
        // Drop the per-volume snapshot directory once it is empty.
        if let Some(parent) = path.parent() {
            let _ = fs::remove_dir(parent);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_bdev::cmd::ScriptedRunner;

    fn parse(s: &str) -> Result<VolumeSpec> {
        DirSpec::canonical(&s.parse()?)
    }

    fn backend(root: &Path) -> Box<dyn Backend> {
        let pool = PoolConfig::new("p", NAME).with_path(root);
        open(&pool, Arc::new(ScriptedRunner::new())).unwrap()
    }

    #[test]
    fn specs_round_trip_with_escapes() {
        for s in ["dir:/srv/c1", "dir:/we\\:ird\\\\dir/c1"] {
            assert_eq!(parse(s).unwrap().to_string(), s);
        }
        let v = DirSpec::spec("/a:b");
        assert_eq!(v.to_string(), "dir:/a\\:b");
        assert_eq!(DirSpec::from_spec(&v).unwrap().path, Path::new("/a:b"));
    }

    #[test]
    fn bad_specs_are_rejected_with_a_reason() {
        for (s, why) in [
            ("dir:relative", "absolute"),
            ("dir:/a/../b", ".."),
            ("dir:/a:/b", "exactly one"),
            ("dir:", "exactly one"),
        ] {
            let e = parse(s).unwrap_err();
            assert!(matches!(e, BdevError::InvalidSpec { .. }), "{s}: {e}");
            assert!(e.to_string().contains(why), "{s}: {e}");
        }
        let e = DirSpec::from_spec(&"other:/p/c1".parse().unwrap()).unwrap_err();
        assert!(matches!(e, BdevError::ForeignVolume { .. }), "{e}");
    }

    #[test]
    fn only_this_pools_volumes_and_snapshots_are_its_own() {
        let b = backend(Path::new("/pool"));
        assert_eq!(
            b.tree_path(&DirSpec::spec("/pool/c1")),
            Some(PathBuf::from("/pool/c1"))
        );
        assert_eq!(
            b.tree_path(&DirSpec::spec("/pool/.snapshots/c1/s1")),
            Some(PathBuf::from("/pool/.snapshots/c1/s1"))
        );
        for foreign in [
            "dir:/elsewhere/c1",
            "dir:/pool",
            "dir:/pool/a/b",
            "other:/pool/c1",
        ] {
            let v: VolumeSpec = foreign.parse().unwrap();
            assert_eq!(b.tree_path(&v), None, "{foreign}");
            let e = b.destroy(&v).unwrap_err();
            assert!(matches!(e, BdevError::ForeignVolume { .. }), "{e}");
            assert!(e.to_string().contains("/pool"), "{e}");
        }
    }

    #[test]
    fn pool_settings_are_checked() {
        let pool = PoolConfig::new("p", NAME)
            .with_path("/pool")
            .with_option("dataset", "x");
        let e = open(&pool, Arc::new(ScriptedRunner::new()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("dataset"), "{e}");
        let e = open(&PoolConfig::new("p", NAME), Arc::new(ScriptedRunner::new()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--path"), "{e}");
    }

    #[test]
    fn volumes_and_snapshots_are_trees() {
        let d = tempfile::tempdir().unwrap();
        let b = backend(d.path());
        let mut rv = Revert::new();
        let v = b.create("c1", &CreateOpts::default(), &mut rv).unwrap();
        rv.commit();
        fs::write(d.path().join("c1/f"), "x").unwrap();
        let mut rv = Revert::new();
        let s = b.snapshot(&v, "c1", "s1", &mut rv).unwrap();
        rv.commit();
        assert_eq!(b.volume_named("c1").unwrap(), Some(v.clone()));
        assert_eq!(b.snapshot_named("c1", "s1").unwrap(), Some(s.clone()));
        assert_eq!(b.snapshot_names("c1").unwrap(), ["s1"]);
        let tree = b.tree_path(&s).unwrap();
        assert_eq!(fs::read_to_string(tree.join("f")).unwrap(), "x");
        b.destroy_snapshot(&s).unwrap();
        assert!(!d.path().join(".snapshots/c1").exists());
        b.destroy(&v).unwrap();
        b.destroy(&v).unwrap();
        assert!(b.volume_names().unwrap().is_empty());
    }
}
