//! Keeping the root directory's times through an incremental btrfs stream.
//!
//! `btrfs send -p` creates new files as orphans (`o257-9-0`) in the
//! subvolume's root and renames them into place. The receiver's root
//! directory thus changes, but when the sender's root did not, the stream
//! sends no `utimes` for it: the received root ends up with the time of the
//! receive. This reader passes a stream through unchanged, and when it ends
//! without a `utimes` of the root, adds one (with the base's root times,
//! which an unchanged root still has) before the `end` command, while the
//! received subvolume is still writable.
//!
//! The stream (send protocol v1, as `btrfs send` writes it by default): a
//! 17-byte header, then commands of a 10-byte header (`len` u32, `cmd` u16,
//! `crc` u32: CRC32C, seed 0, of the command with its crc zeroed) and `len`
//! bytes of attributes (`type` u16, `len` u16, value).

use std::fs::Metadata;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;

const STREAM_HEADER: usize = 17;
const CMD_HEADER: usize = 10;
const CMD_UTIMES: u16 = 20;
const CMD_END: u16 = 21;
const ATTR_CTIME: u16 = 9;
const ATTR_MTIME: u16 = 10;
const ATTR_ATIME: u16 = 11;
const ATTR_PATH: u16 = 15;
/// Commands are at most 64 KiB in v1; more is a damaged stream.
const MAX_CMD: usize = 1 << 20;

/// A stream passed through to `btrfs receive`, see the module documentation.
pub(super) struct KeepRootTimes<R> {
    inner: R,
    /// The root times to set unless the stream sets them.
    base: Metadata,
    /// Bytes ready to be read out.
    out: Vec<u8>,
    pos: usize,
    header_left: usize,
    root_set: bool,
    done: bool,
}

impl<R: Read> KeepRootTimes<R> {
    pub(super) fn new(inner: R, base: Metadata) -> Self {
        KeepRootTimes {
            inner,
            base,
            out: Vec::new(),
            pos: 0,
            header_left: STREAM_HEADER,
            root_set: false,
            done: false,
        }
    }

    /// Reads the next piece into `out`: the stream header, or one command
    /// (preceded by the added `utimes` when it is the end).
    fn refill(&mut self) -> io::Result<()> {
        self.out.clear();
        self.pos = 0;
        if self.header_left > 0 {
            self.out.resize(self.header_left, 0);
            let n = self.inner.read(&mut self.out)?;
            self.out.truncate(n);
            self.header_left -= n;
            if n == 0 {
                self.done = true;
            }
            return Ok(());
        }
        let mut head = [0u8; CMD_HEADER];
        if !read_all(&mut self.inner, &mut head)? {
            // Ended without an `end` command: receive stops at the end of
            // its input, so the times still go last.
            self.add_root_times();
            self.done = true;
            return Ok(());
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let cmd = u16::from_le_bytes([head[4], head[5]]);
        if len > MAX_CMD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a btrfs send command of {len} bytes; the stream is damaged"),
            ));
        }
        let mut body = vec![0u8; len];
        if !read_all(&mut self.inner, &mut body)? && len > 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if cmd == CMD_UTIMES && attr(&body, ATTR_PATH) == Some(&[][..]) {
            self.root_set = true;
        }
        if cmd == CMD_END {
            self.add_root_times();
        }
        self.out.extend_from_slice(&head);
        self.out.extend_from_slice(&body);
        Ok(())
    }

    fn add_root_times(&mut self) {
        if self.root_set {
            return;
        }
        self.root_set = true;
        let b = &self.base;
        let cmd = utimes_root(
            (b.atime(), b.atime_nsec()),
            (b.mtime(), b.mtime_nsec()),
            (b.ctime(), b.ctime_nsec()),
        );
        self.out.extend_from_slice(&cmd);
    }
}

