//! Helpers of the fuzz targets: a tar archive builder driven by a small text
//! format ([`tarball`]) and a snapshot of a directory tree ([`tree`]).

pub mod tarball;
pub mod tree;
