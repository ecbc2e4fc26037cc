//! File contents: reflink first, else a sparse copy that keeps holes as holes.
//!
//! Holes are found with SEEK_DATA/SEEK_HOLE where the filesystem knows them. Where
//! it does not (FUSE without lseek support answers "all data", others fail with
//! EINVAL/ENXIO/EOPNOTSUPP), the file is copied in blocks and all-zero blocks are
//! seeked over, so they become holes again.

use std::fs::{File, Metadata};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{copy_file_range, ftruncate, ioctl_ficlone, seek, SeekFrom};
use rustix::io::Errno;

use super::meta::errno;
use crate::error::{BdevError, Result};

/// Largest single copy_file_range request (the kernel caps it near 2 GiB anyway).
const CHUNK: u64 = 1 << 30;
/// Buffer for the block-wise copy.
const BUF: usize = 1 << 20;
/// Granularity at which the block-wise copy finds zeros to leave as holes.
const BLOCK: usize = 4096;
/// Extra allocation a sparse copy may have over its source and the data written
/// (block size and extent-tree differences), well under a filled hole.
const SLACK: u64 = 1 << 20;

/// How a file's contents were copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Copied {
    /// Shared with the source (FICLONE).
    Reflinked,
    /// Copied; the source's holes (if any) are holes in the copy.
    Sparse,
    /// Copied, but the target allocated the source's holes: `allocated` bytes now
    /// hold a file whose source had `source_allocated`.
    HolesFilled {
        allocated: u64,
        source_allocated: u64,
    },
}

/// Copies the contents of `src` (described by `md`) into the new, empty `dst`.
/// `try_reflink` is shared by all workers and cleared once the filesystem says it
/// cannot clone at all, so later files skip the attempt.
pub(super) fn copy_data(
    src: &File,
    dst: &File,
    md: &Metadata,
    try_reflink: &AtomicBool,
    src_path: &Path,
    dst_path: &Path,
) -> Result<Copied> {
    let size = md.len();
    if size > 0 && try_reflink.load(Ordering::Relaxed) {
        match ioctl_ficlone(dst, src) {
            Ok(()) => return Ok(Copied::Reflinked),
            // No clone support on this fs or between these two: stop trying.
            Err(Errno::OPNOTSUPP | Errno::XDEV | Errno::NOTTY | Errno::NOSYS) => {
                try_reflink.store(false, Ordering::Relaxed);
            }
            // This file only (a swapfile, mismatched nocow/compress flags): fall back.
            Err(Errno::INVAL | Errno::TXTBSY) => {}
            Err(e) => return Err(errno("reflink", dst_path)(e)),
        }
    }
    let source_allocated = md.blocks() * 512;
    let written = sparse_copy(src, dst, size, source_allocated, src_path, dst_path)?;
    if source_allocated >= size {
        return Ok(Copied::Sparse);
    }
    // The source has holes: check that the target kept them.
    let allocated = dst
        .metadata()
        .map_err(BdevError::io("stat", dst_path))?
        .blocks()
        * 512;
    if allocated > source_allocated.max(written) + SLACK {
        return Ok(Copied::HolesFilled {
            allocated,
            source_allocated,
        });
    }
    Ok(Copied::Sparse)
}

/// Copies only the data of `src`, then sets the length so a trailing hole stays a
/// hole; returns the bytes written. `allocated` is what the source occupies on
/// disk: a file that has holes but whose filesystem reports it as all data does
/// not know its holes, and is copied block by block instead.
fn sparse_copy(
    src: &File,
    dst: &File,
    size: u64,
    allocated: u64,
    src_path: &Path,
    dst_path: &Path,
) -> Result<u64> {
    let mut off = 0u64;
    let mut written = 0u64;
    while off < size {
        let data = match seek(src, SeekFrom::Data(off)) {
            Ok(d) => d,
            // Only a hole is left; at offset 0 of a file with blocks, the
            // filesystem cannot be trusted to know (a FUSE server's answer).
            Err(Errno::NXIO) if off > 0 || allocated == 0 => break,
            Err(Errno::NXIO | Errno::INVAL | Errno::OPNOTSUPP) => {
                written += block_copy(src, dst, off, size, src_path, dst_path)?;
                break;
            }
            Err(e) => return Err(errno("find data in", src_path)(e)),
        };
        if data >= size {
            break;
        }
        let hole = match seek(src, SeekFrom::Hole(data)) {
            Ok(h) => h.min(size),
            Err(Errno::NXIO | Errno::INVAL | Errno::OPNOTSUPP) => {
                written += block_copy(src, dst, data, size, src_path, dst_path)?;
                break;
            }
            Err(e) => return Err(errno("find holes in", src_path)(e)),
        };
        // One extent over the whole of a file that has holes: the filesystem does
        // not know where they are (generic lseek, as on FUSE).
        if data == 0 && hole >= size && allocated < size {
            written += block_copy(src, dst, 0, size, src_path, dst_path)?;
            break;
        }
        // SEEK_HOLE past a data offset is always beyond it; guard against a
        // misbehaving filesystem looping us forever.
        let end = if hole > data { hole } else { size };
        written += copy_range(src, dst, data, end, src_path, dst_path)?;
        off = end;
    }
    ftruncate(dst, size).map_err(errno("set the size of", dst_path))?;
    Ok(written)
}

