//! The `Backend` contract every storage backend implements.

use std::path::Path;

use serde::Serialize;

use crate::error::{BdevError, Result};
use crate::mount::{self, MountGuard};
use crate::revert::Revert;
use crate::spec::VolumeSpec;

/// What a backend can do. Callers branch on these flags, never on backend names,
/// and refuse an operation up front when its flag is off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Caps {
    /// Read-only, named point-in-time snapshots (`snapshot`).
    pub snapshot: bool,
    /// A writable clone of a snapshot without copying data.
    pub clone_from_snapshot: bool,
    /// A writable clone of a volume without copying data (`snapshot_clone`).
    pub snapshot_clone: bool,
    /// Clones share unchanged blocks with their origin.
    pub copy_on_write: bool,
    /// A snapshot clone keeps reading from its origin, so the origin (and the
    /// snapshot it came from) must outlive it.
    pub clone_pins_origin: bool,
    /// Clones read the origin's live data (a lower layer, a backing file), so the
    /// origin must stay read-only while they exist. False where clones depend on a
    /// frozen snapshot instead (zfs).
    pub clone_reads_live_origin: bool,
    /// A snapshot clone can take over its origin's data in place (`promote`), so the
    /// origin can be destroyed without copying the clone.
    pub promote: bool,
    /// Snapshot clones can stack on other backends' plain-tree volumes
    /// (`stack_on_tree`).
    pub stacks_on_trees: bool,
    /// Volumes (and snapshots) are plain directory trees, readable without a
    /// mount (`tree_path`), so layers of other backends can stack on them.
    pub plain_tree: bool,
    /// Snapshot clones reach their origin by path, so they work across pools of
    /// this backend, not only within one.
    pub clones_span_pools: bool,
    /// Why this pool cannot make snapshot clones and what would let it, when it is
    /// a property of the pool rather than of the backend.
    pub snapshot_clone_refusal: Option<&'static str>,
    /// The mounted volume cannot store extended attributes (file capabilities,
    /// ACLs), e.g. unionfs-fuse built without them. Copies of trees that carry
    /// xattrs into it fail rather than drop them.
    pub lacks_xattrs: bool,
    /// The mounted volume keeps file times to the second only (zfs-fuse), so
    /// copies into it lose sub-second times.
    pub coarse_timestamps: bool,
    /// Volumes have an enforced size (`CreateOpts::size`).
    pub size_limit: bool,
    /// Volumes live on a block device or image that holds a filesystem.
    pub block_backed: bool,
    /// Volumes can be grown (`resize`).
    pub resize: bool,
    /// Volumes and snapshots can be written as the backend's own replication
    /// stream (`send`) and read back into a pool of the same backend
    /// (`receive`), in full or as the changes since a snapshot both ends hold.
    pub send_stream: bool,
    /// Kernel filesystems this backend needs, as named in /proc/filesystems.
    /// Checked by [`crate::fsutil::require_host`], which every probe calls.
    pub kernel_fs: &'static [&'static str],
    /// Host programs this backend runs, checked the same way.
    pub tools: &'static [Tool],
}

/// A host program a backend runs, and the Debian package that has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tool {
    pub prog: &'static str,
    pub package: &'static str,
}

impl Tool {
    pub const fn new(prog: &'static str, package: &'static str) -> Self {
        Tool { prog, package }
    }
}

/// Filesystems a block-backed volume can be formatted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    #[default]
    Ext4,
    Xfs,
    Btrfs,
}

impl FsType {
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
            FsType::Btrfs => "btrfs",
        }
    }
}

impl std::str::FromStr for FsType {
    type Err = BdevError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ext4" => Ok(FsType::Ext4),
            "xfs" => Ok(FsType::Xfs),
            "btrfs" => Ok(FsType::Btrfs),
            _ => Err(BdevError::Parse {
                what: "filesystem type",
                reason: format!("{s:?} is not one of ext4, xfs, btrfs"),
            }),
        }
    }
}

impl std::fmt::Display for FsType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Options for a new volume.
#[derive(Debug, Clone, Default)]
pub struct CreateOpts {
    /// Size in bytes for backends with `size_limit` (default: the backend's).
    pub size: Option<u64>,
    /// Filesystem for block-backed volumes (default ext4).
    pub fstype: Option<FsType>,
}

