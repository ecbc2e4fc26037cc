//! btrfs: subvolumes; a snapshot clone and a copy are both a writable snapshot.

use std::path::{Path, PathBuf};

use berth_bdev::VolumeSpec;

use super::scratch::scratch_pool;
use super::{arg, argv, Commands, Kind, Native, NativeOp};
use crate::error::Result;

pub const KIND: Kind = Kind {
    backend: "btrfs",
    scratch: |s, dir| scratch_pool(s, dir, "btrfs", "btrfs"),
    native: |_, work| Some(Box::new(Subvolumes::new(work))),
};

pub struct Subvolumes {
    work: PathBuf,
    rootfs: Option<PathBuf>,
}

impl Subvolumes {
    fn new(work: &Path) -> Self {
        Subvolumes {
            work: work.to_path_buf(),
            rootfs: None,
        }
    }

    fn at(&self, id: &str) -> String {
        arg(&self.work.join(id))
    }
}

impl Native for Subvolumes {
    fn prepare(&mut self, rootfs: &Path, _of: &VolumeSpec) -> Result<()> {
        berth_bdev::fsutil::create_dir_all(&self.work)?;
        self.rootfs = Some(rootfs.to_path_buf());
        let src = self.at("src");
        super::run_untimed(&[
            argv(&["btrfs", "-q", "subvolume", "create", &src]),
            argv(&["cp", "-a", &format!("{}/.", arg(rootfs)), &src]),
        ])
    }

    fn commands(&self, op: NativeOp, id: &str) -> Option<Commands> {
        let (src, dst) = (self.at("src"), self.at(id));
        Some(match op {
            NativeOp::Create => {
                let rootfs = format!("{}/.", arg(self.rootfs.as_deref()?));
                vec![
                    argv(&["btrfs", "-q", "subvolume", "create", &dst]),
                    argv(&["cp", "-a", &rootfs, &dst]),
                ]
            }
            NativeOp::SnapshotClone | NativeOp::Copy => {
                vec![argv(&["btrfs", "-q", "subvolume", "snapshot", &src, &dst])]
            }
            NativeOp::Snapshot => {
                vec![argv(&[
                    "btrfs",
                    "-q",
                    "subvolume",
                    "snapshot",
                    "-r",
                    &src,
                    &dst,
                ])]
            }
            NativeOp::DestroyClone => vec![argv(&["btrfs", "-q", "subvolume", "delete", &dst])],
        })
    }

    fn work(&self) -> &Path {
        &self.work
    }

    fn cleanup(&mut self) -> Result<()> {
        // Subvolumes (read-only ones too) go with `subvolume delete`, not rm.
        if let Ok(entries) = std::fs::read_dir(&self.work) {
            for e in entries.flatten() {
                let p = arg(&e.path());
                let _ = super::run_untimed(&[argv(&["btrfs", "-q", "subvolume", "delete", &p])]);
            }
        }
        super::remove_work(&self.work)
    }
}
