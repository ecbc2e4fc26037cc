//! Growing a volume's filesystem, and what a berth killed while growing one
//! leaves. xfs and btrfs grow only while mounted: the image is mounted for
//! the moment at `POOL/.resize-IMAGE.TAG`, TAG naming the process
//! (`PID-STARTTIME`). A berth killed there leaves that mount, and the loop
//! device under it holds the image, so every later mount of the volume would
//! be refused; [`Loop::clean_stale_grow_mounts`] removes the mounts of
//! processes that are gone, from the next operation that finds the image
//! held and from `cleanup_stale`.

use std::path::Path;

use berth_bdev::loopdev::LoopDevice;
use berth_bdev::mount::{self, MountGuard};
use berth_bdev::process::{own_tag, tag_alive};
use berth_bdev::{FsType, Result};
use tracing::{info, warn};

use super::{attach, fs, Loop};

/// What the temporary mount points of grows start with.
const GROW_PREFIX: &str = ".resize-";

impl Loop {
    /// Grows the filesystem on the unmounted, already grown `img` to fill it;
    /// one that only grows online is mounted for the moment.
    pub(super) fn grow_fs(&self, img: &Path, fstype: FsType) -> Result<()> {
        let name = img
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let at = self
            .root()
            .join(format!("{GROW_PREFIX}{name}.{}", own_tag()));
        fs::grow(&*self.runner, fstype, img, false, &at, |at| {
            // Attached after the image grew, so the device already has the new size.
            let dev = LoopDevice::attach(img, false)?;
            fs::mount_device(fstype, dev.path(), at, false)?;
            // Autoclear: the mount holds the device, and the unmount frees it.
            Ok(MountGuard::mounted(at))
        })
    }

    /// Unmounts and removes the grow mount points of berths that are gone
    /// (their loop devices go with the mounts). Returns how many.
    pub(super) fn clean_stale_grow_mounts(&self) -> Result<usize> {
        let Ok(entries) = std::fs::read_dir(self.root()) else {
            return Ok(0);
        };
        let mut cleaned = 0;
        for e in entries.flatten() {
            let file = e.file_name();
            let Some(rest) = file.to_str().and_then(|n| n.strip_prefix(GROW_PREFIX)) else {
                continue;
            };
            let Some((_, tag)) = rest.rsplit_once('.') else {
                continue;
            };
            if tag_alive(tag) {
                continue;
            }
            let at = e.path();
            for m in mount::mounts_under(&at).iter().rev() {
                info!(mount = %m.display(), "unmounting the grow mount of a berth that is gone");
                if let Err(err) = mount::unmount(m) {
                    warn!(mount = %m.display(), error = %err, "detaching it instead");
                    mount::unmount_detach(m)?;
                }
            }
            match std::fs::remove_dir(&at) {
                Ok(()) => cleaned += 1,
                Err(err) => warn!(dir = %at.display(), error = %err, "could not remove it"),
            }
        }
        Ok(cleaned)
    }

    /// [`attach::refuse_if_attached`], once the grow mounts of berths that
    /// are gone (which hold their images) have been removed.
    pub(super) fn refuse_if_attached(
        &self,
        img: &Path,
        op: &'static str,
        only_writable: bool,
    ) -> Result<()> {
        attach::refuse_if_attached(img, op, only_writable, || {
            self.clean_stale_grow_mounts().map(|_| ())
        })
    }
}
