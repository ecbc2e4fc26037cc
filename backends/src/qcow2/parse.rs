//! Pure parsers for the qcow2 backend: `qemu-img info --output=json`, the qcow2
//! header's backing-file field and `/proc/PID/cmdline`.

use std::path::{Path, PathBuf};

use berth_bdev::{BdevError, Result};

/// What `qemu-img info --output=json` says about one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub virtual_size: u64,
    /// Bytes allocated to the image file itself (its backing chain not included).
    pub actual_size: u64,
    pub backing: Option<PathBuf>,
}

pub fn image_info(json: &str) -> Result<ImageInfo> {
    let bad = |reason: String| BdevError::Parse {
        what: "qemu-img info output",
        reason,
    };
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let num = |key: &str| {
        v.get(key)
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| bad(format!("no numeric {key:?}")))
    };
    let backing = v
        .get("full-backing-filename")
        .or_else(|| v.get("backing-filename"))
        .and_then(serde_json::Value::as_str)
        .map(PathBuf::from);
    Ok(ImageInfo {
        virtual_size: num("virtual-size")?,
        // Absent on some protocols; a local file always has it.
        actual_size: num("actual-size").unwrap_or(0),
        backing,
    })
}

/// What `qemu-img measure --output=json -O qcow2 IMAGE` says a converted copy
/// will take on disk ("required"; "fully-allocated" is the preallocated size).
pub fn measure_required(json: &str) -> Result<u64> {
    let bad = |reason: String| BdevError::Parse {
        what: "qemu-img measure output",
        reason,
    };
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    v.get("required")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| bad("no numeric \"required\"".to_owned()))
}

/// Bytes of the qcow2 header that locate the backing file name.
pub const HEADER_LEN: usize = 20;
const MAGIC: &[u8; 4] = b"QFI\xfb";

/// Where the backing file name sits in a qcow2 file (offset, length), from the first
/// `HEADER_LEN` bytes; `None` when the image has no backing file.
pub fn backing_location(header: &[u8]) -> Result<Option<(u64, usize)>> {
    let bad = |reason: &str| BdevError::Parse {
        what: "qcow2 header",
        reason: reason.to_owned(),
    };
    if header.len() < HEADER_LEN || &header[..4] != MAGIC {
        return Err(bad("not a qcow2 image (bad magic)"));
    }
    let mut off = [0u8; 8];
    off.copy_from_slice(&header[8..16]);
    let mut len = [0u8; 4];
    len.copy_from_slice(&header[16..20]);
    let (off, len) = (u64::from_be_bytes(off), u32::from_be_bytes(len));
    if off == 0 || len == 0 {
        return Ok(None);
    }
    if len > 1023 {
        return Err(bad("backing file name longer than 1023 bytes"));
    }
    Ok(Some((off, len as usize)))
}

/// The backing file named in an image at `image`, relative names resolved against
/// the image's directory as qemu does.
pub fn backing_path(image: &Path, name: &[u8]) -> PathBuf {
    let p = PathBuf::from(String::from_utf8_lossy(name).into_owned());
    if p.is_absolute() {
        p
    } else {
        image.parent().unwrap_or(Path::new("/")).join(p)
    }
}

/// Whether `/proc/PID/cmdline` is a qemu-storage-daemon started with `pidfile`
/// (a reused pid belongs to some other program).
pub fn is_our_daemon(cmdline: &[u8], pidfile: &Path) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_qsd = args
        .first()
        .is_some_and(|a| a.ends_with(b"qemu-storage-daemon"));
    let pf = pidfile.as_os_str().as_encoded_bytes();
    is_qsd && args.windows(2).any(|w| w[0] == b"--pidfile" && w[1] == pf)
}

#[cfg(test)]
mod tests {
    use super::*;

    // qemu-img 10.0 `info --output=json -U` of a clone made with
    // `qemu-img create -f qcow2 -b /var/tmp/qh/base.qcow2 -F qcow2 c.qcow2`.
    const CLONE_INFO: &str = r#"{
    "children": [
        {
            "name": "file",
            "info": {
                "children": [
                ],
                "virtual-size": 197120,
                "filename": "c.qcow2",
                "format": "file",
                "actual-size": 200704,
                "format-specific": {
                    "type": "file",
                    "data": {
                    }
                },
                "dirty-flag": false
            }
        }
    ],
    "backing-filename-format": "qcow2",
    "virtual-size": 67108864,
    "filename": "c.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 200704,
    "format-specific": {
        "type": "qcow2",
        "data": {
            "compat": "1.1",
            "compression-type": "zlib",
            "lazy-refcounts": false,
            "refcount-bits": 16,
            "corrupt": false,
            "extended-l2": false
        }
    },
    "full-backing-filename": "/var/tmp/qh/base.qcow2",
    "backing-filename": "/var/tmp/qh/base.qcow2",
    "dirty-flag": false
}"#;

    #[test]
    fn info_json_is_parsed() {
        let i = image_info(CLONE_INFO).unwrap();
        assert_eq!(i.virtual_size, 64 << 20);
        assert_eq!(i.actual_size, 200_704);
        assert_eq!(i.backing, Some(PathBuf::from("/var/tmp/qh/base.qcow2")));
        let base =
            image_info(r#"{"virtual-size": 268435456, "actual-size": 1253376, "format": "qcow2"}"#)
                .unwrap();
        assert_eq!(base.backing, None);
        assert!(image_info("{}").is_err());
        assert!(image_info("not json").is_err());
    }

    #[test]
    fn header_backing_field_is_read() {
        // The first 20 bytes of that clone (xxd -p).
        let hex = "514649fb00000003000000000000021000000016";
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(backing_location(&bytes).unwrap(), Some((0x210, 22)));
        let mut none = bytes.clone();
        none[8..20].fill(0);
        assert_eq!(backing_location(&none).unwrap(), None);
        assert!(backing_location(b"RIFF0000000000000000").is_err());
        assert!(backing_location(&bytes[..10]).is_err());
        assert_eq!(
            backing_path(Path::new("/p/c.qcow2"), b"base.qcow2"),
            PathBuf::from("/p/base.qcow2")
        );
        assert_eq!(
            backing_path(Path::new("/p/c.qcow2"), b"/q/b.qcow2"),
            PathBuf::from("/q/b.qcow2")
        );
    }

    #[test]
    fn proc_cmdline_is_parsed() {
        let pf = Path::new("/p/.run/c1/qsd.pid");
        let cmdline =
            b"qemu-storage-daemon\0--blockdev\0{}\0--pidfile\0/p/.run/c1/qsd.pid\0--daemonize\0";
        assert!(is_our_daemon(cmdline, pf));
        assert!(!is_our_daemon(cmdline, Path::new("/p/.run/c2/qsd.pid")));
        assert!(!is_our_daemon(
            b"sleep\0--pidfile\0/p/.run/c1/qsd.pid\0",
            pf
        ));
    }

    #[test]
    fn measure_output_gives_the_required_bytes() {
        let out = r#"{
    "bitmaps": 0,
    "required": 393216,
    "fully-allocated": 1074135040
}"#;
        assert_eq!(measure_required(out).unwrap(), 393216);
        assert!(measure_required("{}").is_err());
        assert!(measure_required("not json").is_err());
    }
}
