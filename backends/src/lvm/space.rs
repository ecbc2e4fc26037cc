//! Room for new volumes in the volume group (classic LVs are allocated in full)
//! or the thin pool (thin LVs take room as they are written), and, after a
//! copy, the device flushed and its filesystem checked.

use berth_bdev::space::{check_room, fill_estimate};
use berth_bdev::{CreateOpts, Result, VolumeSpec};

use super::{parse, Lvm};
use crate::blockfs as fs;

/// Free bytes of a thin pool of `size` bytes whose data space is `percent` used.
fn thin_free(size: u64, percent: f64) -> u64 {
    let used = (size as f64 * percent.clamp(0.0, 100.0) / 100.0).ceil() as u64;
    size.saturating_sub(used)
}

impl Lvm {
    pub(super) fn room_for(&self, opts: &CreateOpts, data: u64) -> Result<()> {
        let size = opts.size.unwrap_or(self.size);
        let fstype = opts.fstype.unwrap_or(self.fstype);
        match &self.thinpool {
            Some(tp) => {
                let pool = self.find(tp)?;
                let free = thin_free(pool.size, pool.data_percent.unwrap_or(0.0));
                check_room(&self.pool, fill_estimate(fstype, size, data), free)
            }
            None => {
                let out = self.run(
                    "vgs",
                    &[
                        "--reportformat",
                        "json",
                        "-o",
                        "vg_free",
                        "--units",
                        "b",
                        "--nosuffix",
                        &self.vg,
                    ],
                )?;
                check_room(&self.pool, size, parse::parse_vg_free(&out)?)
            }
        }
    }

    pub(super) fn sync_device(&self, v: &VolumeSpec) -> Result<()> {
        let dev = self.activate(&self.locate(v)?.at)?;
        fs::sync_path(&dev, || v.to_string())
    }

    pub(super) fn check_device(&self, v: &VolumeSpec) -> Result<()> {
        let lv = self.locate(v)?.at;
        let fstype = self.detect_fs(&lv)?;
        let dev = self.activate(&lv)?;
        if self.mounted(&dev) {
            return Err(berth_bdev::BdevError::VolumeBusy {
                spec: v.to_string(),
                state: "mounted",
                hint: "unmount it before a check",
            });
        }
        fs::fsck(&*self.runner, fstype, &dev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thin_pool_free_space() {
        assert_eq!(thin_free(100 << 20, 0.0), 100 << 20);
        assert_eq!(thin_free(100 << 20, 25.0), 75 << 20);
        assert_eq!(thin_free(100 << 20, 100.0), 0);
        assert_eq!(thin_free(100 << 20, 150.0), 0);
    }
}
