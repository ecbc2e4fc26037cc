//! What the benchmark measures on: a pool (a throw-away one it makes, or the
//! user's), the store it belongs to, and the backend's raw primitives.
//!
//! Each backend has one module here: how to make a throw-away pool of it on
//! this host (or why it cannot), and its primitives — the commands berth's
//! operations are compared with (`btrfs subvolume snapshot`, `zfs clone`,
//! `qemu-img create -b` …), run on the primitive's own copy of the same data
//! on the same filesystem. A new backend is one module and one line in [`KINDS`].

mod aufs;
mod btrfs;
mod dir;
mod r#loop;
mod lvm;
mod overlay;
mod qcow2;
mod scratch;
mod zfs;

use std::path::{Path, PathBuf};

use berth_bdev::revert::Revert;
use berth_bdev::{PoolConfig, VolumeSpec};

use crate::error::Result;
use crate::session::Session;

pub use scratch::ScratchFs;

/// An operation of the lifecycle suite that has a raw counterpart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeOp {
    /// A new volume filled from the rootfs.
    Create,
    /// A writable clone sharing data with the source.
    SnapshotClone,
    /// An independent copy of the source.
    Copy,
    /// A read-only point-in-time copy of the source.
    Snapshot,
    /// Removes what [`NativeOp::SnapshotClone`] made.
    DestroyClone,
}

/// Commands, each `[program, args…]`, run one after another.
pub type Commands = Vec<Vec<String>>;

/// A backend's raw primitives on their own source object.
pub trait Native: Send {
    /// Makes the primitive's source from berth's source volume `of` (or from
    /// the rootfs where that is the backend's own way), untimed.
    fn prepare(&mut self, rootfs: &Path, of: &VolumeSpec) -> Result<()>;
    /// The commands for `op` on object `id`, or `None` where the backend has
    /// no such primitive.
    fn commands(&self, op: NativeOp, id: &str) -> Option<Commands>;
    /// Removes everything it made, untimed.
    fn cleanup(&mut self) -> Result<()>;
    /// Where its objects live (shown as `W` in the report).
    fn work(&self) -> &Path;
}

/// How to read the disk space a pool's storage uses.
#[derive(Debug, Clone)]
pub enum SpaceProbe {
    /// Used blocks of the filesystem mounted here (after a syncfs).
    Filesystem(PathBuf),
    /// `used` of a zfs dataset and its children.
    ZfsDataset(String),
    /// Not measurable (a user's pool on a shared filesystem).
    None(String),
}

/// A pool to measure.
pub struct Target {
    pub pool: PoolConfig,
    /// The state root its containers live in.
    pub root: PathBuf,
    /// The filesystem under it, for the report.
    pub under: String,
    pub native: Option<Box<dyn Native>>,
    pub space: SpaceProbe,
    /// Undoes the throw-away pool (nothing for a user's pool).
    pub teardown: Revert,
}

/// Why a backend was not measured.
pub type Skip = String;

/// One backend of the benchmark.
pub struct Kind {
    pub backend: &'static str,
    /// Makes a throw-away pool in `dir` (the run's directory) for the store at
    /// `store`, or says why this host cannot.
    pub scratch: fn(&Session, &Path) -> std::result::Result<Target, Skip>,
    /// Its primitives on `pool` with work space `work` (same filesystem as the
    /// pool's volumes), if the pool allows them.
    pub native: fn(&PoolConfig, &Path) -> Option<Box<dyn Native>>,
}

pub const KINDS: &[Kind] = &[
    dir::KIND,
    overlay::KIND,
    aufs::KIND,
    btrfs::KIND,
    r#loop::KIND,
    zfs::KIND,
    qcow2::KIND,
    lvm::KIND,
];

pub fn kind(backend: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.backend == backend)
}

/// `[prog, args…]` from string-like parts.
pub fn argv<S: AsRef<str>>(parts: &[S]) -> Vec<String> {
    parts.iter().map(|s| s.as_ref().to_owned()).collect()
}

/// A path as a command argument.
pub fn arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The only field of a single-path spec (`dir:`, `btrfs:`, `loop:`, `qcow2:`).
pub fn spec_path(v: &VolumeSpec) -> Result<PathBuf> {
    match v.fields() {
        [one] => Ok(PathBuf::from(one)),
        _ => Err(crate::BenchError::Invalid(format!(
            "expected a one-path volume, got {v}"
        ))),
    }
}

/// Shows commands as one line, with the work directory shortened to `W` and
/// the rootfs to `ROOTFS`.
pub fn describe(cmds: &Commands, work: &Path, rootfs: &Path) -> String {
    let w = work.to_string_lossy();
    let r = rootfs.to_string_lossy();
    cmds.iter()
        .map(|c| {
            c.join(" ")
                .replace(r.as_ref(), "ROOTFS")
                .replace(w.as_ref(), "W")
        })
        .collect::<Vec<_>>()
        .join(" && ")
}

/// Runs set-up or clean-up commands whose time is not measured.
pub fn run_untimed(cmds: &[Vec<String>]) -> Result<()> {
    crate::session::timed_all(cmds).map(|_| ())
}

/// Removes a primitive's work directory (nothing may be mounted there).
pub fn remove_work(work: &Path) -> Result<()> {
    if !work.exists() {
        return Ok(());
    }
    berth_bdev::delete::remove_tree(work, work.parent().unwrap_or(work))?;
    Ok(())
}
