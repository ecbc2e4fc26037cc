//! aufs (unionfs-fuse here): a snapshot clone is an upper directory over the source.

use super::dir::{Trees, Union};
use super::scratch::scratch_pool;
use super::Kind;

pub const KIND: Kind = Kind {
    backend: "aufs",
    scratch: |s, dir| scratch_pool(s, dir, "aufs", "ext4"),
    native: |_, work| Some(Box::new(Trees::new(work, Union::Aufs))),
};