/// What [`Backend::receive`] makes of a stream.
#[derive(Debug, Clone, Copy)]
pub struct ReceiveTo<'a> {
    /// The volume the stream becomes, or whose snapshot it becomes.
    pub name: &'a str,
    /// The stream becomes snapshot `snap` of volume `name` rather than the
    /// volume itself.
    pub snap: Option<&'a str>,
    /// For a stream of the changes since a snapshot: this pool's copy of that
    /// snapshot (received from the same sender earlier).
    pub base: Option<&'a VolumeSpec>,
    /// The existing volume whose contents the stream replaces (the changes
    /// since `base` it holds are discarded). A backend that can replace it
    /// atomically in place does and returns its spec; the others make the
    /// new volume `name`, and the caller retires this one.
    pub replaces: Option<&'a VolumeSpec>,
}

/// Default size of block-backed volumes: 1 GiB, sparse.
pub const DEFAULT_SIZE: u64 = 1 << 30;

/// How a usage figure was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageKind {
    /// Blocks only this volume holds (not shared with origin or snapshots).
    Exclusive,
    /// Blocks this volume refers to, shared ones included.
    Referenced,
    /// Blocks allocated to the volume's files or image (du-style).
    Allocated,
}

/// Space a volume takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub used_bytes: u64,
    pub kind: UsageKind,
    /// The volume's size limit, if it has one.
    pub limit_bytes: Option<u64>,
    /// Anything the figure leaves out, e.g. "exclusive size needs btrfs quotas".
    pub note: Option<String>,
}

/// A storage backend bound to one pool.
///
/// Optional operations return `BdevError::Unsupported` by default; each one has a
/// `Caps` flag, and the conformance suite checks that the two agree.
pub trait Backend: Send + Sync {
    /// The backend's registry name, which its specs start with.
    fn name(&self) -> &'static str;

    fn caps(&self) -> Caps;

    /// Checks that the host can run this backend (kernel filesystem, tools, pool
    /// present) before anything is touched; the error names what is missing.
    /// Starts with [`crate::fsutil::require_host`] on `caps()`.
    fn probe(&self) -> Result<()>;

    /// The directory holding the files of `v` (a volume or snapshot of this pool)
    /// when the backend has `plain_tree`: readable, and for a volume writable,
    /// without a mount.
    fn tree_path(&self, _v: &VolumeSpec) -> Option<std::path::PathBuf> {
        None
    }

    /// The plain directories that together hold the files of `v`, readable
    /// without a mount: its tree, or every branch of a union (lowers, then
    /// upper). Empty for volumes inside a dataset or an image.
    fn branch_dirs(&self, v: &VolumeSpec) -> Vec<std::path::PathBuf> {
        self.tree_path(v).into_iter().collect()
    }

