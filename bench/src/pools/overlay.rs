//! overlay: a snapshot clone is an upper and a work directory over the source.

use super::dir::{Trees, Union};
use super::scratch::scratch_pool;
use super::Kind;

pub const KIND: Kind = Kind {
    backend: "overlay",
    scratch: |s, dir| scratch_pool(s, dir, "overlay", "ext4"),
    native: |_, work| Some(Box::new(Trees::new(work, Union::Overlay))),
};
