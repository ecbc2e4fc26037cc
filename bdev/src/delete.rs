//! Safe recursive delete (STUB: being written).

use std::path::Path;

use crate::error::Result;

/// Removes `path` and everything below it, staying inside `root`.
pub fn remove_tree(_path: &Path, _root: &Path) -> Result<()> {
    todo!()
}
