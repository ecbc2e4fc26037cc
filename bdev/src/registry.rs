//! What a backend tells the registry about itself. The table itself lives in
//! `berth-backends`; the CLI builds `-B` values, `pool add` options and help from
//! it, and the application opens pools through it.

use std::sync::Arc;

use crate::backend::Backend;
use crate::cmd::Runner;
use crate::error::Result;
use crate::pool::{PoolConfig, PoolOption};
use crate::spec::VolumeSpec;

/// How a backend uses a pool's `path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathUse {
    /// Volumes live in the directory: a pool needs it.
    Volumes,
    /// Volumes live elsewhere and are mounted under the directory; a pool that
    /// names none gets one under the state root.
    MountPoints,
    /// Not used.
    Unused,
}

/// Opens a pool of one backend without touching the host.
pub type OpenFn = fn(&PoolConfig, Arc<dyn Runner>) -> Result<Box<dyn Backend>>;

/// One backend, as the registry lists it.
#[derive(Clone, Copy)]
pub struct Registration {
    /// The name in specs, pool configs and `-B`.
    pub name: &'static str,
    /// Other names `-B` and specs accept (LXC's `overlayfs`).
    pub aliases: &'static [&'static str],
    /// One line for help texts.
    pub summary: &'static str,
    pub path: PathUse,
    /// The backend's own pool settings (`berth pool add --KEY VALUE`).
    pub pool_options: &'static [PoolOption],
    /// Opens a pool of this backend without touching the host.
    pub open: OpenFn,
    /// Checks a spec's fields and returns it in canonical form.
    pub check_spec: fn(&VolumeSpec) -> Result<VolumeSpec>,
    /// Snapshot clones of this backend stack on plain trees (`Caps::stacks_on_trees`),
    /// so it is offered when a snapshot clone elsewhere is refused.
    pub stacks_on_trees: bool,
}

impl Registration {
    /// Whether `-B NAME` can make a pool on its own: nothing to ask the user.
    pub fn needs_settings(&self) -> bool {
        self.pool_options.iter().any(|o| o.required)
    }

    /// `--key example` for every required setting, for hints.
    pub fn example_settings(&self) -> String {
        self.pool_options
            .iter()
            .filter(|o| o.required)
            .map(|o| format!("--{} {}", o.key, o.example))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.name)
            .field("aliases", &self.aliases)
            .finish_non_exhaustive()
    }
}
