//! dir: plain trees; a snapshot is a copy, and there is no snapshot clone.

use std::path::{Path, PathBuf};

use berth_bdev::VolumeSpec;

use super::scratch::scratch_pool;
use super::{arg, argv, Commands, Kind, Native, NativeOp};
use crate::error::Result;

pub const KIND: Kind = Kind {
    backend: "dir",
    scratch: |s, dir| scratch_pool(s, dir, "dir", "ext4"),
    native: |_, work| Some(Box::new(Trees::new(work, Union::None))),
};

/// Which union layer a snapshot clone of a tree makes.
#[derive(Clone, Copy)]
pub enum Union {
    None,
    /// overlay: an upper and a work directory over the source.
    Overlay,
    /// aufs (unionfs-fuse): an upper directory over the source.
    Aufs,
}

/// Primitives on plain trees: `cp -a` copies, union layers as `mkdir`.
pub struct Trees {
    work: PathBuf,
    rootfs: Option<PathBuf>,
    union: Union,
}

impl Trees {
    pub fn new(work: &Path, union: Union) -> Self {
        Trees {
            work: work.to_path_buf(),
            rootfs: None,
            union,
        }
    }

    fn at(&self, id: &str) -> String {
        arg(&self.work.join(id))
    }
}

impl Native for Trees {
    fn prepare(&mut self, rootfs: &Path, _of: &VolumeSpec) -> Result<()> {
        berth_bdev::fsutil::create_dir_all(&self.work)?;
        self.rootfs = Some(rootfs.to_path_buf());
        super::run_untimed(&[argv(&["cp", "-a", &arg(rootfs), &self.at("src")])])
    }

    fn commands(&self, op: NativeOp, id: &str) -> Option<Commands> {
        let src = self.at("src");
        let dst = self.at(id);
        let copy = vec![argv(&["cp", "-a", &src, &dst])];
        match (op, self.union) {
            (NativeOp::Create, _) => {
                let rootfs = arg(self.rootfs.as_deref()?);
                Some(vec![argv(&["cp", "-a", &rootfs, &dst])])
            }
            (NativeOp::SnapshotClone, Union::None) => None,
            (NativeOp::SnapshotClone, Union::Overlay) => Some(vec![argv(&[
                "mkdir",
                "-p",
                &format!("{dst}/upper"),
                &format!("{dst}/work"),
            ])]),
            (NativeOp::SnapshotClone, Union::Aufs) => {
                Some(vec![argv(&["mkdir", "-p", &format!("{dst}/upper")])])
            }
            (NativeOp::Copy | NativeOp::Snapshot, _) => Some(copy),
            (NativeOp::DestroyClone, _) => Some(vec![argv(&["rm", "-rf", &dst])]),
        }
    }

    fn work(&self) -> &Path {
        &self.work
    }

    fn cleanup(&mut self) -> Result<()> {
        super::remove_work(&self.work)
    }
}
