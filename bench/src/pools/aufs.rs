//! aufs (unionfs-fuse here): a snapshot clone is an upper directory over the source.

use super::dir::{tree_scratch, Trees, Union};
use super::Kind;

pub const KIND: Kind = Kind {
    backend: "aufs",
    scratch: |s, dir| tree_scratch(s, dir, "aufs"),
    native: |_, work| Some(Box::new(Trees::new(work, Union::Aufs))),
};
