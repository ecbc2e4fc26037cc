//! A filesystem on a sparse image, loop-mounted under the run's directory:
//! what every throw-away pool sits on, so that the benchmark never measures or
//! fills the host's own disk.

use std::path::{Path, PathBuf};

use berth_bdev::cmd::{self, HostRunner};
use berth_bdev::loopdev::{self, LoopDevice};
use berth_bdev::mount::{self, FsOpt, MountGuard};
use berth_bdev::revert::Revert;

use super::{PoolConfig, Skip, SpaceProbe, Target};
use crate::session::Session;

/// Sparse size of every scratch filesystem: it costs only what is used, and
/// btrfs below ~4 GiB runs out of metadata chunks.
pub const SCRATCH_SIZE: u64 = 16 << 30;

/// A throw-away pool of `backend` in `dir/FSTYPE-mnt/pool` on a new scratch
/// `fstype`, with the primitives' work space beside it on the same filesystem.
pub fn scratch_pool(s: &Session, dir: &Path, backend: &str, fstype: &str) -> Result<Target, Skip> {
    let mut rv = Revert::new();
    let fs = ScratchFs::make(dir, fstype, SCRATCH_SIZE, &mut rv)?;
    let pool = PoolConfig::new(&format!("bench-{backend}"), backend).with_path(fs.mnt.join("pool"));
    let work = fs.mnt.join("native");
    Ok(Target {
        native: super::kind(backend).and_then(|k| (k.native)(&pool, &work)),
        pool,
        root: s.store(),
        under: ScratchFs::describe(fstype, SCRATCH_SIZE),
        space: SpaceProbe::Filesystem(fs.mnt),
        teardown: rv,
    })
}

pub struct ScratchFs {
    pub mnt: PathBuf,
    pub image: PathBuf,
}

impl ScratchFs {
    /// `fstype` is ext4, xfs (with reflink) or btrfs; `size` in bytes (btrfs
    /// wants ≥ 4 GiB or runs out of metadata chunks). Its unmount and removal
    /// go into `rv`.
    pub fn make(dir: &Path, fstype: &str, size: u64, rv: &mut Revert) -> Result<ScratchFs, Skip> {
        if !berth_bdev::fsutil::kernel_has_fs(fstype) {
            return Err(format!("the kernel has no {fstype} filesystem"));
        }
        let (mkfs, package, extra): (&str, &str, &[&str]) = match fstype {
            "btrfs" => ("mkfs.btrfs", "btrfs-progs", &["-q"]),
            "xfs" => ("mkfs.xfs", "xfsprogs", &["-q", "-m", "reflink=1"]),
            _ => ("mkfs.ext4", "e2fsprogs", &["-q", "-F"]),
        };
        if !cmd::have_program(mkfs) {
            return Err(format!(
                "{mkfs} is not installed (apt-get install {package})"
            ));
        }
        let image = dir.join(format!("{fstype}.img"));
        let mnt = dir.join(format!("{fstype}-mnt"));
        std::fs::create_dir_all(&mnt).map_err(|e| format!("mkdir {}: {e}", mnt.display()))?;
        let f = std::fs::File::create(&image)
            .map_err(|e| format!("create {}: {e}", image.display()))?;
        f.set_len(size)
            .map_err(|e| format!("size {}: {e}", image.display()))?;
        drop(f);
        let img = image.clone();
        rv.add("remove the scratch image", move || {
            // The autoclear loop device goes a moment after the unmount.
            berth_bdev::process::wait_until(std::time::Duration::from_secs(5), || {
                loopdev::devices_backed_by(&img).is_empty()
            });
            std::fs::remove_file(&img)
        });
        let mut args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        args.push(image.to_string_lossy().into_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cmd::run(&HostRunner, mkfs, &args).map_err(|e| format!("{mkfs}: {e}"))?;
        let dev = LoopDevice::attach(&image, false).map_err(|e| e.to_string())?;
        mount::mount_fs(
            fstype,
            dev.path().as_os_str(),
            &mnt,
            &[] as &[FsOpt<'_>],
            false,
        )
        .map_err(|e| e.to_string())?;
        // The mount holds the device now; autoclear releases it with the unmount.
        drop(dev);
        let guard = MountGuard::mounted(&mnt);
        rv.add("unmount the scratch filesystem", move || guard.release());
        Ok(ScratchFs { mnt, image })
    }

    pub fn describe(fstype: &str, size: u64) -> String {
        let reflink = if fstype == "xfs" { " (reflink=1)" } else { "" };
        format!(
            "{fstype}{reflink} on a {} GiB sparse image, loop-mounted",
            size >> 30
        )
    }
}
