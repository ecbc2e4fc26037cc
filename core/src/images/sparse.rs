//! Writing file data without materialising holes: a block of zeros becomes
//! a hole, so a sparse file read back from an archive (GNU sparse entries
//! arrive as data and runs of zeros) stays sparse on disk. The bytes read
//! back are the same either way.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// Hole granularity: the page and block size of every filesystem berth uses.
const BLOCK: usize = 4096;

/// Copies `from` to its end into `file`, which must be new and empty,
/// seeking over all-zero blocks instead of writing them; returns the bytes
/// read. The file ends up exactly that long.
pub(crate) fn copy_sparse(from: &mut impl Read, file: &mut File) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * BLOCK];
    let mut total = 0u64;
    let mut hole_at_end = false;
    loop {
        let n = fill(from, &mut buf)?;
        if n == 0 {
            break;
        }
        for chunk in buf[..n].chunks(BLOCK) {
            if chunk.iter().all(|b| *b == 0) {
                let len = i64::try_from(chunk.len()).map_err(io::Error::other)?;
                file.seek(SeekFrom::Current(len))?;
                hole_at_end = true;
            } else {
                file.write_all(chunk)?;
                hole_at_end = false;
            }
        }
        total += n as u64;
    }
    if hole_at_end {
        // A seek alone does not make the file longer.
        file.set_len(total)?;
    }
    Ok(total)
}

/// Reads until `buf` is full or the input ends, so that blocks stay aligned
/// to the file's offsets.
fn fill(from: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match from.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn zero_blocks_become_holes_and_bytes_stay() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let mut data = vec![0u8; 8 << 20];
        data[0] = 1;
        data[(4 << 20) + 7] = 2;
        let mut f = File::create(&p).unwrap();
        let n = copy_sparse(&mut data.as_slice(), &mut f).unwrap();
        drop(f);
        assert_eq!(n, data.len() as u64);
        assert_eq!(std::fs::read(&p).unwrap(), data);
        let md = std::fs::metadata(&p).unwrap();
        // tmpfs and ext4 alike keep holes; 2 blocks of data at most, and slack.
        assert!(
            md.blocks() * 512 < 1 << 20,
            "{} bytes allocated",
            md.blocks() * 512
        );

        let p2 = d.path().join("g");
        let mut g = File::create(&p2).unwrap();
        let short = b"not a whole block";
        assert_eq!(copy_sparse(&mut &short[..], &mut g).unwrap(), 17);
        drop(g);
        assert_eq!(std::fs::read(&p2).unwrap(), short);
    }
}