    /// Facts for `berth info`, such as which mechanism mounts the volumes.
    fn describe(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Creates an empty volume called `name` in this pool. Every step registers its
    /// undo in `rv`.
    fn create(&self, name: &str, opts: &CreateOpts, rv: &mut Revert) -> Result<VolumeSpec>;

    /// Mounts the volume's root filesystem on the existing directory `at`.
    fn mount(&self, v: &VolumeSpec, at: &Path, read_only: bool) -> Result<MountGuard>;

    /// Undoes a mount that outlived its guard (`berth mount`, or a crash), including
    /// any helper process or loop device the mount needed.
    fn unmount(&self, _v: &VolumeSpec, at: &Path) -> Result<()> {
        mount::unmount(at)?;
        Ok(())
    }

    /// Removes what a crashed berth left behind in this pool (helper daemons, FUSE
    /// exports, temporary snapshots). Called with the store locked, when nothing of
    /// berth's can be mid-operation.
    fn cleanup_stale(&self) -> Result<()> {
        Ok(())
    }

    /// Removes the volume and its data. Dependency checks are the caller's.
    ///
    /// Idempotent, so that an interrupted operation can be rolled back from names
    /// alone: a volume that no longer exists is `Ok` (with a warning), and one that
    /// was only partly made or partly removed is removed.
    fn destroy(&self, v: &VolumeSpec) -> Result<()>;

    /// The names of every volume in this pool (the `name` given to `create`,
    /// `snapshot_clone` or `copy_clone`), sorted; snapshots and the backend's own
    /// files are not volumes.
    fn volume_names(&self) -> Result<Vec<String>>;

    /// The spec of the volume called `name`, equal to the one `create` (or
    /// `snapshot_clone`, `copy_clone`) returned for it, or `None` if the pool holds
    /// nothing of that name. A partly made volume is found too, with a spec that
    /// `destroy` accepts.
    fn volume_named(&self, name: &str) -> Result<Option<VolumeSpec>>;

    /// The names of the snapshots taken of volume `name` with `snapshot`, sorted
    /// (the backend's own temporary snapshots excluded).
    fn snapshot_names(&self, name: &str) -> Result<Vec<String>>;

    /// The spec of snapshot `snap` of volume `name`, equal to the one `snapshot`
    /// returned, or `None`. A partly made snapshot is found too, with a spec that
    /// `destroy_snapshot` accepts.
    fn snapshot_named(&self, name: &str, snap: &str) -> Result<Option<VolumeSpec>>;

    fn usage(&self, v: &VolumeSpec) -> Result<Usage>;

    /// Takes a read-only snapshot `snap` of the volume called `name`.
    fn snapshot(
        &self,
        _v: &VolumeSpec,
        _name: &str,
        _snap: &str,
        _rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        Err(BdevError::unsupported(self.name(), "snapshot"))
    }

    /// Removes a snapshot made by `snapshot`; idempotent like `destroy`.
    fn destroy_snapshot(&self, snap: &VolumeSpec) -> Result<()> {
        self.destroy(snap)
    }

    /// Creates `name` as a copy-on-write clone of `src` (a volume or snapshot of
    /// this backend) without copying data.
    fn snapshot_clone(
        &self,
        _src: &VolumeSpec,
        _name: &str,
        _rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        Err(BdevError::unsupported(self.name(), "snapshot clone"))
    }

    /// Creates `name` as a writable layer over `tree`, another backend's plain
    /// tree (its `tree_path`), without copying data (`stacks_on_trees`).
    fn stack_on_tree(&self, _tree: &Path, _name: &str, _rv: &mut Revert) -> Result<VolumeSpec> {
        Err(BdevError::unsupported(
            self.name(),
            "stacking on a plain tree",
        ))
    }

    /// Creates `name` as an independent full copy of `src` (same backend) with the
    /// backend's own tool (`zfs send | recv`, `qemu-img convert`, a sparse image copy).
    /// `Unsupported` makes the caller copy through mounts instead.
    fn copy_clone(
        &self,
        _src: &VolumeSpec,
        _name: &str,
        _opts: &CreateOpts,
        _rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        Err(BdevError::unsupported(self.name(), "native copy"))
    }

    /// Makes the snapshot clone `clone` independent of its origin without copying
    /// (`zfs promote`): the origin then depends on the clone instead.
    fn promote(&self, _clone: &VolumeSpec) -> Result<()> {
        Err(BdevError::unsupported(self.name(), "promote"))
    }

    /// Grows the volume (and its filesystem) to `size` bytes.
    fn resize(&self, _v: &VolumeSpec, _size: u64) -> Result<()> {
        Err(BdevError::unsupported(self.name(), "resize"))
    }

    /// Refuses up front, with `BdevError::NoSpace` naming the pool, a new volume
    /// made with `opts` and then filled with `data` bytes that the pool's backing
    /// store cannot hold. A sparse image or thin volume takes its room only as it
    /// is written, so a full store would lose writes a copy believed done.
    /// Backends whose volumes draw on no such store accept everything.
    fn check_room(&self, _opts: &CreateOpts, _data: u64) -> Result<()> {
        Ok(())
    }

    /// Flushes an unmounted volume's image or device to stable storage; a write
    /// lost after it was accepted becomes `BdevError::WriteLost`.
    fn sync_volume(&self, _v: &VolumeSpec) -> Result<()> {
        Ok(())
    }

    /// Writes `v` (a volume, or a snapshot of it) to `out` as this backend's
    /// replication stream (`send_stream`): all of it, or with `base` (an
    /// earlier snapshot of the same volume) only what changed since then. A
    /// live volume is sent through a temporary read-only snapshot.
    fn send(
        &self,
        _v: &VolumeSpec,
        _base: Option<&VolumeSpec>,
        _out: &mut dyn std::io::Write,
    ) -> Result<()> {
        Err(BdevError::unsupported(self.name(), "send streams"))
    }

    /// Reads a stream `send` wrote (on any host) from `input` into this pool
    /// as `to` says. Every step registers its undo in `rv`; a stream that
    /// fails part way leaves nothing.
    fn receive(
        &self,
        _input: &mut dyn std::io::Read,
        _to: &ReceiveTo<'_>,
        _rv: &mut Revert,
    ) -> Result<VolumeSpec> {
        Err(BdevError::unsupported(self.name(), "receive streams"))
    }

    /// Checks an unmounted volume's filesystem read-only (`e2fsck -fn`,
    /// `xfs_repair -n`, `btrfs check --readonly`); an error means damage.
    fn check_fs(&self, _v: &VolumeSpec) -> Result<()> {
        Err(BdevError::unsupported(self.name(), "filesystem check"))
    }
}
