//! lvm pools for tests that run inside the test VM (`crate::vm`): a fresh volume
//! group on a loop device over a sparse image in the test's temp dir, with or
//! without a thin pool; dropping it removes the group and frees the device.

use std::path::Path;

use berth_bdev::cmd::{self, HostRunner};
use berth_bdev::loopdev::LoopDevice;
use berth_bdev::PoolConfig;

use crate::harness::Setup;

/// Sparse size of the physical volume's image (tmpfs in the VM holds only what
/// is written).
const PV_SIZE: u64 = 3 << 30;
/// The thin pool takes most of it; the rest leaves room for its metadata.
const THIN_POOL_SIZE: &str = "2560m";

/// A volume group on a loop device; dropping it removes every LV, the group and
/// the PV label, and then the (autoclear) loop device goes.
pub struct VolumeGroup {
    pub name: String,
    dev: Option<LoopDevice>,
}

impl Drop for VolumeGroup {
    fn drop(&mut self) {
        let r = &HostRunner;
        if let Err(e) = cmd::run(r, "vgremove", &["-q", "-f", "-f", &self.name]) {
            eprintln!("vgremove {}: {e}", self.name);
        }
        if let Some(dev) = self.dev.take() {
            let _ = cmd::run(r, "pvremove", &["-q", "-f", &dev.path().to_string_lossy()]);
        }
    }
}

fn run(prog: &str, args: &[&str]) -> Result<(), String> {
    cmd::run(&HostRunner, prog, args)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Makes volume group `name` on a loop device of `tmp/pv.img`.
pub fn volume_group(tmp: &Path, name: &str, thin: Option<&str>) -> Result<VolumeGroup, String> {
    if !crate::vm::in_vm() {
        return Err("lvm tests run inside the test VM (see tests/src/vm.rs)".to_owned());
    }
    let img = tmp.join("pv.img");
    let f = std::fs::File::create(&img).map_err(|e| format!("create {img:?}: {e}"))?;
    f.set_len(PV_SIZE)
        .map_err(|e| format!("size {img:?}: {e}"))?;
    drop(f);
    let dev = LoopDevice::attach(&img, false).map_err(|e| e.to_string())?;
    let dev_s = dev.path().to_string_lossy().into_owned();
    run("pvcreate", &["-q", "-y", &dev_s])?;
    let vg = VolumeGroup {
        name: name.to_owned(),
        dev: Some(dev),
    };
    run("vgcreate", &["-q", "-y", name, &dev_s])?;
    if let Some(tp) = thin {
        run(
            "lvcreate",
            &[
                "-q",
                "-y",
                "-T",
                "-L",
                THIN_POOL_SIZE,
                &format!("{name}/{tp}"),
            ],
        )?;
    }
    Ok(vg)
}

fn setup(tmp: &Path, thin: bool) -> Result<Setup, String> {
    // The temp dir's random suffix keeps group names apart between tests.
    let suffix = tmp
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "")
        })
        .unwrap_or_default();
    let name = format!("berth{suffix}");
    let vg = volume_group(tmp, &name, thin.then_some("pool"))?;
    let mut pool = PoolConfig::new("test", "lvm").with_option("vg", &name);
    if thin {
        pool = pool.with_option("thinpool", "pool");
    }
    Ok(Setup {
        pool,
        keep: vec![Box::new(vg)],
    })
}

/// A pool with a thin pool: thin volumes, thin snapshots and clones.
pub fn setup_thin(tmp: &Path) -> Result<Setup, String> {
    setup(tmp, true)
}

/// A pool of classic LVs with COW snapshots.
pub fn setup_classic(tmp: &Path) -> Result<Setup, String> {
    setup(tmp, false)
}
