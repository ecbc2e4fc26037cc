//! Where a qcow2 pool keeps things, and who depends on whom: image paths, the
//! `.run` entries of mounts, backing-file references read from image headers, and
//! finding and removing images by name.

use std::ffi::OsStr;
use std::fs;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use berth_bdev::names::validate_name;
use berth_bdev::{BdevError, Result, SpecForm, VolumeSpec};
use tracing::{debug, warn};

use super::{export, parse, Qcow2, Qcow2Spec, EXT, NAME};
use crate::layout::Located;
use crate::lookup;

impl Qcow2 {
    pub(super) fn root(&self) -> &Path {
        self.dir.root()
    }

    pub(super) fn image_of(&self, name: &str) -> PathBuf {
        self.dir.volume(name)
    }

    pub(super) fn snapshot_dir(&self, name: &str) -> PathBuf {
        self.dir.snapshots_of(name)
    }

    /// Where `snapshot` copies a snapshot before renaming it into place.
    pub(super) fn snapshot_tmp(&self, name: &str, snap: &str) -> PathBuf {
        self.snapshot_dir(name).join(format!(".{snap}.{EXT}.tmp"))
    }

    pub(super) fn run_root(&self) -> PathBuf {
        self.root().join(".run")
    }

    pub(super) fn run_dir(&self, key: &str) -> PathBuf {
        self.run_root().join(key)
    }

    /// The image of this pool that `v` names: a volume or a snapshot.
    pub(super) fn locate(&self, v: &VolumeSpec) -> Result<Located<PathBuf>> {
        if v.backend() != NAME {
            let owner = format!("the {NAME} pool at {}", self.root().display());
            return Err(BdevError::foreign(v, owner));
        }
        self.dir.locate_spec(v, &Qcow2Spec::from_spec(v)?.image)
    }

    /// Refuses while `loc` is mounted (writable only, if `writable_only`);
    /// `hint` says what to do.
    pub(super) fn refuse_if_mounted(
        &self,
        v: &VolumeSpec,
        loc: &Located<PathBuf>,
        hint: &'static str,
        writable_only: bool,
    ) -> Result<()> {
        let run = self.run_dir(&loc.key());
        if let Some(pid) = export::live_daemon(&run) {
            // What a berth killed while growing the volume left goes first.
            if export::unmount_dead_grows(&run)? && export::clean_if_stale(&run)? {
                return Ok(());
            }
            if !writable_only || export::is_writable(&run) {
                debug!(volume = %v, pid, "mounted through this qemu-storage-daemon");
                return Err(BdevError::VolumeBusy {
                    spec: v.to_string(),
                    state: if writable_only {
                        "mounted read-write"
                    } else {
                        "mounted"
                    },
                    hint,
                });
            }
        }
        Ok(())
    }

    /// Every image of the pool: volumes and snapshots.
    pub(super) fn images(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut scan = |dir: &Path| -> Result<()> {
            let rd = match fs::read_dir(dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(BdevError::io("read directory", dir)(e)),
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.extension() == Some(OsStr::new(EXT)) && p.is_file() {
                    out.push(p);
                }
            }
            Ok(())
        };
        scan(self.root())?;
        let snaps = self.dir.snapshots_root();
        if let Ok(rd) = fs::read_dir(&snaps) {
            for e in rd.flatten() {
                scan(&e.path())?;
            }
        }
        Ok(out)
    }

    /// Images of the pool (other than `targets`) backed by one of `targets`.
    /// Clones in other pools are the store's to know.
    pub(super) fn dependents(&self, targets: &[PathBuf]) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for img in self.images()? {
            if targets.contains(&img) {
                continue;
            }
            let backing = match read_backing(&img) {
                Ok(b) => b,
                // qemu cannot open it either (a create cut short), so it reads
                // from nothing; it must not block removing other images.
                Err(e) => {
                    warn!(image = %img.display(), error = %e, "not a readable qcow2 image");
                    continue;
                }
            };
            if backing.is_some_and(|b| targets.contains(&b)) {
                out.push(img);
            }
        }
        Ok(out)
    }

    pub(super) fn refuse_if_depended_on(&self, what: &Path, targets: &[PathBuf]) -> Result<()> {
        let deps = self.dependents(targets)?;
        if deps.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = deps.iter().map(|d| d.display().to_string()).collect();
        Err(BdevError::DeleteRefused {
            path: what.to_path_buf(),
            reason: format!(
                "images use it as their backing file ({}); destroy them first",
                names.join(", ")
            ),
        })
    }
}

