//! The one layout of a path-based pool, and the one "volume or snapshot" locator.
//!
//! `ROOT/NAME[SUFFIX]` holds a volume and `ROOT/.snapshots/NAME/SNAP[SUFFIX]` its
//! snapshots, as a directory or a file (`Entry`). Every path-based backend asks
//! this type where things go and whether a path is its own, so the rules (valid
//! names only, nothing outside the pool, snapshots read-only) are written once.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use berth_bdev::names::validate_name;
use berth_bdev::{BdevError, Result, VolumeSpec};

use crate::lookup::{self, Entry};

/// A volume, or one of its snapshots, found from a spec: where it is (`at`: a
/// path, a dataset name) and its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located<T> {
    pub at: T,
    pub name: String,
    pub snap: Option<String>,
}

impl<T> Located<T> {
    /// `NAME`, or `NAME@SNAP` for a snapshot.
    pub fn key(&self) -> String {
        match &self.snap {
            Some(s) => format!("{}@{s}", self.name),
            None => self.name.clone(),
        }
    }

    pub fn is_snapshot(&self) -> bool {
        self.snap.is_some()
    }

    /// Refuses `op` on a snapshot, which is read-only; `hint` says what to do.
    pub fn refuse_snapshot(
        &self,
        v: &VolumeSpec,
        op: &'static str,
        hint: &'static str,
    ) -> Result<()> {
        if self.is_snapshot() {
            return Err(BdevError::SnapshotReadOnly {
                spec: v.to_string(),
                op,
                hint,
            });
        }
        Ok(())
    }
}

/// Where a path-based pool keeps its volumes and snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PoolDir {
    root: PathBuf,
    entry: Entry,
    suffix: &'static str,
}

const SNAPSHOTS: &str = ".snapshots";

impl PoolDir {
    /// A pool at `root` whose volumes are entries of kind `entry` named
    /// `NAME` + `suffix`.
    pub fn new(root: &Path, entry: Entry, suffix: &'static str) -> Self {
        PoolDir {
            root: root.to_path_buf(),
            entry,
            suffix,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn volume(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}{}", self.suffix))
    }

    /// `ROOT/.snapshots`.
    pub fn snapshots_root(&self) -> PathBuf {
        self.root.join(SNAPSHOTS)
    }

    /// The directory holding the snapshots of volume `name`.
    pub fn snapshots_of(&self, name: &str) -> PathBuf {
        self.snapshots_root().join(name)
    }

    pub fn snapshot(&self, name: &str, snap: &str) -> PathBuf {
        self.snapshots_of(name)
            .join(format!("{snap}{}", self.suffix))
    }

    /// Which volume or snapshot of this pool `path` is, by its place alone.
    pub fn locate(&self, path: &Path) -> Option<Located<PathBuf>> {
        let own = |p: &Path| -> Option<String> {
            let n = p.file_name()?.to_str()?.strip_suffix(self.suffix)?;
            validate_name(n).ok().map(|()| n.to_owned())
        };
        let parent = path.parent()?;
        if parent == self.root {
            return Some(Located {
                at: path.to_path_buf(),
                name: own(path)?,
                snap: None,
            });
        }
        if parent.parent()? != self.snapshots_root() {
            return None;
        }
        let name = parent.file_name().and_then(OsStr::to_str)?;
        validate_name(name).ok()?;
        Some(Located {
            at: path.to_path_buf(),
            name: name.to_owned(),
            snap: Some(own(path)?),
        })
    }

    /// Like `locate`, for the path a spec `v` names; any other path is refused as
    /// not this pool's.
    pub fn locate_spec(&self, v: &VolumeSpec, path: &Path) -> Result<Located<PathBuf>> {
        self.locate(path).ok_or_else(|| {
            BdevError::foreign(
                v,
                format!("the {} pool at {}", v.backend(), self.root.display()),
            )
        })
    }

    /// The volume names in the pool, sorted (see `lookup::names_in`).
    pub fn volume_names(&self) -> Result<Vec<String>> {
        lookup::names_in(&self.root, self.entry, self.suffix)
    }

    /// The snapshot names of volume `name`, sorted.
    pub fn snapshot_names(&self, name: &str) -> Result<Vec<String>> {
        validate_name(name)?;
        lookup::names_in(&self.snapshots_of(name), self.entry, self.suffix)
    }

    /// The path of volume `name` if the pool holds it.
    pub fn volume_named(&self, name: &str) -> Result<Option<PathBuf>> {
        validate_name(name)?;
        let p = self.volume(name);
        Ok(lookup::is_entry(&p, self.entry)?.then_some(p))
    }

    /// The path of snapshot `snap` of volume `name` if the pool holds it.
    pub fn snapshot_named(&self, name: &str, snap: &str) -> Result<Option<PathBuf>> {
        validate_name(name)?;
        validate_name(snap)?;
        let p = self.snapshot(name, snap);
        Ok(lookup::is_entry(&p, self.entry)?.then_some(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_located_by_place_and_name() {
        let d = PoolDir::new(Path::new("/p"), Entry::File, ".img");
        assert_eq!(d.volume("c1"), Path::new("/p/c1.img"));
        assert_eq!(d.snapshot("c1", "s1"), Path::new("/p/.snapshots/c1/s1.img"));
        let v = d.locate(Path::new("/p/c1.img")).unwrap();
        assert_eq!((v.name.as_str(), v.snap.as_deref()), ("c1", None));
        assert_eq!(v.key(), "c1");
        let s = d.locate(Path::new("/p/.snapshots/c1/s1.img")).unwrap();
        assert_eq!(s.key(), "c1@s1");
        for foreign in [
            "/q/c1.img",
            "/p/c1.qcow2",
            "/p/sub/c1.img",
            "/p/.snapshots/c1/x/s1.img",
            "/p/.hidden.img",
            "/p",
            "/",
        ] {
            assert!(d.locate(Path::new(foreign)).is_none(), "{foreign}");
        }
    }

    #[test]
    fn snapshots_refuse_changes() {
        let d = PoolDir::new(Path::new("/p"), Entry::Dir, "");
        let v = VolumeSpec::new("t", vec!["/p/.snapshots/c/s".into()]);
        let s = d.locate_spec(&v, Path::new("/p/.snapshots/c/s")).unwrap();
        let e = s.refuse_snapshot(&v, "resized", "clone it").unwrap_err();
        assert!(matches!(e, BdevError::SnapshotReadOnly { .. }), "{e}");
        let e = d.locate_spec(&v, Path::new("/elsewhere/c")).unwrap_err();
        assert!(e.to_string().contains("/p"), "{e}");
    }

    #[test]
    fn names_are_listed_and_found() {
        let t = tempfile::tempdir().unwrap();
        let d = PoolDir::new(t.path(), Entry::Dir, "");
        std::fs::create_dir_all(d.volume("a")).unwrap();
        std::fs::create_dir_all(d.snapshot("a", "s")).unwrap();
        assert_eq!(d.volume_names().unwrap(), vec!["a"]);
        assert_eq!(d.snapshot_names("a").unwrap(), vec!["s"]);
        assert_eq!(d.volume_named("a").unwrap(), Some(d.volume("a")));
        assert_eq!(d.volume_named("b").unwrap(), None);
        assert!(d.snapshot_named("a", "s").unwrap().is_some());
        assert!(d.volume_named("../x").is_err());
    }
}
