//! File contents: reflink first, else a sparse copy that keeps holes as holes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{copy_file_range, ftruncate, ioctl_ficlone, seek, SeekFrom};
use rustix::io::Errno;

use super::meta::errno;
use crate::error::{BdevError, Result};

/// Largest single copy_file_range request (the kernel caps it near 2 GiB anyway).
const CHUNK: u64 = 1 << 30;
/// Buffer for the read/write fallback.
const BUF: usize = 1 << 20;

/// Copies `size` bytes of `src` into the new, empty `dst`; returns whether the data
/// was reflinked. `try_reflink` is shared by all workers and cleared once the
/// filesystem says it cannot clone at all, so later files skip the attempt.
pub(super) fn copy_data(
    src: &File,
    dst: &File,
    size: u64,
    try_reflink: &AtomicBool,
    src_path: &Path,
    dst_path: &Path,
) -> Result<bool> {
    if size > 0 && try_reflink.load(Ordering::Relaxed) {
        match ioctl_ficlone(dst, src) {
            Ok(()) => return Ok(true),
            // No clone support on this fs or between these two: stop trying.
            Err(Errno::OPNOTSUPP | Errno::XDEV | Errno::NOTTY | Errno::NOSYS) => {
                try_reflink.store(false, Ordering::Relaxed);
            }
            // This file only (a swapfile, mismatched nocow/compress flags): fall back.
            Err(Errno::INVAL | Errno::TXTBSY) => {}
            Err(e) => return Err(errno("reflink", dst_path)(e)),
        }
    }
    sparse_copy(src, dst, size, src_path, dst_path)?;
    Ok(false)
}

/// Copies only the data extents (SEEK_DATA/SEEK_HOLE), then sets the length so a
/// trailing hole stays a hole.
fn sparse_copy(src: &File, dst: &File, size: u64, src_path: &Path, dst_path: &Path) -> Result<()> {
    let mut off = 0u64;
    while off < size {
        let data = match seek(src, SeekFrom::Data(off)) {
            Ok(d) => d,
            // Only a hole is left.
            Err(Errno::NXIO) => break,
            // No SEEK_DATA on this fs: treat the rest as data.
            Err(Errno::INVAL | Errno::OPNOTSUPP) => off,
            Err(e) => return Err(errno("find data in", src_path)(e)),
        };
        if data >= size {
            break;
        }
        let hole = match seek(src, SeekFrom::Hole(data)) {
            Ok(h) => h.min(size),
            Err(Errno::NXIO | Errno::INVAL | Errno::OPNOTSUPP) => size,
            Err(e) => return Err(errno("find holes in", src_path)(e)),
        };
        // SEEK_HOLE past a data offset is always beyond it; guard against a
        // misbehaving filesystem looping us forever.
        let end = if hole > data { hole } else { size };
        copy_range(src, dst, data, end, src_path, dst_path)?;
        off = end;
    }
    ftruncate(dst, size).map_err(errno("set the size of", dst_path))
}

/// Copies bytes `[start, end)` to the same offsets, in the kernel when it can.
fn copy_range(
    src: &File,
    dst: &File,
    start: u64,
    end: u64,
    src_path: &Path,
    dst_path: &Path,
) -> Result<()> {
    let mut in_off = start;
    let mut out_off = start;
    while in_off < end {
        let len = usize::try_from((end - in_off).min(CHUNK)).unwrap_or(usize::MAX);
        match copy_file_range(src, Some(&mut in_off), dst, Some(&mut out_off), len) {
            // The source shrank under us; the final ftruncate restores the size.
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(Errno::INTR) => {}
            // Across filesystems or unsupported here: copy through user space.
            Err(Errno::XDEV | Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {
                return rw_copy(src, dst, in_off, end, src_path, dst_path);
            }
            Err(e) => return Err(errno("copy data to", dst_path)(e)),
        }
    }
    Ok(())
}

/// The user-space fallback; all-zero blocks are skipped so they stay holes.
fn rw_copy(
    src: &File,
    dst: &File,
    mut off: u64,
    end: u64,
    src_path: &Path,
    dst_path: &Path,
) -> Result<()> {
    let mut buf = vec![0u8; BUF];
    while off < end {
        let want = usize::try_from(end - off).map_or(BUF, |n| n.min(BUF));
        let n = src
            .read_at(&mut buf[..want], off)
            .map_err(BdevError::io("read", src_path))?;
        if n == 0 {
            return Ok(());
        }
        let chunk = &buf[..n];
        if chunk.iter().any(|b| *b != 0) {
            dst.write_all_at(chunk, off)
                .map_err(BdevError::io("write", dst_path))?;
        }
        off += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_copy_keeps_holes_and_data() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        let f = File::create(&a).unwrap();
        f.set_len(32 << 20).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(&[7u8; 5000], 20 << 20).unwrap();
        f.sync_all().unwrap();
        let src = File::open(&a).unwrap();
        let dst = File::create(&b).unwrap();
        let no_reflink = AtomicBool::new(false);
        let r = copy_data(&src, &dst, 32 << 20, &no_reflink, &a, &b).unwrap();
        assert!(!r);
        dst.sync_all().unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let md = std::fs::metadata(&b).unwrap();
        assert_eq!(md.len(), 32 << 20);
        assert!(md.blocks() * 512 < 1 << 20, "{} blocks", md.blocks());
    }

    #[test]
    fn user_space_fallback_skips_zero_blocks() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        let mut data = vec![0u8; 3 * BUF];
        data[BUF * 2 + 5] = 1;
        std::fs::write(&a, &data).unwrap();
        let src = File::open(&a).unwrap();
        let dst = File::create(&b).unwrap();
        rw_copy(&src, &dst, 0, data.len() as u64, &a, &b).unwrap();
        dst.set_len(data.len() as u64).unwrap();
        dst.sync_all().unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), data);
        assert!(std::fs::metadata(&b).unwrap().blocks() * 512 <= (BUF as u64) + 65536);
    }
}