impl Qcow2 {
    pub(super) fn list_volumes(&self) -> Result<Vec<String>> {
        self.dir.volume_names()
    }

    pub(super) fn find_volume(&self, name: &str) -> Result<Option<VolumeSpec>> {
        Ok(self.dir.volume_named(name)?.map(Qcow2Spec::spec))
    }

    /// Snapshots of `name`, including one whose copy a crash cut short.
    pub(super) fn list_snapshots(&self, name: &str) -> Result<Vec<String>> {
        let mut names = self.dir.snapshot_names(name)?;
        let dir = self.snapshot_dir(name);
        // Temporary copies are dot-files, which `names_in` skips.
        let tmp_suffix = format!(".{EXT}.tmp");
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let file = e.file_name();
            let partial = file
                .to_str()
                .and_then(|f| f.strip_prefix('.')?.strip_suffix(&tmp_suffix))
                .filter(|s| validate_name(s).is_ok() && !names.iter().any(|n| n == s));
            if let Some(s) = partial {
                names.push(s.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Snapshot `snap` of `name`; a copy cut short is found under the name it
    /// would have had, so that `destroy_snapshot` removes it.
    pub(super) fn find_snapshot(&self, name: &str, snap: &str) -> Result<Option<VolumeSpec>> {
        let found = self.dir.snapshot_named(name, snap)?.is_some()
            || lookup::is_entry(&self.snapshot_tmp(name, snap), lookup::Entry::File)?;
        Ok(found.then(|| Qcow2Spec::spec(self.dir.snapshot(name, snap))))
    }

    /// Removes the image of `v` with whatever its mounts left (a stopped daemon's
    /// export, or a live daemon nobody uses), and a snapshot's unfinished copy.
    /// Refuses while it is mounted or other images back on it; an image already
    /// gone is a warning.
    pub(super) fn remove_loc(&self, v: &VolumeSpec, loc: &Located<PathBuf>) -> Result<()> {
        let run = self.run_dir(&loc.key());
        if lookup::exists(&run)? && !export::clean_if_stale(&run)? {
            let pid = export::live_daemon(&run).unwrap_or_default();
            debug!(volume = %v, pid, "mounted through this qemu-storage-daemon");
            return Err(BdevError::VolumeBusy {
                spec: v.to_string(),
                state: "mounted",
                hint: "unmount it before destroying it",
            });
        }
        if let Some(snap) = &loc.snap {
            remove_image(&self.snapshot_tmp(&loc.name, snap))?;
        }
        if lookup::exists(&loc.at)? {
            self.refuse_if_depended_on(&loc.at, std::slice::from_ref(&loc.at))?;
            remove_image(&loc.at)?;
        } else {
            lookup::already_gone(v);
        }
        export::remove_run_root_if_empty(&self.run_root());
        Ok(())
    }
}

/// The `.run` entry of any image laid out as a qcow2 pool does it (`POOL/NAME.qcow2`
/// or `POOL/.snapshots/NAME/SNAP.qcow2`), possibly of another pool.
pub(super) fn run_dir_for(image: &Path) -> PathBuf {
    let stem = image
        .file_stem()
        .and_then(OsStr::to_str)
        .unwrap_or_default();
    let parent = image.parent().unwrap_or(Path::new("/"));
    let snaps = parent
        .parent()
        .filter(|g| g.file_name() == Some(OsStr::new(".snapshots")));
    match (snaps, parent.file_name().and_then(OsStr::to_str)) {
        (Some(s), Some(name)) => s
            .parent()
            .unwrap_or(Path::new("/"))
            .join(".run")
            .join(format!("{name}@{stem}")),
        _ => parent.join(".run").join(stem),
    }
}

/// The backing file an image names in its header, if any.
pub(super) fn read_backing(image: &Path) -> Result<Option<PathBuf>> {
    let mut f = fs::File::open(image).map_err(BdevError::io("open", image))?;
    let mut header = [0u8; parse::HEADER_LEN];
    f.read_exact(&mut header)
        .map_err(BdevError::io("read header of", image))?;
    let Some((off, len)) = parse::backing_location(&header)? else {
        return Ok(None);
    };
    let mut name = vec![0u8; len];
    f.seek(SeekFrom::Start(off))
        .and_then(|_| f.read_exact(&mut name))
        .map_err(BdevError::io("read backing name of", image))?;
    Ok(Some(parse::backing_path(image, &name)))
}

pub(super) fn remove_image(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(BdevError::io("remove", p)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_bdev::cmd::ScriptedRunner;
    use berth_bdev::PoolConfig;
    use std::sync::Arc;

    fn q() -> Qcow2 {
        let pool = PoolConfig::new("t", NAME).with_path("/p");
        Qcow2::new(&pool, Arc::new(ScriptedRunner::new())).unwrap()
    }

    fn spec(p: &str) -> VolumeSpec {
        Qcow2Spec::spec(p)
    }

    #[test]
    fn images_are_located_in_the_pool_layout() {
        let q = q();
        let v = q.locate(&spec("/p/c1.qcow2")).unwrap();
        assert_eq!(
            (v.name.as_str(), v.snap.as_deref(), v.key()),
            ("c1", None, "c1".to_owned())
        );
        let s = q.locate(&spec("/p/.snapshots/c1/s1.qcow2")).unwrap();
        assert_eq!(
            (s.name.as_str(), s.snap.as_deref(), s.key()),
            ("c1", Some("s1"), "c1@s1".to_owned())
        );
        for bad in [
            "/q/c1.qcow2",
            "/p/c1.img",
            "/p/sub/c1.qcow2",
            "/p/.snapshots/c1/x/s1.qcow2",
            "/p/.run/c1.qcow2",
            "/p/.hidden.qcow2",
        ] {
            let e = q.locate(&spec(bad)).unwrap_err();
            assert!(matches!(e, BdevError::ForeignVolume { .. }), "{bad}: {e}");
        }
        let e = q.locate(&"dir:/p/c1".parse().unwrap()).unwrap_err();
        assert!(matches!(e, BdevError::ForeignVolume { .. }), "{e}");
    }

    #[test]
    fn backing_files_are_found_from_the_header() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("c.qcow2");
        let name = b"/pool/base.qcow2";
        let mut bytes = b"QFI\xfb\0\0\0\x03".to_vec();
        bytes.extend_from_slice(&64u64.to_be_bytes());
        bytes.extend_from_slice(&(name.len() as u32).to_be_bytes());
        bytes.resize(64, 0);
        bytes.extend_from_slice(name);
        fs::write(&img, &bytes).unwrap();
        assert_eq!(
            read_backing(&img).unwrap(),
            Some(PathBuf::from("/pool/base.qcow2"))
        );
        bytes[8..20].fill(0);
        fs::write(&img, &bytes).unwrap();
        assert_eq!(read_backing(&img).unwrap(), None);
    }

    #[test]
    fn run_dirs_follow_the_layout_of_any_pool() {
        assert_eq!(
            run_dir_for(Path::new("/o/c1.qcow2")),
            PathBuf::from("/o/.run/c1")
        );
        assert_eq!(
            run_dir_for(Path::new("/o/.snapshots/c1/s1.qcow2")),
            PathBuf::from("/o/.run/c1@s1")
        );
        let q = q();
        for p in ["/p/c1.qcow2", "/p/.snapshots/c1/s1.qcow2"] {
            let loc = q.locate(&spec(p)).unwrap();
            assert_eq!(run_dir_for(Path::new(p)), q.run_dir(&loc.key()));
        }
    }
}
