//! overlay: each volume is an overlayfs upper directory over read-only layers. A
//! clone is a new, empty upper over its origin's layers: clones of clones stack
//! (the lowerdir chain grows by one per generation) and are never flattened.
//!
//! Layout under the pool:
//! - `NAME/{lower,upper,work}`: a fresh volume (`lower` stays empty);
//! - `NAME/{upper,work}`: a clone, whose lowers are its origin's layers;
//! - `.snapshots/NAME/SNAP/upper`: a snapshot, a copy of the volume's upper
//!   (reflinked where the pool's filesystem can), over the volume's lowers. A
//!   snapshot of a fresh volume gets its own empty `lower`, so it does not depend
//!   on the volume. Snapshots always mount read-only;
//! - `lowers` beside each `upper`: the volume's lowers, recorded at creation so
//!   that a volume is found again by name alone (see `lookup`).
//!
//! The spec is `overlay:LOWER…:UPPER`, topmost lower first; the work directory is
//! the upper's sibling `work`.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_bdev::cmd::Runner;
use berth_bdev::copy::{copy_tree, NoProgress};
use berth_bdev::delete::remove_tree;
use berth_bdev::fsutil::{allocated_bytes, claim_dir, create_dir_all, require_kernel_fs};
use berth_bdev::mount::{self, FsOpt, MountGuard};
use berth_bdev::names::validate_name;
use berth_bdev::{
    Backend, BackendKind, BdevError, Caps, CreateOpts, PoolConfig, Result, Revert, Usage,
    UsageKind, VolumeSpec,
};
use tracing::debug;

use crate::lookup::{self, Entry};

/// The kernel's limit on stacked layers (`OVL_MAX_STACK`).
const MAX_LAYERS: usize = 500;

/// `OVERLAYFS_SUPER_MAGIC` from linux/magic.h.
const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;

/// `lowerdir+` (one fsconfig call per layer) arrived in Linux 6.8.
const MIN_KERNEL: (u32, u32) = (6, 8);

/// Overlay features, set explicitly so behaviour does not depend on the kernel's
/// build defaults or module parameters. Every upper is later reused as a lower of
/// clones and copied into snapshots, so each layer must stand on its own:
/// - `index=off`: the inode index ties an upper to the exact lowers it was made on
///   (file handles, filesystem UUIDs), and with it the kernel refuses a directory
///   that another mount uses as its upper, which a clone's lower often is;
/// - `redirect_dir=off`: renaming a lower directory fails with EXDEV (`mv` then
///   copies) instead of leaving a redirect xattr that points into other layers;
/// - `metacopy=off`: copy-up copies data, so an upper never holds metadata-only
///   files whose data lives in a lower.
///
/// Overlay metadata (whiteouts, opaque directories) uses the default
/// `trusted.overlay.*` xattrs: berth mounts as root in the initial user namespace.
/// `userxattr` is for unprivileged mounts, and layers written one way are not
/// read the other way.
const FEATURES: [(&str, &str); 3] = [
    ("index", "off"),
    ("redirect_dir", "off"),
    ("metacopy", "off"),
];

pub fn open(pool: &PoolConfig, _runner: Arc<dyn Runner>) -> Result<Box<dyn Backend>> {
    Ok(Box::new(Overlay::open(pool)?))
}

#[derive(Debug, Clone)]
pub struct Overlay {
    root: PathBuf,
}

/// Which directory of the pool an overlay spec's upper belongs to.
#[derive(Debug, PartialEq, Eq)]
enum Owner {
    /// `POOL/NAME`.
    Volume(PathBuf),
    /// `POOL/.snapshots/NAME/SNAP`.
    Snapshot(PathBuf),
}

impl Overlay {
    pub fn open(pool: &PoolConfig) -> Result<Self> {
        Ok(Overlay {
            root: crate::pool_path(pool)?.to_path_buf(),
        })
    }

    fn snapshots(&self) -> PathBuf {
        self.root.join(".snapshots")
    }

