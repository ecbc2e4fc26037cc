//! The one way berth attaches a loop device: `LOOP_CONFIGURE` (atomic attach plus
//! flags in one ioctl) with autoclear, retried when another process grabs the same
//! free device first (this host is shared; `EBUSY` happens).
//!
//! With autoclear the kernel detaches the device when its last user goes away: mount
//! the device while the `LoopDevice` is alive, then drop it; the unmount releases it.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use linux_raw_sys::loop_device::{
    loop_config, LOOP_CONFIGURE, LOOP_CTL_GET_FREE, LOOP_SET_CAPACITY, LO_FLAGS_AUTOCLEAR,
    LO_FLAGS_READ_ONLY,
};
use tracing::debug;

const ATTACH_ATTEMPTS: u32 = 20;

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("open loop control /dev/loop-control (is the loop module loaded?)")]
    Control(#[source] std::io::Error),

    #[error("open {path:?} for a loop device")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("attach {image:?} to {dev:?}")]
    Configure {
        image: PathBuf,
        dev: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "no free loop device for {image:?} after {attempts} attempts (other processes hold them)"
    )]
    Exhausted { image: PathBuf, attempts: u32 },

    #[error("refresh the size of {dev:?}")]
    Capacity {
        dev: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An attached loop device. Dropping it closes the device; with autoclear the kernel
/// detaches it once nothing (such as a mount) uses it any more.
#[derive(Debug)]
pub struct LoopDevice {
    dev: File,
    path: PathBuf,
}

impl LoopDevice {
    /// Attaches `image`, read-only if asked.
    pub fn attach(image: &Path, read_only: bool) -> Result<LoopDevice, LoopError> {
        let backing = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_CLOEXEC)
            .open(image)
            .map_err(|source| LoopError::Open {
                path: image.to_path_buf(),
                source,
            })?;
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/loop-control")
            .map_err(LoopError::Control)?;

        for attempt in 0..ATTACH_ATTEMPTS {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and only returns an index;
            // `control` is an open /dev/loop-control fd for the whole call.
            let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
            if n < 0 {
                return Err(LoopError::Control(std::io::Error::last_os_error()));
            }
            let path = PathBuf::from(format!("/dev/loop{n}"));
            let dev = match OpenOptions::new()
                .read(true)
                .write(!read_only)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
            {
                Ok(f) => f,
                // udev/devtmpfs may not have created the node yet: ask again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(LoopError::Open { path, source }),
            };
            match configure(&dev, &backing, image, read_only) {
                Ok(()) => {
                    debug!(dev = %path.display(), image = %image.display(), attempt, "loop attached");
                    return Ok(LoopDevice { dev, path });
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    debug!(dev = %path.display(), attempt, "loop device taken meanwhile, retrying");
                    std::thread::sleep(std::time::Duration::from_millis(
                        5 * u64::from(attempt + 1),
                    ));
                }
                Err(source) => {
                    return Err(LoopError::Configure {
                        image: image.to_path_buf(),
                        dev: path,
                        source,
                    })
                }
            }
        }
        Err(LoopError::Exhausted {
            image: image.to_path_buf(),
            attempts: ATTACH_ATTEMPTS,
        })
    }

    /// The device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tells the kernel that the backing file grew (after a resize).
    pub fn refresh_capacity(&self) -> Result<(), LoopError> {
        // SAFETY: LOOP_SET_CAPACITY takes no argument; `self.dev` is an open loop fd.
        let r = unsafe { libc::ioctl(self.dev.as_raw_fd(), LOOP_SET_CAPACITY as _, 0) };
        if r < 0 {
            return Err(LoopError::Capacity {
                dev: self.path.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

fn configure(dev: &File, backing: &File, image: &Path, read_only: bool) -> std::io::Result<()> {
    // SAFETY: loop_config is a plain C struct of integers and byte arrays; all-zero
    // is its documented "no options" value.
    let mut cfg: loop_config = unsafe { std::mem::zeroed() };
    cfg.fd = u32::try_from(backing.as_raw_fd()).map_err(std::io::Error::other)?;
    cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR as u32;
    if read_only {
        cfg.info.lo_flags |= LO_FLAGS_READ_ONLY as u32;
    }
    // The name is informational (losetup shows it); the kernel reads the real
    // backing file from the fd. Truncate, keeping the terminating NUL.
    let name = image.as_os_str().as_encoded_bytes();
    let n = name.len().min(cfg.info.lo_file_name.len() - 1);
    cfg.info.lo_file_name[..n].copy_from_slice(&name[..n]);
    // SAFETY: `dev` is an open loop device fd, `cfg` is a fully initialised
    // loop_config that outlives the call, and LOOP_CONFIGURE only reads it.
    let r = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            LOOP_CONFIGURE as _,
            &cfg as *const loop_config,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Loop devices currently backed by `image` (from sysfs), e.g. for leak checks.
pub fn devices_backed_by(image: &Path) -> Vec<PathBuf> {
    let Ok(canon) = std::fs::canonicalize(image) else {
        return Vec::new();
    };
    attached()
        .into_iter()
        .filter(|(_, backing)| *backing == canon)
        .map(|(dev, _)| dev)
        .collect()
}

/// Every attached loop device with its backing file.
pub fn attached() -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            let b = b.trim_end_matches('\n');
            let b = b.strip_suffix(" (deleted)").unwrap_or(b);
            out.push((PathBuf::from(format!("/dev/{name}")), PathBuf::from(b)));
        }
    }
    out.sort();
    out
}
