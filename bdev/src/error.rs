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

    #[error("invalid volume spec {spec:?}: {reason}")]
    InvalidSpec { spec: String, reason: String },

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
        src: crate::spec::BackendKind,
        dst: crate::spec::BackendKind,
        reason: String,
        alternatives: Vec<String>,
    },

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
}
