//! The crate-wide error. Each helper module has its own enum that nests here.

use std::io;
use std::path::PathBuf;

use crate::cmd::CmdError;
use crate::loopdev::LoopError;
use crate::mount::MountError;

pub type Result<T, E = BdevError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum BdevError {
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },

    /// A spec whose syntax or fields are wrong.
    #[error("invalid volume spec {spec:?}: {reason}")]
    InvalidSpec { spec: String, reason: String },

    /// A spec handed to a backend or pool that did not make it.
    #[error("{spec:?} is not a volume of {owner}")]
    ForeignVolume { spec: String, owner: String },

    /// A change asked of a read-only snapshot.
    #[error("{spec:?} is a read-only snapshot: it cannot be {op}; {hint}")]
    SnapshotReadOnly {
        spec: String,
        op: &'static str,
        hint: &'static str,
    },

    /// A volume that is in a state the operation cannot start from.
    #[error("{spec:?} is {state}; {hint}")]
    VolumeBusy {
        spec: String,
        state: &'static str,
        hint: &'static str,
    },

    /// A pool setting that is missing or wrong.
    #[error("pool {pool:?}: {reason}; {hint}")]
    PoolSetting {
        pool: String,
        reason: String,
        hint: String,
    },

    /// A layered clone past the number of layers the backend can stack.
    #[error("a clone of {spec:?} would stack {layers} layers and {backend} allows {max}; make an independent copy (--copy) to flatten it")]
    LayerLimit {
        spec: String,
        backend: &'static str,
        layers: usize,
        max: usize,
    },

    #[error("backend {backend} does not support {op}")]
    Unsupported {
        backend: &'static str,
        op: &'static str,
    },

    #[error("backend {backend} is not usable on this host: {missing}; {hint}")]
    Unavailable {
        backend: &'static str,
        missing: String,
        hint: String,
    },

    #[error("{what} {name:?} not found")]
    NotFound { what: &'static str, name: String },

    #[error("{what} {name:?} already exists")]
    Exists { what: &'static str, name: String },

    #[error("{op} {path:?}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("refusing to delete {path:?}: {reason}")]
    DeleteRefused { path: PathBuf, reason: String },

    #[error("cannot snapshot-clone a {src} volume into a {dst} pool: {reason}; instead: {}", .alternatives.join(", or "))]
    CloneRefused {
        src: String,
        dst: String,
        reason: String,
        alternatives: Vec<String>,
    },

    /// A step after an unmount (stop a helper, detach a device) failed.
    #[error("{step} failed: {reason}")]
    Teardown { step: String, reason: String },

    #[error("cannot parse {what}: {reason}")]
    Parse { what: &'static str, reason: String },

    #[error("interrupted; everything done so far was undone")]
    Interrupted,

    /// A pool, or a volume, has no room for what is to be written into it.
    #[error("{target} is full: needs {}, has {}", crate::space::human(*.needed), crate::space::human(*.available))]
    NoSpace {
        /// What is full: `pool NAME`, `volume NAME`, or a path.
        target: String,
        needed: u64,
        available: u64,
    },

    /// A volume size its filesystem cannot work with.
    #[error("cannot make volume {volume}: {reason}")]
    SizeRefused { volume: String, reason: String },

    /// A size asked for a copy that its data cannot fit in.
    #[error("a size of {} is too small for the copy {name}: its {} of data and the {fs} filesystem need {}; leave --size out to have it sized",
        crate::space::human(*.size), crate::space::human(*.used), crate::space::human(*.needs))]
    SizeTooSmall {
        name: String,
        size: u64,
        used: u64,
        needs: u64,
        fs: crate::backend::FsType,
    },

    /// Writes the copy made into `volume` never reached its storage (a sparse
    /// image or thin pool that ran out of room, an I/O error).
    #[error("writes to volume {volume} were lost on the way to its storage")]
    WriteLost {
        volume: String,
        #[source]
        source: io::Error,
    },

    /// Writing these trees would lose an xattr: the target cannot store it, or
    /// the source's mount cannot show it.
    #[error("{path:?} carries the xattr {name}, which {why}; instead: {}", .alternatives.join(", or "))]
    XattrsRefused {
        path: PathBuf,
        name: String,
        why: String,
        alternatives: Vec<String>,
    },

    #[error(transparent)]
    Cmd(#[from] CmdError),

    #[error(transparent)]
    Mount(#[from] MountError),

    #[error(transparent)]
    Loop(#[from] LoopError),
}

impl BdevError {
    /// Wraps an `io::Error` with the step and the path it failed on.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| BdevError::Io { op, path, source }
    }

    pub fn unsupported(backend: &'static str, op: &'static str) -> Self {
        BdevError::Unsupported { backend, op }
    }

    /// `v` does not belong to `owner` (e.g. "the dir pool at /srv/p").
    pub fn foreign(v: &crate::spec::VolumeSpec, owner: impl Into<String>) -> Self {
        BdevError::ForeignVolume {
            spec: v.to_string(),
            owner: owner.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mount::MountError;
    use rustix::io::Errno;

    /// The message as the CLI prints it: each error of the chain once.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut out = e.to_string();
        let mut cur = e.source();
        while let Some(s) = cur {
            out.push_str(": ");
            out.push_str(&s.to_string());
            cur = s.source();
        }
        out
    }

    #[test]
    fn no_message_repeats_its_source() {
        let enoent = || io::Error::from_raw_os_error(libc::ENOENT);
        let errs: Vec<BdevError> = vec![
            MountError::Bind {
                src: "/a".into(),
                dst: "/b".into(),
                source: Errno::NOENT,
            }
            .into(),
            MountError::Create {
                fstype: "ext4".into(),
                source_dev: "/dev/loop0".into(),
                target: "/m".into(),
                source: Errno::NOENT,
                log: String::new(),
            }
            .into(),
            MountError::Filesystem {
                fstype: "ext4".into(),
                source: Errno::NOENT,
            }
            .into(),
            MountError::Unmount {
                target: "/m".into(),
                source: Errno::NOENT,
            }
            .into(),
            CmdError::Spawn {
                prog: "tool".into(),
                source: enoent(),
            }
            .into(),
            BdevError::io("read", "/x")(enoent()),
            BdevError::WriteLost {
                volume: "v".into(),
                source: enoent(),
            },
        ];
        for e in errs {
            let text = chain(&e);
            let mut root: &dyn std::error::Error = &e;
            while let Some(s) = root.source() {
                root = s;
            }
            let cause = root.to_string();
            assert_eq!(text.matches(&cause).count(), 1, "{text}");
        }
    }
}