impl<R: Read> Read for KeepRootTimes<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.out.len() {
            if self.done {
                return Ok(0);
            }
            self.refill()?;
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Fills `buf`; false if the input ended before its first byte.
fn read_all(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) if n == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The value of attribute `kind` in a command's body.
fn attr(body: &[u8], kind: u16) -> Option<&[u8]> {
    let mut p = 0;
    while p + 4 <= body.len() {
        let t = u16::from_le_bytes([body[p], body[p + 1]]);
        let l = u16::from_le_bytes([body[p + 2], body[p + 3]]) as usize;
        let v = body.get(p + 4..p + 4 + l)?;
        if t == kind {
            return Some(v);
        }
        p += 4 + l;
    }
    None
}

/// A `utimes` command for the subvolume's root.
fn utimes_root(atime: (i64, i64), mtime: (i64, i64), ctime: (i64, i64)) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&ATTR_PATH.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    for (kind, (sec, nsec)) in [
        (ATTR_ATIME, atime),
        (ATTR_MTIME, mtime),
        (ATTR_CTIME, ctime),
    ] {
        body.extend_from_slice(&kind.to_le_bytes());
        body.extend_from_slice(&12u16.to_le_bytes());
        body.extend_from_slice(&(sec as u64).to_le_bytes());
        body.extend_from_slice(&(nsec as u32).to_le_bytes());
    }
    let mut cmd = Vec::with_capacity(CMD_HEADER + body.len());
    cmd.extend_from_slice(&(body.len() as u32).to_le_bytes());
    cmd.extend_from_slice(&CMD_UTIMES.to_le_bytes());
    cmd.extend_from_slice(&0u32.to_le_bytes());
    cmd.extend_from_slice(&body);
    let crc = crc32c(0, &cmd);
    cmd[6..10].copy_from_slice(&crc.to_le_bytes());
    cmd
}

/// CRC32C (Castagnoli), reflected, from `seed`, without a final inversion:
/// what btrfs puts in a send command.
fn crc32c(seed: u32, data: &[u8]) -> u32 {
    let mut crc = seed;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnoli() {
        // The standard check value (seed and result inverted).
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
    }

    /// A command: its type and attributes (type, value).
    type Cmd = (u16, Vec<(u16, Vec<u8>)>);

    /// A stream of `cmds`.
    fn stream(cmds: &[Cmd]) -> Vec<u8> {
        let mut s = b"btrfs-stream\0\x01\0\0\0".to_vec();
        for (cmd, attrs) in cmds {
            let mut body = Vec::new();
            for (t, v) in attrs {
                body.extend_from_slice(&t.to_le_bytes());
                body.extend_from_slice(&(v.len() as u16).to_le_bytes());
                body.extend_from_slice(v);
            }
            s.extend_from_slice(&(body.len() as u32).to_le_bytes());
            s.extend_from_slice(&cmd.to_le_bytes());
            s.extend_from_slice(&[0; 4]);
            s.extend_from_slice(&body);
        }
        s
    }

    fn through(input: &[u8]) -> Vec<u8> {
        let base = std::fs::metadata("/").unwrap();
        let mut out = Vec::new();
        KeepRootTimes::new(input, base)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn the_root_gets_times_unless_the_stream_sets_them() {
        let mkfile = (3, vec![(ATTR_PATH, b"o257-9-0".to_vec())]);
        let end = (CMD_END, Vec::new());
        let without = stream(&[mkfile.clone(), end.clone()]);
        let got = through(&without);
        assert_eq!(got.len(), without.len() + CMD_HEADER + 4 + 3 * 16);
        // Inserted before `end`, which stays last.
        assert_eq!(
            &got[got.len() - CMD_HEADER..],
            &without[without.len() - CMD_HEADER..]
        );
        let root = (CMD_UTIMES, vec![(ATTR_PATH, Vec::new())]);
        let with = stream(&[mkfile, root, end]);
        assert_eq!(through(&with), with);
        // A stream cut before its `end` still gets them, last.
        let cut = stream(&[(3, vec![(ATTR_PATH, b"x".to_vec())])]);
        assert_eq!(through(&cut).len(), cut.len() + CMD_HEADER + 52);
    }
}
