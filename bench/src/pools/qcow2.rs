//! qcow2: an image per volume; a snapshot clone is a new image backed by the
//! source (`qemu-img create -b`), a copy is `qemu-img convert`.

use std::path::{Path, PathBuf};

use berth_bdev::revert::Revert;
use berth_bdev::{PoolConfig, VolumeSpec};

use super::{arg, argv, Commands, Kind, Native, NativeOp, ScratchFs, SpaceProbe, Target};
use crate::error::Result;

const SCRATCH: u64 = 16 << 30;

pub const KIND: Kind = Kind {
    backend: "qcow2",
    scratch: |s, dir| {
        let mut rv = Revert::new();
        // btrfs underneath: berth reflinks qcow2 snapshots where it can.
        let fs = ScratchFs::make(dir, "btrfs", SCRATCH, &mut rv)?;
        let pool = PoolConfig::new("bench-qcow2", "qcow2").with_path(fs.mnt.join("pool"));
        Ok(Target {
            native: Some(Box::new(Qcow2Images::new(&fs.mnt.join("native")))),
            pool,
            root: s.store(),
            under: ScratchFs::describe("btrfs", SCRATCH),
            space: SpaceProbe::Filesystem(fs.mnt),
            teardown: rv,
        })
    },
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
