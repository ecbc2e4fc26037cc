//! overlay: each volume is an overlayfs upper directory over read-only layers. A
//! clone is a new, empty upper over its origin's layers: clones of clones stack
//! (the lowerdir chain grows by one per generation) and are never flattened. A
//! clone of another backend's plain tree (`stack_on_tree`) has that tree as its
//! one lower. Clones reach their layers by path, so they work across pools.
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
use berth_bdev::fsutil::{allocated_bytes, claim_dir, create_dir_all, require_host};
use berth_bdev::mount::{self, FsOpt, MountGuard};
use berth_bdev::names::validate_name;
use berth_bdev::registry::PathUse;
use berth_bdev::{
    Backend, BdevError, Caps, CreateOpts, PoolConfig, Registration, Result, Revert, SpecForm,
    Usage, UsageKind, VolumeSpec,
};
use tracing::debug;

use crate::layout::{Located, PoolDir};
use crate::lookup::{self, Entry, NoOptions};

pub const NAME: &str = "overlay";

pub const REGISTRATION: Registration = Registration {
    name: NAME,
    aliases: &["overlayfs"],
    summary: "overlayfs upper directories over read-only layers (Linux 6.8 or newer)",
    path: PathUse::Volumes,
    pool_options: &[],
    open,
    check_spec: <OverlaySpec as SpecForm>::canonical,
    stacks_on_trees: true,
};

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

crate::spec_shapes::union_spec!(
    /// An overlay spec: `overlay:LOWER[:LOWER…]:UPPER`, topmost lower first;
    /// LXC's `overlayfs:` is read too.
    OverlaySpec,
    NAME,
    aliases: &["overlayfs"]
);

impl OverlaySpec {
    /// The work directory overlayfs needs beside a writable upper: its sibling
    /// `work`, on the same filesystem as the kernel requires.
    pub fn workdir(&self) -> PathBuf {
        self.upper
            .parent()
            .map(|p| p.join("work"))
            .unwrap_or_else(|| PathBuf::from("work"))
    }

    /// The layers a clone of this volume stacks on, topmost first.
    fn layers(&self) -> Vec<PathBuf> {
        std::iter::once(&self.upper)
            .chain(&self.lowers)
            .cloned()
            .collect()
    }
}

/// The spec of an overlay volume with `lowers` (topmost first) under `upper`.
pub fn spec(lowers: Vec<PathBuf>, upper: PathBuf) -> VolumeSpec {
    OverlaySpec::new(lowers, upper).to_spec()
}

#[derive(Debug, Clone)]
pub struct Overlay {
    dir: PoolDir,
}

impl Overlay {
    pub fn open(pool: &PoolConfig) -> Result<Self> {
        pool.options::<NoOptions>()?;
        Ok(Overlay {
            dir: PoolDir::new(pool.dir()?, Entry::Dir, ""),
        })
    }

    fn root(&self) -> &Path {
        self.dir.root()
    }

    /// Reads a spec of this pool, and finds the volume or snapshot whose
    /// directory holds its upper.
    fn parts(&self, v: &VolumeSpec) -> Result<(OverlaySpec, Located<PathBuf>)> {
        let s = OverlaySpec::read_own(v)?;
        let loc = match lookup::union_home(&s.upper) {
            Some(home) => self.dir.locate_spec(v, home)?,
            None => {
                return Err(BdevError::foreign(
                    v,
                    format!("the {NAME} pool at {}", self.root().display()),
                ))
            }
        };
        Ok((s, loc))
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
        claim_dir(dir, self.root(), rv)?;
        for s in subs {
            let sub = dir.join(s);
            fs::create_dir(&sub).map_err(BdevError::io("create directory", &sub))?;
        }
        lookup::write_lowers(dir, lowers)
    }

    /// The volume or snapshot whose directory is `dir`.
    fn found_at(dir: PathBuf) -> Result<VolumeSpec> {
        Ok(spec(lookup::lowers_of(&dir)?, dir.join("upper")))
    }

    /// Creates `name` as an empty upper over `lowers`, topmost first.
    fn stack(&self, lowers: Vec<PathBuf>, name: &str, rv: &mut Revert) -> Result<VolumeSpec> {
        if let Some(missing) = lowers.iter().find(|l| !l.is_dir()) {
            return Err(BdevError::NotFound {
                what: "layer directory",
                name: missing.display().to_string(),
            });
        }
        validate_name(name)?;
        let dir = self.dir.volume(name);
        self.make_dir(&dir, &["upper", "work"], &lowers, rv)?;
        let upper = dir.join("upper");
        // The merged root is the upper's directory: it must look like the origin's.
        if let Some(top) = lowers.first() {
            berth_bdev::copy::copy_meta(top, &upper)?;
        }
        Ok(spec(lowers, upper))
    }
}

/// Refuses a clone of `src` over `layers` past the kernel's limit: a read-only
/// mount adds the clone's upper as one more layer.
fn check_layer_limit(src: &VolumeSpec, layers: &[PathBuf]) -> Result<()> {
    let n = layers.len() + 1;
    if n > MAX_LAYERS {
        return Err(BdevError::LayerLimit {
            spec: src.to_string(),
            backend: NAME,
            layers: n,
            max: MAX_LAYERS,
        });
    }
    Ok(())
}