    /// Splits a spec of this pool into its lowers, its upper and its owner.
    fn parts<'a>(&self, v: &'a VolumeSpec) -> Result<(&'a [PathBuf], &'a Path, Owner)> {
        let bad = |reason: String| BdevError::InvalidSpec {
            spec: v.to_string(),
            reason,
        };
        let VolumeSpec::Overlay { lowers, upper } = v else {
            return Err(bad("not an overlay volume".to_owned()));
        };
        let dir = match upper.file_name() {
            Some(n) if n == "upper" => upper.parent(),
            _ => None,
        };
        let owner = match dir {
            Some(d) if d.parent() == Some(&self.root) => Owner::Volume(d.to_path_buf()),
            Some(d) if d.parent().and_then(Path::parent) == Some(&self.snapshots()) => {
                Owner::Snapshot(d.to_path_buf())
            }
            _ => {
                return Err(bad(format!(
                    "its upper is not NAME/upper or .snapshots/NAME/SNAP/upper of the pool at {:?}",
                    self.root
                )))
            }
        };
        Ok((lowers, upper, owner))
    }

    /// Creates the directory `dir` in the pool (failing if it exists) and registers
    /// its removal; then its subdirectories `subs`, and the record of `lowers`.
    fn make_dir(
        &self,
        dir: &Path,
        subs: &[&str],
        lowers: &[PathBuf],
        rv: &mut Revert,
    ) -> Result<()> {
        claim_dir(dir, &self.root, rv)?;
        for s in subs {
            let sub = dir.join(s);
            fs::create_dir(&sub).map_err(BdevError::io("create directory", &sub))?;
        }
        lookup::write_lowers(dir, lowers)
    }

    /// The volume or snapshot whose directory is `dir`, if there is one.
    fn found_at(dir: PathBuf) -> Result<Option<VolumeSpec>> {
        if !lookup::is_entry(&dir, Entry::Dir)? {
            return Ok(None);
        }
        Ok(Some(VolumeSpec::Overlay {
            lowers: lookup::lowers_of(&dir)?,
            upper: dir.join("upper"),
        }))
    }
}

/// The layers a clone of `src` stacks on, topmost first: an overlay volume's upper
/// over its own lowers, or a plain-tree volume (dir, btrfs) as one layer.
fn layers_of(src: &VolumeSpec) -> Result<Vec<PathBuf>> {
    let layers = match src {
        VolumeSpec::Overlay { lowers, upper } => {
            std::iter::once(upper).chain(lowers).cloned().collect()
        }
        other => match other.tree_path() {
            Some(p) => vec![p.to_path_buf()],
            None => {
                return Err(BdevError::InvalidSpec {
                    spec: other.to_string(),
                    reason: "overlay stacks only on overlay, dir and btrfs volumes".to_owned(),
                })
            }
        },
    };
    // A read-only mount adds the clone's upper as one more layer.
    if layers.len() + 1 > MAX_LAYERS {
        return Err(BdevError::InvalidSpec {
            spec: src.to_string(),
            reason: format!(
                "a clone would stack {} layers and overlay allows {MAX_LAYERS}; make an independent copy (--copy) to flatten it",
                layers.len() + 1
            ),
        });
    }
    Ok(layers)
}

/// The fsconfig options for mounting `lowers` under `upper`, in order. Read-only,
/// the upper becomes the topmost lower and there is no upper, so nothing can be
/// written and no work directory is touched.
fn mount_options(
    lowers: &[PathBuf],
    upper: &Path,
    read_only: bool,
) -> Vec<(&'static str, OsString)> {
    let mut opts: Vec<(&'static str, OsString)> = Vec::with_capacity(lowers.len() + 6);
    if read_only {
        opts.push(("lowerdir+", upper.as_os_str().to_owned()));
    }
    opts.extend(
        lowers
            .iter()
            .map(|l| ("lowerdir+", l.as_os_str().to_owned())),
    );
    if !read_only {
        opts.push(("upperdir", upper.as_os_str().to_owned()));
        opts.push((
            "workdir",
            VolumeSpec::overlay_workdir(upper).into_os_string(),
        ));
    }
    opts.extend(FEATURES.iter().map(|(k, v)| (*k, OsString::from(v))));
    opts
}

/// `(major, minor)` of a kernel release string such as `6.18.44-fc-v669`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    Some((it.next()?.ok()?, it.next()?.ok()?))
}

impl Backend for Overlay {
    fn kind(&self) -> BackendKind {
        BackendKind::Overlay
    }

    fn caps(&self) -> Caps {
        Caps {
            snapshot: true,
            clone_from_snapshot: true,
            snapshot_clone: true,
            copy_on_write: true,
            clone_pins_origin: true,
            clone_reads_live_origin: true,
            stacks_on_trees: true,
            kernel_fs: &["overlay"],
            ..Caps::default()
        }
    }

