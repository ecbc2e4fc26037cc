//! Streamed runs: a program whose stdout goes to a writer (`zfs send`) or
//! whose stdin comes from a reader (`btrfs receive`) instead of being
//! captured. Its other pipes are drained on threads of their own, so that a
//! chatty program never blocks while berth streams.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::process::Child;

use super::{join_args, CmdError, CmdOutput};

/// Copies the stdout of `child` (spawned with piped stdout and stderr)
/// into `out`, then waits for it.
pub(super) fn copy_out(
    mut child: Child,
    prog: &str,
    args: &[&OsStr],
    out: &mut dyn Write,
) -> Result<CmdOutput, CmdError> {
    let stderr = drain(child.stderr.take());
    let copied = match child.stdout.take() {
        Some(mut from) => std::io::copy(&mut from, out).map(drop),
        None => Err(std::io::Error::other("no stdout pipe")),
    };
    finish_streamed(prog, args, child, stderr, copied, "writing the output")
}

/// Copies `input` to its end into the stdin of `child` (spawned with all
/// three pipes), then waits for it.
pub(super) fn copy_in(
    mut child: Child,
    prog: &str,
    args: &[&OsStr],
    input: &mut dyn Read,
) -> Result<CmdOutput, CmdError> {
    let stderr = drain(child.stderr.take());
    let stdout = drain(child.stdout.take());
    let copied = match child.stdin.take() {
        Some(mut to) => match std::io::copy(input, &mut to) {
            // The program stopped reading: its exit status says why.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            // Dropping `to` closes the pipe: the program sees the end.
            r => r.map(drop),
        },
        None => Err(std::io::Error::other("no stdin pipe")),
    };
    let mut out = finish_streamed(prog, args, child, stderr, copied, "reading the input")?;
    out.stdout = stdout.join().unwrap_or_default();
    Ok(out)
}

/// Reads a pipe to its end on a thread of its own, so that a chatty program
/// never blocks on it while berth streams its other end.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut text);
        }
        String::from_utf8_lossy(&text).into_owned()
    })
}

/// Waits for a streamed run. A failure on berth's side of the stream kills
/// the program first (it may be blocked on the pipe) and is the error; else
/// the exit status decides, as for `run`.
fn finish_streamed(
    prog: &str,
    args: &[&OsStr],
    mut child: Child,
    stderr: std::thread::JoinHandle<String>,
    copied: std::io::Result<()>,
    what: &'static str,
) -> Result<CmdOutput, CmdError> {
    if let Err(source) = copied {
        let _ = child.kill();
        let _ = child.wait();
        let _ = stderr.join();
        return Err(CmdError::Stream {
            prog: prog.to_owned(),
            args: join_args(args),
            what,
            source,
        });
    }
    let status = child.wait().map_err(|source| CmdError::Spawn {
        prog: prog.to_owned(),
        source,
    })?;
    let stderr = stderr.join().unwrap_or_default().trim().to_owned();
    if !status.success() {
        return Err(CmdError::Failed {
            prog: prog.to_owned(),
            args: join_args(args),
            status: status.into(),
            stderr,
            stdout: String::new(),
        });
    }
    Ok(CmdOutput {
        stdout: String::new(),
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::io::{Read, Write};

    use super::super::{CmdError, HostRunner, Runner};

    #[test]
    fn streamed_runs_move_data_and_report_failures() {
        let mut out = Vec::new();
        HostRunner
            .run_into("printf", &[OsStr::new("abc")], &mut out)
            .unwrap();
        assert_eq!(out, b"abc");
        let mut input: &[u8] = b"x\ny\nz\n";
        let got = HostRunner
            .run_from("wc", &[OsStr::new("-l")], &mut input)
            .unwrap();
        assert_eq!(got.stdout.trim(), "3");
        // A program that stops reading early fails by its own status.
        let mut big = std::io::repeat(b'a').take(1 << 24);
        let e = HostRunner
            .run_from("sh", &[OsStr::new("-c"), OsStr::new("exit 4")], &mut big)
            .unwrap_err();
        assert!(e.to_string().contains("exit code 4"), "{e}");
        // A writer that fails stops the program.
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from_raw_os_error(28))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let e = HostRunner.run_into("yes", &[], &mut Full).unwrap_err();
        assert!(matches!(e, CmdError::Stream { .. }), "{e}");
    }
}
