//! One pool setup per backend, each on scratch storage under the test's temp dir.

pub mod aufs;
pub mod btrfs;
pub mod dir;
pub mod r#loop;
pub mod lvm;
pub mod overlay;
pub mod qcow2;
pub mod zfs;
