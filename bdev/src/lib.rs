//! berth-bdev: the storage contract shared by every berth backend.
//!
//! It defines the [`Backend`] trait with its capability table, the typed
//! [`VolumeSpec`], and the one way to run a command ([`cmd`]), mount ([`mount`]),
//! attach a loop device ([`loopdev`]), copy a tree ([`copy`]) and delete one
//! ([`delete`]). It knows no concrete backend.

mod atomic_file;
pub mod backend;
pub mod cmd;
pub mod copy;
pub mod delete;
pub mod error;
pub mod fsutil;
pub mod generic;
pub mod loopdev;
pub mod mount;
pub mod names;
pub mod plan;
pub mod pool;
pub mod process;
pub mod registry;
pub mod revert;
pub mod space;
pub mod spec;

pub use backend::{
    Backend, Caps, CreateOpts, FsType, ReceiveTo, Tool, Usage, UsageKind, DEFAULT_SIZE,
};
pub use error::{BdevError, Result};
pub use mount::MountGuard;
pub use pool::{PoolConfig, PoolOption};
pub use registry::Registration;
pub use revert::Revert;
pub use spec::{SpecForm, VolumeSpec};