    fn probe(&self) -> Result<()> {
        require_kernel_fs("overlay", "overlay")?;
        let uname = rustix::system::uname();
        let release = uname.release().to_string_lossy();
        if kernel_version(&release).is_none_or(|v| v < MIN_KERNEL) {
            return Err(BdevError::Unavailable {
                backend: "overlay",
                missing: format!(
                    "kernel {release} has no overlay `lowerdir+` option (Linux 6.8 or newer)"
                ),
                hint: "boot a newer kernel or pick another backend".to_owned(),
            });
        }
        create_dir_all(&self.root)?;
        let st = rustix::fs::statfs(&self.root)
            .map_err(|e| BdevError::io("statfs", &self.root)(e.into()))?;
        if st.f_type as u64 & 0xffff_ffff == OVERLAYFS_SUPER_MAGIC {
            return Err(BdevError::Unavailable {
                backend: "overlay",
                missing: format!("the pool {} is itself on overlayfs", self.root.display()),
                hint:
                    "an overlay upper cannot live on overlayfs; put the pool on ext4, xfs or btrfs"
                        .to_owned(),
            });
        }
        Ok(())
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        let features: Vec<String> = FEATURES.iter().map(|(k, v)| format!("{k}={v}")).collect();
        vec![
            (
                "mount",
                "overlayfs, one `lowerdir+` fsconfig call per layer".to_owned(),
            ),
            ("features", features.join(",")),
            (
                "clones",
                "an empty upper over the origin's layers (stacked)".to_owned(),
            ),
            (
                "snapshots",
                "a copy of the upper (reflinked where possible)".to_owned(),
            ),
        ]
    }

    fn create(&self, name: &str, _opts: &CreateOpts, rv: &mut Revert) -> Result<VolumeSpec> {
        validate_name(name)?;
        let dir = self.root.join(name);
        let lowers = vec![dir.join("lower")];
        self.make_dir(&dir, &["lower", "upper", "work"], &lowers, rv)?;
        Ok(VolumeSpec::Overlay {
            lowers,
            upper: dir.join("upper"),
        })
    }

    fn mount(&self, v: &VolumeSpec, at: &Path, read_only: bool) -> Result<MountGuard> {
        let (lowers, upper, owner) = self.parts(v)?;
        // A snapshot is a point in time: never give it a writable upper.
        let read_only = read_only || matches!(owner, Owner::Snapshot(_));
        let opts = mount_options(lowers, upper, read_only);
        let fs_opts: Vec<FsOpt<'_>> = opts.iter().map(|(k, v)| FsOpt::s(k, v)).collect();
        debug!(layers = lowers.len(), read_only, "mount overlay");
        mount::mount_fs("overlay", "overlay".as_ref(), at, &fs_opts, read_only)?;
        Ok(MountGuard::mounted(at))
    }