/// The fsconfig options for mounting `s`, in order. Read-only, the upper becomes
/// the topmost lower and there is no upper, so nothing can be written and no work
/// directory is touched.
fn mount_options(s: &OverlaySpec, read_only: bool) -> Vec<(&'static str, OsString)> {
    let mut opts: Vec<(&'static str, OsString)> = Vec::with_capacity(s.lowers.len() + 6);
    if read_only {
        opts.push(("lowerdir+", s.upper.as_os_str().to_owned()));
    }
    opts.extend(
        s.lowers
            .iter()
            .map(|l| ("lowerdir+", l.as_os_str().to_owned())),
    );
    if !read_only {
        opts.push(("upperdir", s.upper.as_os_str().to_owned()));
        opts.push(("workdir", s.workdir().into_os_string()));
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
    fn name(&self) -> &'static str {
        NAME
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
            clones_span_pools: true,
            kernel_fs: &["overlay"],
            ..Caps::default()
        }
    }

    fn probe(&self) -> Result<()> {
        require_host(NAME, &self.caps())?;
        let uname = rustix::system::uname();
        let release = uname.release().to_string_lossy();
        if kernel_version(&release).is_none_or(|v| v < MIN_KERNEL) {
            return Err(BdevError::Unavailable {
                backend: NAME,
                missing: format!(
                    "kernel {release} has no overlay `lowerdir+` option (Linux 6.8 or newer)"
                ),
                hint: "boot a newer kernel or pick another backend".to_owned(),
            });
        }
        let root = self.root();
        create_dir_all(root)?;
        let st = rustix::fs::statfs(root).map_err(|e| BdevError::io("statfs", root)(e.into()))?;
        if st.f_type as u64 & 0xffff_ffff == OVERLAYFS_SUPER_MAGIC {
            return Err(BdevError::Unavailable {
                backend: NAME,
                missing: format!("the pool {} is itself on overlayfs", root.display()),
                hint:
                    "an overlay upper cannot live on overlayfs; put the pool on ext4, xfs or btrfs"
                        .to_owned(),
            });
        }
        Ok(())
    }

    fn branch_dirs(&self, v: &VolumeSpec) -> Vec<PathBuf> {
        OverlaySpec::read_own(v)
            .map(|s| s.lowers.into_iter().chain([s.upper]).collect())
            .unwrap_or_default()
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
        let dir = self.dir.volume(name);
        let lowers = vec![dir.join("lower")];
        self.make_dir(&dir, &["lower", "upper", "work"], &lowers, rv)?;
        Ok(spec(lowers, dir.join("upper")))
    }

    fn mount(&self, v: &VolumeSpec, at: &Path, read_only: bool) -> Result<MountGuard> {
        let (s, loc) = self.parts(v)?;
        // A snapshot is a point in time: never give it a writable upper.
        let read_only = read_only || loc.is_snapshot();
        let opts = mount_options(&s, read_only);
        let fs_opts: Vec<FsOpt<'_>> = opts.iter().map(|(k, v)| FsOpt::s(k, v)).collect();
        debug!(layers = s.lowers.len(), read_only, "mount overlay");
        mount::mount_fs("overlay", "overlay".as_ref(), at, &fs_opts, read_only)?;
        Ok(MountGuard::mounted(at))
    }

    fn destroy(&self, v: &VolumeSpec) -> Result<()> {
        let (_, loc) = self.parts(v)?;
        if lookup::exists(&loc.at)? {
            // A partly made (no upper or work) or partly removed one goes too.
            remove_tree(&loc.at, self.root())?;
        } else {
            lookup::already_gone(v);
        }
        if loc.is_snapshot() {
            // Drop the per-volume snapshot directory once it is empty.
            let _ = fs::remove_dir(self.dir.snapshots_of(&loc.name));
        }
        Ok(())
    }

    fn volume_names(&self) -> Result<Vec<String>> {
        self.dir.volume_names()
    }

    fn volume_named(&self, name: &str) -> Result<Option<VolumeSpec>> {
        self.dir.volume_named(name)?.map(Self::found_at).transpose()
    }

    fn snapshot_names(&self, name: &str) -> Result<Vec<String>> {
        self.dir.snapshot_names(name)
    }

    fn snapshot_named(&self, name: &str, snap: &str) -> Result<Option<VolumeSpec>> {
        self.dir
            .snapshot_named(name, snap)?
            .map(Self::found_at)
            .transpose()
    }

    fn usage(&self, v: &VolumeSpec) -> Result<Usage> {
        let (s, _) = self.parts(v)?;
        Ok(Usage {
            used_bytes: allocated_bytes(&s.upper)?,
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
        let (s, loc) = self.parts(v)?;
        loc.refuse_snapshot(v, "snapshotted", "clone it to change it")?;
        validate_name(name)?;
        validate_name(snap)?;
        let parent = self.dir.snapshots_of(name);
        if !parent.exists() {
            create_dir_all(&parent)?;
            let p = parent.clone();
            rv.add(format!("remove {}", parent.display()), move || {
                fs::remove_dir(&p)
            });
        }
        let dir = self.dir.snapshot(name, snap);
        // The volume's own empty lower is replaced by the snapshot's, so the
        // snapshot does not depend on the volume's directory.
        let own_lower = loc.at.join("lower");
        let has_own_lower = s.lowers.contains(&own_lower);
        let subs: &[&str] = if has_own_lower {
            &["upper", "lower"]
        } else {
            &["upper"]
        };
        let lowers: Vec<PathBuf> = s
            .lowers
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
        copy_tree(&s.upper, &snap_upper, &NoProgress)?;
        Ok(spec(lowers, snap_upper))
    }

    /// `src` may be of another overlay pool: the clone reaches it by path.
    fn snapshot_clone(&self, src: &VolumeSpec, name: &str, rv: &mut Revert) -> Result<VolumeSpec> {
        let layers = OverlaySpec::from_spec(src)?.layers();
        check_layer_limit(src, &layers)?;
        self.stack(layers, name, rv)
    }

    fn stack_on_tree(&self, tree: &Path, name: &str, rv: &mut Revert) -> Result<VolumeSpec> {
        self.stack(vec![tree.to_path_buf()], name, rv)
    }
}

#[cfg(test)]
mod tests;
