//! Faithful tree and file copies (STUB: being written).

use std::path::Path;

use crate::error::Result;

/// Counters for a finished copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    pub files: u64,
    pub bytes: u64,
    /// Bytes shared with the source through reflink instead of copied.
    pub reflinked_bytes: u64,
}

/// Progress reports from a copy (the CLI draws a bar from them).
pub trait Progress: Sync {
    /// Called once, after the source has been scanned.
    fn total(&self, _files: u64, _bytes: u64) {}
    /// Called as files complete, from any worker thread.
    fn advance(&self, _files: u64, _bytes: u64) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;
impl Progress for NoProgress {}

/// Copies the tree at `src` into the existing directory `dst`.
pub fn copy_tree(_src: &Path, _dst: &Path, _progress: &dyn Progress) -> Result<CopyStats> {
    todo!()
}

/// Copies one regular file (an image), reflinked when possible, else sparsely.
pub fn copy_file(_src: &Path, _dst: &Path) -> Result<CopyStats> {
    todo!()
}