/// Copies bytes `[start, end)` to the same offsets, in the kernel when it can;
/// returns the bytes written.
fn copy_range(
    src: &File,
    dst: &File,
    start: u64,
    end: u64,
    src_path: &Path,
    dst_path: &Path,
) -> Result<u64> {
    let mut in_off = start;
    let mut out_off = start;
    while in_off < end {
        let len = usize::try_from((end - in_off).min(CHUNK)).unwrap_or(usize::MAX);
        match copy_file_range(src, Some(&mut in_off), dst, Some(&mut out_off), len) {
            // The source shrank under us; the final ftruncate restores the size.
            Ok(0) => break,
            Ok(_) => {}
            Err(Errno::INTR) => {}
            // Across filesystems or unsupported here: copy through user space.
            Err(Errno::XDEV | Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {
                let rest = block_copy(src, dst, in_off, end, src_path, dst_path)?;
                return Ok(in_off - start + rest);
            }
            Err(e) => return Err(errno("copy data to", dst_path)(e)),
        }
    }
    Ok(in_off - start)
}

/// Copies `[off, end)` through user space in blocks, writing only the blocks that
/// hold a non-zero byte, so all-zero blocks stay (or become) holes; returns the
/// bytes written. The caller sets the final length.
fn block_copy(
    src: &File,
    dst: &File,
    mut off: u64,
    end: u64,
    src_path: &Path,
    dst_path: &Path,
) -> Result<u64> {
    let mut buf = vec![0u8; BUF];
    let mut written = 0u64;
    while off < end {
        let want = usize::try_from(end - off).map_or(BUF, |n| n.min(BUF));
        let n = src
            .read_at(&mut buf[..want], off)
            .map_err(BdevError::io("read", src_path))?;
        if n == 0 {
            break;
        }
        for (start, run) in nonzero_runs(&buf[..n]) {
            dst.write_all_at(run, off + start as u64)
                .map_err(BdevError::io("write", dst_path))?;
            written += run.len() as u64;
        }
        off += n as u64;
    }
    Ok(written)
}

/// The runs of consecutive `BLOCK`-sized pieces of `buf` that hold a non-zero
/// byte, with their offsets in `buf`.
fn nonzero_runs(buf: &[u8]) -> Vec<(usize, &[u8])> {
    let mut runs = Vec::new();
    let mut start = None;
    let mut pos = 0;
    for block in buf.chunks(BLOCK) {
        let data = block.iter().any(|b| *b != 0);
        match (data, start) {
            (true, None) => start = Some(pos),
            (false, Some(s)) => {
                runs.push((s, &buf[s..pos]));
                start = None;
            }
            _ => {}
        }
        pos += block.len();
    }
    if let Some(s) = start {
        runs.push((s, &buf[s..]));
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let md = src.metadata().unwrap();
        let dst = File::create(&b).unwrap();
        let no_reflink = AtomicBool::new(false);
        let r = copy_data(&src, &dst, &md, &no_reflink, &a, &b).unwrap();
        assert_eq!(r, Copied::Sparse);
        dst.sync_all().unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let md = std::fs::metadata(&b).unwrap();
        assert_eq!(md.len(), 32 << 20);
        assert!(md.blocks() * 512 < 1 << 20, "{} blocks", md.blocks());
    }

    #[test]
    fn block_copy_seeks_over_zero_blocks() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        // Zeros written out (no holes in the source), data in two small spots.
        let mut data = vec![0u8; 3 * BUF];
        data[5] = 1;
        data[BUF * 2 + 5] = 1;
        std::fs::write(&a, &data).unwrap();
        let src = File::open(&a).unwrap();
        let dst = File::create(&b).unwrap();
        let written = block_copy(&src, &dst, 0, data.len() as u64, &a, &b).unwrap();
        assert_eq!(written, 2 * BLOCK as u64);
        dst.set_len(data.len() as u64).unwrap();
        dst.sync_all().unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), data);
        assert!(std::fs::metadata(&b).unwrap().blocks() * 512 <= 4 * BLOCK as u64);
    }

    #[test]
    fn nonzero_runs_coalesce_blocks() {
        let mut buf = vec![0u8; 5 * BLOCK + 100];
        buf[BLOCK] = 1;
        buf[2 * BLOCK + 7] = 2;
        buf[5 * BLOCK + 99] = 3;
        let runs: Vec<(usize, usize)> = nonzero_runs(&buf)
            .into_iter()
            .map(|(s, r)| (s, r.len()))
            .collect();
        assert_eq!(runs, vec![(BLOCK, 2 * BLOCK), (5 * BLOCK, 100)]);
        assert!(nonzero_runs(&[0u8; 3 * BLOCK]).is_empty());
        assert_eq!(nonzero_runs(&[1u8; 10]).len(), 1);
    }
}