    fn destroy(&self, v: &VolumeSpec) -> Result<()> {
        let owner = self.parts(v)?.2;
        let (Owner::Volume(dir) | Owner::Snapshot(dir)) = &owner;
        if lookup::exists(dir)? {
            // A partly made (no upper or work) or partly removed one goes too.
            remove_tree(dir, &self.root)?;
        } else {
            lookup::already_gone(v);
        }
        if let Owner::Snapshot(dir) = &owner {
            // Drop the per-volume snapshot directory once it is empty.
            if let Some(parent) = dir.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
        Ok(())
    }

    fn volume_names(&self) -> Result<Vec<String>> {
        lookup::names_in(&self.root, Entry::Dir, "")
    }

    fn volume_named(&self, name: &str) -> Result<Option<VolumeSpec>> {
        validate_name(name)?;
        Self::found_at(self.root.join(name))
    }

    fn snapshot_names(&self, name: &str) -> Result<Vec<String>> {
        validate_name(name)?;
        lookup::names_in(&self.snapshots().join(name), Entry::Dir, "")
    }

    fn snapshot_named(&self, name: &str, snap: &str) -> Result<Option<VolumeSpec>> {
        validate_name(name)?;
        validate_name(snap)?;
        Self::found_at(self.snapshots().join(name).join(snap))
    }

    fn usage(&self, v: &VolumeSpec) -> Result<Usage> {
        let (_, upper, _) = self.parts(v)?;
        Ok(Usage {
            used_bytes: allocated_bytes(upper)?,
            kind: UsageKind::Exclusive,
            limit_bytes: None,
            note: Some("the upper layer only; lower layers are shared with the origin".to_owned()),
        })
    }

    fn snapshot(
        &self,
        v: &VolumeSpec,
        name: &str,
        snap: &str,
        rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        let (lowers, upper, owner) = self.parts(v)?;
        let Owner::Volume(voldir) = owner else {
            return Err(BdevError::InvalidSpec {
                spec: v.to_string(),
                reason: "it is already a snapshot; clone it to change it".to_owned(),
            });
        };
        validate_name(name)?;
        validate_name(snap)?;
        let parent = self.snapshots().join(name);
        if !parent.exists() {
            create_dir_all(&parent)?;
            let p = parent.clone();
            rv.add(format!("remove {}", parent.display()), move || {
                fs::remove_dir(&p)
            });
        }
        let dir = parent.join(snap);
        // The volume's own empty lower is replaced by the snapshot's, so the
        // snapshot does not depend on the volume's directory.
        let own_lower = voldir.join("lower");
        let has_own_lower = lowers.contains(&own_lower);
        let subs: &[&str] = if has_own_lower {
            &["upper", "lower"]
        } else {
            &["upper"]
        };
        let lowers: Vec<PathBuf> = lowers
            .iter()
            .map(|l| {
                if *l == own_lower {
                    dir.join("lower")
                } else {
                    l.clone()
                }
            })
            .collect();
        self.make_dir(&dir, subs, &lowers, rv)?;
        let snap_upper = dir.join("upper");
        copy_tree(upper, &snap_upper, &NoProgress)?;
        Ok(VolumeSpec::Overlay {
            lowers,
            upper: snap_upper,
        })
    }

    fn snapshot_clone(&self, src: &VolumeSpec, name: &str, rv: &mut Revert) -> Result<VolumeSpec> {
        let lowers = layers_of(src)?;
        if let Some(missing) = lowers.iter().find(|l| !l.is_dir()) {
            return Err(BdevError::NotFound {
                what: "layer directory",
                name: missing.display().to_string(),
            });
        }
        validate_name(name)?;
        let dir = self.root.join(name);
        self.make_dir(&dir, &["upper", "work"], &lowers, rv)?;
        let upper = dir.join("upper");
        // The merged root is the upper's directory: it must look like the origin's.
        if let Some(top) = lowers.first() {
            berth_bdev::copy::copy_meta(top, &upper)?;
        }
        Ok(VolumeSpec::Overlay { lowers, upper })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Overlay {
        Overlay::open(&PoolConfig::new("o", BackendKind::Overlay).with_path("/pool")).unwrap()
    }

    fn ov(lowers: &[&str], upper: &str) -> VolumeSpec {
        VolumeSpec::Overlay {
            lowers: lowers.iter().map(PathBuf::from).collect(),
            upper: upper.into(),
        }
    }

    #[test]
    fn specs_are_classified_by_their_upper() {
        let b = backend();
        let (_, _, o) = b.parts(&ov(&["/pool/c1/lower"], "/pool/c1/upper")).unwrap();
        assert_eq!(o, Owner::Volume("/pool/c1".into()));
        let (_, _, o) = b
            .parts(&ov(&["/x"], "/pool/.snapshots/c1/s1/upper"))
            .unwrap();
        assert_eq!(o, Owner::Snapshot("/pool/.snapshots/c1/s1".into()));
        for bad in [
            ov(&["/x"], "/other/c1/upper"),
            ov(&["/x"], "/pool/c1/up"),
            ov(&["/x"], "/pool/upper"),
            ov(&["/x"], "/pool/a/b/upper"),
        ] {
            assert!(b.parts(&bad).is_err(), "{bad}");
        }
        assert!(b.parts(&"dir:/pool/c1".parse().unwrap()).is_err());
    }

    #[test]
    fn clones_stack_on_the_origin_layers() {
        let base = ov(&["/pool/b/lower"], "/pool/b/upper");
        assert_eq!(
            layers_of(&base).unwrap(),
            vec![PathBuf::from("/pool/b/upper"), "/pool/b/lower".into()]
        );
        let c2 = ov(
            &["/pool/c1/upper", "/pool/b/upper", "/pool/b/lower"],
            "/pool/c2/upper",
        );
        assert_eq!(layers_of(&c2).unwrap().len(), 4);
        assert_eq!(
            layers_of(&"btrfs:/bt/v".parse().unwrap()).unwrap(),
            vec![PathBuf::from("/bt/v")]
        );
        assert_eq!(
            layers_of(&"dir:/d/v".parse().unwrap()).unwrap(),
            vec![PathBuf::from("/d/v")]
        );
        let e = layers_of(&"zfs:tank/v".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("overlay stacks only"), "{e}");
    }

    #[test]
    fn layer_limit_is_checked_before_anything_is_made() {
        let many: Vec<String> = (0..MAX_LAYERS - 1)
            .map(|i| format!("/pool/c{i}/upper"))
            .collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        // MAX-2 lowers + upper = MAX-1 layers, + the clone's upper = MAX.
        assert!(layers_of(&ov(&refs[1..], "/pool/t/upper")).is_ok());
        let e = layers_of(&ov(&refs, "/pool/t/upper")).unwrap_err();
        assert!(e.to_string().contains("--copy"), "{e}");
    }

    #[test]
    fn mount_options_rw_and_ro() {
        let lowers = vec![PathBuf::from("/p/a/upper"), "/p/a/lower".into()];
        let rw = mount_options(&lowers, Path::new("/p/c/upper"), false);
        let keys: Vec<&str> = rw.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "lowerdir+",
                "lowerdir+",
                "upperdir",
                "workdir",
                "index",
                "redirect_dir",
                "metacopy"
            ]
        );
        assert_eq!(rw[0].1, "/p/a/upper");
        assert_eq!(rw[3].1, "/p/c/work");
        let ro = mount_options(&lowers, Path::new("/p/c/upper"), true);
        let lows: Vec<&OsString> = ro
            .iter()
            .filter(|(k, _)| *k == "lowerdir+")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(lows, ["/p/c/upper", "/p/a/upper", "/p/a/lower"]);
        assert!(!ro.iter().any(|(k, _)| *k == "upperdir" || *k == "workdir"));
    }

