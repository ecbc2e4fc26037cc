//! The 8-byte messages a forked child sends its parent over a CLOEXEC pipe:
//! which setup step failed and its errno, or (for `enter`) how the command
//! ended. A clean exec closes the pipe unread.

use std::os::fd::OwnedFd;

use rustix::io::Errno;

use crate::error::{Result, RuntimeError};

pub(crate) const MSG_LEN: usize = 8;

/// 8 bytes into an empty pipe are one atomic write; if it fails anyway the
/// parent sees a short message and says so.
pub(crate) fn write_message(fd: &OwnedFd, tag: u32, value: i32) {
    let mut buf = [0u8; MSG_LEN];
    buf[..4].copy_from_slice(&tag.to_le_bytes());
    buf[4..].copy_from_slice(&value.to_le_bytes());
    while let Err(Errno::INTR) = rustix::io::write(fd, &buf) {}
}

/// `None` at EOF without a message, else the first message's tag and value.
pub(crate) fn read_message(rd: &OwnedFd) -> Result<Option<(u32, i32)>> {
    let mut buf = [0u8; MSG_LEN];
    let mut got = 0;
    while got < MSG_LEN {
        match rustix::io::read(rd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(e) => {
                return Err(RuntimeError::Protocol {
                    reason: format!("read failed: {e}"),
                })
            }
        }
    }
    match got {
        0 => Ok(None),
        MSG_LEN => {
            let [t0, t1, t2, t3, v0, v1, v2, v3] = buf;
            let tag = u32::from_le_bytes([t0, t1, t2, t3]);
            Ok(Some((tag, i32::from_le_bytes([v0, v1, v2, v3]))))
        }
        n => Err(RuntimeError::Protocol {
            reason: format!("short message of {n} bytes"),
        }),
    }
}
