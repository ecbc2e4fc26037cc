//! Whether a loop device holds an image: a mounted image is refused for what
//! needs it quiet (a copy, an offline resize, a second writer).

use std::path::Path;
use std::time::{Duration, Instant};

use berth_bdev::loopdev;
use berth_bdev::{BdevError, Result};

/// How long to wait for an autoclear loop device to go away after an unmount.
const DETACH_WAIT: Duration = Duration::from_secs(2);

/// Fails if a loop device (only a writable one, if asked) holds `img`: the image
/// is mounted, and a copy or an offline resize would see a filesystem in flux.
/// Once one is found, `clean_stale` removes what dead processes left holding
/// images, and a device that an unmount is just releasing gets a moment to go.
pub(super) fn refuse_if_attached(
    img: &Path,
    op: &'static str,
    only_writable: bool,
    clean_stale: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let busy = || {
        loopdev::devices_backed_by(img)
            .into_iter()
            .find(|d| !only_writable || !device_read_only(d))
    };
    let start = Instant::now();
    let Some(mut dev) = busy() else {
        return Ok(());
    };
    clean_stale()?;
    while start.elapsed() < DETACH_WAIT {
        std::thread::sleep(Duration::from_millis(20));
        match busy() {
            None => return Ok(()),
            Some(d) => dev = d,
        }
    }
    let how = if only_writable { "read-write " } else { "" };
    Err(BdevError::Io {
        op,
        path: img.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::ResourceBusy,
            format!(
                "the image is {how}attached to {} (mounted); unmount it first",
                dev.display()
            ),
        ),
    })
}

/// Whether the loop device `dev` (`/dev/loopN`) is read-only, from sysfs.
fn device_read_only(dev: &Path) -> bool {
    let Some(name) = dev.file_name() else {
        return false;
    };
    std::fs::read_to_string(Path::new("/sys/block").join(name).join("ro"))
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
}