    #[test]
    fn volumes_are_found_by_name_with_their_lowers() {
        let d = tempfile::tempdir().unwrap();
        let b =
            Overlay::open(&PoolConfig::new("o", BackendKind::Overlay).with_path(d.path())).unwrap();
        let mut rv = Revert::new();
        let base = b.create("base", &CreateOpts::default(), &mut rv).unwrap();
        let clone = b.snapshot_clone(&base, "clone", &mut rv).unwrap();
        let snap = b.snapshot(&clone, "clone", "s1", &mut rv).unwrap();
        rv.commit();
        assert_eq!(b.volume_names().unwrap(), ["base", "clone"]);
        assert_eq!(b.volume_named("base").unwrap(), Some(base.clone()));
        assert_eq!(b.volume_named("clone").unwrap(), Some(clone.clone()));
        assert_eq!(b.volume_named("none").unwrap(), None);
        assert_eq!(b.snapshot_names("clone").unwrap(), ["s1"]);
        assert_eq!(b.snapshot_named("clone", "s1").unwrap(), Some(snap.clone()));

        // Made before lowers were recorded: found with none, and destroyable.
        fs::remove_file(d.path().join("clone").join(lookup::LOWERS_FILE)).unwrap();
        let old = b.volume_named("clone").unwrap().unwrap();
        assert_eq!(
            old,
            ov(&[], &d.path().join("clone/upper").to_string_lossy())
        );
        b.destroy_snapshot(&snap).unwrap();
        b.destroy_snapshot(&snap).unwrap();
        b.destroy(&old).unwrap();
        b.destroy(&clone).unwrap();
        assert_eq!(b.volume_named("clone").unwrap(), None);

        // Partly made: a directory without upper or work.
        fs::remove_dir(d.path().join("base/work")).unwrap();
        fs::remove_dir(d.path().join("base/upper")).unwrap();
        let partial = b.volume_named("base").unwrap().unwrap();
        assert_eq!(partial, base);
        b.destroy(&partial).unwrap();
        assert!(b.volume_names().unwrap().is_empty());
        assert!(!d.path().join(".snapshots/clone").exists());
    }

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(kernel_version("6.1.0-28-cloud-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.10"), Some((5, 10)));
        assert_eq!(kernel_version("garbage"), None);
        assert!(kernel_version("6.1.0").unwrap() < MIN_KERNEL);
        assert!(kernel_version("6.8.0").unwrap() >= MIN_KERNEL);
    }
}
