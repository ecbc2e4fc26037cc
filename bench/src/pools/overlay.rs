//! overlay: a snapshot clone is an upper and a work directory over the source.

use super::dir::{tree_scratch, Trees, Union};
use super::Kind;

pub const KIND: Kind = Kind {
    backend: "overlay",
    scratch: |s, dir| tree_scratch(s, dir, "overlay"),
    native: |_, work| Some(Box::new(Trees::new(work, Union::Overlay))),
};
