//! Errors of berth's store and operations.

use std::path::PathBuf;

use berth_bdev::BdevError;

pub type Result<T, E = BerthError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum BerthError {
    #[error("container {0:?} does not exist (see `berth ls`)")]
    NoContainer(String),

    #[error("container {0:?} already exists")]
    ContainerExists(String),

    #[error("image {0:?} does not exist (see `berth image ls`)")]
    NoImage(String),

    #[error("image {0:?} already exists; pick another name or `berth image rm` it first")]
    ImageExists(String),

    #[error("image {image:?} is used by {}: their volumes read its copy; destroy them (or `berth flatten` them where the backend can) first", .containers.join(", "))]
    ImageInUse {
        image: String,
        containers: Vec<String>,
    },

    #[error("pool {0:?} does not exist (see `berth pool ls`)")]
    NoPool(String),

    #[error("pool {0:?} already exists")]
    PoolExists(String),

    #[error("pool {pool:?} still holds containers: {}; destroy them first", .containers.join(", "))]
    PoolInUse {
        pool: String,
        containers: Vec<String>,
    },

    #[error("container {name:?} has no snapshot {snap:?} (see `berth snapshot ls {name}`)")]
    NoSnapshot { name: String, snap: String },

    #[error("container {name:?} already has a snapshot {snap:?}")]
    SnapshotExists { name: String, snap: String },

    #[error("{what} is needed by {}; destroy those first, or pass --force to destroy them too", .dependents.join(", "))]
    HasDependents {
        what: String,
        dependents: Vec<String>,
    },

    #[error("snapshot {name}@{snap} is the origin of {}; `berth flatten` them (or destroy them) first", .clones.join(", "))]
    SnapshotInUse {
        name: String,
        snap: String,
        clones: Vec<String>,
    },

    #[error("clones read the current rootfs of {name:?} directly: {}; `berth flatten` them (or destroy them) first", .clones.join(", "))]
    ReadByClones { name: String, clones: Vec<String> },

    #[error("container {name:?} has snapshots ({}); pass --with-snapshots (-s) to destroy them too", .snaps.join(", "))]
    HasSnapshots { name: String, snaps: Vec<String> },

    #[error("container {name:?} is {state}; {hint}")]
    Busy {
        name: String,
        state: &'static str,
        hint: &'static str,
    },

    #[error("busy: {what}; {hint}")]
    Locked { what: String, hint: &'static str },

    #[error("{0}")]
    Invalid(String),

    #[error("cannot read {path:?}: {reason}")]
    Corrupt { path: PathBuf, reason: String },

    #[error("lock {path:?}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{op} {path:?}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Bdev(#[from] BdevError),
    #[error(transparent)]
    Image(#[from] crate::images::ImageError),

    #[error(transparent)]
    Transfer(#[from] crate::images::bundle::TransferError),

    #[error(transparent)]
    Template(#[from] crate::templates::TemplateError),

    #[error(transparent)]
    Runtime(#[from] berth_runtime::RuntimeError),

    #[error(transparent)]
    Adopt(#[from] crate::ops::adopt_config::AdoptError),
}

impl BerthError {
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| BerthError::Io { op, path, source }
    }
}
