//! qcow2: an image per volume; a snapshot clone is a new image backed by the
//! source (`qemu-img create -b`), a copy is `qemu-img convert`.

use std::path::{Path, PathBuf};

use berth_bdev::VolumeSpec;

use super::scratch::scratch_pool;
use super::{arg, argv, Commands, Kind, Native, NativeOp};
use crate::error::Result;

pub const KIND: Kind = Kind {
    backend: "qcow2",
    // btrfs underneath: berth reflinks qcow2 snapshots where it can.
    scratch: |s, dir| scratch_pool(s, dir, "qcow2", "btrfs"),
    native: |_, work| Some(Box::new(Qcow2Images::new(work))),
};

pub struct Qcow2Images {
    work: PathBuf,
}

impl Qcow2Images {
    fn new(work: &Path) -> Self {
        Qcow2Images {
            work: work.to_path_buf(),
        }
    }

    fn at(&self, id: &str) -> String {
        arg(&self.work.join(format!("{id}.qcow2")))
    }
}

impl Native for Qcow2Images {
    fn prepare(&mut self, _rootfs: &Path, of: &VolumeSpec) -> Result<()> {
        berth_bdev::fsutil::create_dir_all(&self.work)?;
        let image = arg(&super::spec_path(of)?);
        // A standalone copy: the source may itself have a backing file.
        super::run_untimed(&[argv(&[
            "qemu-img",
            "convert",
            "-O",
            "qcow2",
            &image,
            &self.at("src"),
        ])])
    }

    fn commands(&self, op: NativeOp, id: &str) -> Option<Commands> {
        let (src, dst) = (self.at("src"), self.at(id));
        Some(match op {
            NativeOp::Create => return None,
            NativeOp::SnapshotClone | NativeOp::Snapshot => vec![argv(&[
                "qemu-img", "create", "-q", "-f", "qcow2", "-b", &src, "-F", "qcow2", &dst,
            ])],
            NativeOp::Copy => vec![argv(&["qemu-img", "convert", "-O", "qcow2", &src, &dst])],
            NativeOp::DestroyClone => vec![argv(&["rm", "-f", &dst])],
        })
    }

    fn work(&self) -> &Path {
        &self.work
    }

    fn cleanup(&mut self) -> Result<()> {
        super::remove_work(&self.work)
    }
}
