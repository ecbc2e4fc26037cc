//! loop: a filesystem image per volume; on a reflink filesystem (xfs with
//! reflink=1, btrfs) a snapshot clone and a copy are both a reflink of the image.

use std::path::{Path, PathBuf};

use berth_bdev::VolumeSpec;

use super::scratch::scratch_pool;
use super::{arg, argv, Commands, Kind, Native, NativeOp};
use crate::error::Result;

pub const KIND: Kind = Kind {
    backend: "loop",
    scratch: |s, dir| scratch_pool(s, dir, "loop", "xfs"),
    native: |_, work| Some(Box::new(Images::new(work))),
};

pub struct Images {
    work: PathBuf,
    reflink: bool,
}

impl Images {
    fn new(work: &Path) -> Self {
        Images {
            work: work.to_path_buf(),
            reflink: false,
        }
    }

    fn at(&self, id: &str) -> String {
        arg(&self.work.join(format!("{id}.img")))
    }
}

impl Native for Images {
    fn prepare(&mut self, _rootfs: &Path, of: &VolumeSpec) -> Result<()> {
        berth_bdev::fsutil::create_dir_all(&self.work)?;
        self.reflink = berth_bdev::fsutil::reflink_supported(&self.work);
        let image = arg(&super::spec_path(of)?);
        super::run_untimed(&[argv(&[
            "cp",
            "--reflink=auto",
            "--sparse=always",
            &image,
            &self.at("src"),
        ])])
    }

    fn commands(&self, op: NativeOp, id: &str) -> Option<Commands> {
        let (src, dst) = (self.at("src"), self.at(id));
        match op {
            NativeOp::Create => None,
            NativeOp::SnapshotClone | NativeOp::Snapshot if !self.reflink => None,
            NativeOp::SnapshotClone | NativeOp::Snapshot | NativeOp::Copy if self.reflink => {
                Some(vec![argv(&["cp", "--reflink=always", &src, &dst])])
            }
            NativeOp::Copy => Some(vec![argv(&["cp", "--sparse=always", &src, &dst])]),
            _ => Some(vec![argv(&["rm", "-f", &dst])]),
        }
    }

    fn work(&self) -> &Path {
        &self.work
    }

    fn cleanup(&mut self) -> Result<()> {
        super::remove_work(&self.work)
    }
}
