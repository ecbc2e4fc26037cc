//! The one way berth runs an external program.
//!
//! Never through a shell, always with `LC_ALL=C` so that parsed output and error
//! text do not depend on the user's locale, and with stderr captured into the error.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use tracing::debug;

mod stream;

/// How a command ended: its exit code, kept as a number, or the signal that
/// killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl From<std::process::ExitStatus> for ExitStatus {
    fn from(s: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (s.code(), s.signal()) {
            (Some(c), _) => ExitStatus::Code(c),
            (None, Some(sig)) => ExitStatus::Signal(sig),
            // Neither happens for a child that was waited for.
            (None, None) => ExitStatus::Code(-1),
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("cannot run {prog} (is it installed?)")]
    Spawn {
        prog: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{prog} {args} failed ({status}): {stderr}")]
    Failed {
        prog: String,
        args: String,
        status: ExitStatus,
        stderr: String,
        /// What it printed before failing: `zfs get` of several datasets lists
        /// the ones that exist even when others do not.
        stdout: String,
    },

    #[error("scripted runner: unexpected call {prog} {args}")]
    Unexpected { prog: String, args: String },

    /// Moving a streamed command's data failed on berth's side (the file or
    /// pipe it reads from or writes to); the command was stopped.
    #[error("{what} of {prog} {args}")]
    Stream {
        prog: String,
        args: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl CmdError {
    /// The captured stderr of a failed command, empty for other errors.
    pub fn stderr(&self) -> &str {
        match self {
            CmdError::Failed { stderr, .. } => stderr,
            _ => "",
        }
    }

    /// The captured stdout of a failed command, empty for other errors.
    pub fn stdout(&self) -> &str {
        match self {
            CmdError::Failed { stdout, .. } => stdout,
            _ => "",
        }
    }
}

/// What a successful command printed.
#[derive(Debug, Clone, Default)]
pub struct CmdOutput {
    pub stdout: String,
    pub stderr: String,
}

pub trait Runner: Send + Sync {
    /// Runs `prog` with `args`, failing on a non-zero exit.
    fn run(&self, prog: &str, args: &[&OsStr]) -> Result<CmdOutput, CmdError>;

    /// Runs `first | second`, e.g. `zfs send | zfs recv`, failing if either fails.
    fn pipe(
        &self,
        first: (&str, &[&OsStr]),
        second: (&str, &[&OsStr]),
    ) -> Result<CmdOutput, CmdError>;

    /// Runs `prog` with its stdout streamed into `out` (`zfs send`, `btrfs
    /// send`) instead of captured; the returned output has its stderr only.
    /// A failed write to `out` stops the command and is the error.
    fn run_into(
        &self,
        prog: &str,
        args: &[&OsStr],
        out: &mut dyn std::io::Write,
    ) -> Result<CmdOutput, CmdError>;

    /// Runs `prog` with its stdin streamed from `input` (`zfs recv`, `btrfs
    /// receive`) up to its end. A failed read of `input` stops the command
    /// and is the error.
    fn run_from(
        &self,
        prog: &str,
        args: &[&OsStr],
        input: &mut dyn std::io::Read,
    ) -> Result<CmdOutput, CmdError>;
}

/// Convenience for string arguments.
pub fn run(r: &dyn Runner, prog: &str, args: &[&str]) -> Result<CmdOutput, CmdError> {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    r.run(prog, &args)
}

/// Runs programs on the host.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostRunner;

fn join_args(args: &[&OsStr]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn command(prog: &str, args: &[&OsStr]) -> Command {
    let mut c = Command::new(prog);
    c.args(args).env("LC_ALL", "C").stdin(Stdio::null());
    c
}

fn check(prog: &str, args: &[&OsStr], out: std::process::Output) -> Result<CmdOutput, CmdError> {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if !out.status.success() {
        return Err(CmdError::Failed {
            prog: prog.to_owned(),
            args: join_args(args),
            status: out.status.into(),
            stderr,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        });
    }
    Ok(CmdOutput {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    })
}

impl Runner for HostRunner {
    fn run(&self, prog: &str, args: &[&OsStr]) -> Result<CmdOutput, CmdError> {
        debug!(prog, args = %join_args(args), "run");
        let out = command(prog, args)
            .output()
            .map_err(|source| CmdError::Spawn {
                prog: prog.to_owned(),
                source,
            })?;
        check(prog, args, out)
    }

    fn pipe(
        &self,
        (p1, a1): (&str, &[&OsStr]),
        (p2, a2): (&str, &[&OsStr]),
    ) -> Result<CmdOutput, CmdError> {
        debug!(first = p1, args1 = %join_args(a1), second = p2, args2 = %join_args(a2), "pipe");
        let spawn_err = |prog: &str| {
            let prog = prog.to_owned();
            move |source| CmdError::Spawn { prog, source }
        };
        let mut first = command(p1, a1)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err(p1))?;
        let Some(first_out) = first.stdout.take() else {
            let _ = first.kill();
            let _ = first.wait();
            return Err(CmdError::Spawn {
                prog: p1.to_owned(),
                source: std::io::Error::other("no stdout pipe"),
            });
        };
        let second = command(p2, a2)
            .stdin(Stdio::from(first_out))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let second = match second {
            Ok(s) => s,
            Err(e) => {
                let _ = first.kill();
                let _ = first.wait();
                return Err(spawn_err(p2)(e));
            }
        };
        let second_out = second.wait_with_output().map_err(spawn_err(p2))?;
        let first_out = first.wait_with_output().map_err(spawn_err(p1))?;
        check(p1, a1, first_out)?;
        check(p2, a2, second_out)
    }
    fn run_into(
        &self,
        prog: &str,
        args: &[&OsStr],
        out: &mut dyn Write,
    ) -> Result<CmdOutput, CmdError> {
        debug!(prog, args = %join_args(args), "run, stdout streamed");
        let child = spawn_streamed(prog, args, Stdio::null(), Stdio::piped())?;
        stream::copy_out(child, prog, args, out)
    }

    fn run_from(
        &self,
        prog: &str,
        args: &[&OsStr],
        input: &mut dyn Read,
    ) -> Result<CmdOutput, CmdError> {
        debug!(prog, args = %join_args(args), "run, stdin streamed");
        let child = spawn_streamed(prog, args, Stdio::piped(), Stdio::piped())?;
        stream::copy_in(child, prog, args, input)
    }
}

/// Starts `prog` for a streamed run (see [`stream`]), stderr captured.
fn spawn_streamed(
    prog: &str,
    args: &[&OsStr],
    stdin: Stdio,
    stdout: Stdio,
) -> Result<std::process::Child, CmdError> {
    command(prog, args)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CmdError::Spawn {
            prog: prog.to_owned(),
            source,
        })
}

/// A scripted answer: stdout, or the (stdout, stderr) of a failure.
type Answer = Result<String, (String, String)>;

/// A test double: answers calls from a script, in order, and records them.
#[derive(Debug, Default)]
pub struct ScriptedRunner {
    /// Expected prefix, and the answer.
    script: Mutex<Vec<(String, Answer)>>,
    calls: Mutex<Vec<String>>,
}

impl ScriptedRunner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Expects a call whose `prog args…` line starts with `prefix`; answers `stdout`.
    pub fn expect(self, prefix: &str, stdout: &str) -> Self {
        self.push(prefix, Ok(stdout.to_owned()))
    }

    /// Expects a call whose line starts with `prefix`; fails it with `stderr`.
    pub fn fail(self, prefix: &str, stderr: &str) -> Self {
        self.fail_with(prefix, "", stderr)
    }

    /// Like `fail`, for a command that printed `stdout` before failing.
    pub fn fail_with(self, prefix: &str, stdout: &str, stderr: &str) -> Self {
        self.push(prefix, Err((stdout.to_owned(), stderr.to_owned())))
    }

    fn push(self, prefix: &str, answer: Answer) -> Self {
        if let Ok(mut s) = self.script.lock() {
            s.push((prefix.to_owned(), answer));
        }
        self
    }

    /// Every call made so far, as `prog args…` lines.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn answer(&self, line: String) -> Result<CmdOutput, CmdError> {
        if let Ok(mut c) = self.calls.lock() {
            c.push(line.clone());
        }
        let next = self.script.lock().ok().and_then(|mut s| {
            if s.is_empty() {
                None
            } else {
                Some(s.remove(0))
            }
        });
        let (prog, args) = line.split_once(' ').unwrap_or((&line, ""));
        match next {
            Some((prefix, answer)) if line.starts_with(&prefix) => match answer {
                Ok(stdout) => Ok(CmdOutput {
                    stdout,
                    stderr: String::new(),
                }),
                Err((stdout, stderr)) => Err(CmdError::Failed {
                    prog: prog.to_owned(),
                    args: args.to_owned(),
                    status: ExitStatus::Code(1),
                    stderr,
                    stdout,
                }),
            },
            _ => Err(CmdError::Unexpected {
                prog: prog.to_owned(),
                args: args.to_owned(),
            }),
        }
    }
}

impl Runner for ScriptedRunner {
    fn run(&self, prog: &str, args: &[&OsStr]) -> Result<CmdOutput, CmdError> {
        self.answer(format!("{prog} {}", join_args(args)))
    }

    fn pipe(
        &self,
        (p1, a1): (&str, &[&OsStr]),
        (p2, a2): (&str, &[&OsStr]),
    ) -> Result<CmdOutput, CmdError> {
        self.answer(format!("{p1} {} | {p2} {}", join_args(a1), join_args(a2)))
    }
    /// Writes the scripted stdout into `out`.
    fn run_into(
        &self,
        prog: &str,
        args: &[&OsStr],
        out: &mut dyn Write,
    ) -> Result<CmdOutput, CmdError> {
        let answer = self.answer(format!("{prog} {} > stream", join_args(args)))?;
        out.write_all(answer.stdout.as_bytes())
            .map_err(|source| CmdError::Stream {
                prog: prog.to_owned(),
                args: join_args(args),
                what: "writing the output",
                source,
            })?;
        Ok(CmdOutput::default())
    }

    /// Reads `input` to its end, then answers.
    fn run_from(
        &self,
        prog: &str,
        args: &[&OsStr],
        input: &mut dyn Read,
    ) -> Result<CmdOutput, CmdError> {
        let mut sink = Vec::new();
        input
            .read_to_end(&mut sink)
            .map_err(|source| CmdError::Stream {
                prog: prog.to_owned(),
                args: join_args(args),
                what: "reading the input",
                source,
            })?;
        self.answer(format!("{prog} {} < stream", join_args(args)))
    }
}

/// Whether `prog` is on `PATH` (for probes, before touching anything).
pub fn have_program(prog: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|d| {
        let p = d.join(prog);
        p.is_file()
            && std::fs::metadata(&p)
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
                .unwrap_or(false)
    })
}

/// A program started to run on its own (a container's monitor).
#[derive(Debug)]
pub struct Detached {
    pub pid: u32,
    /// The read end of its stdout, on which it reports that it is ready.
    pub stdout: std::os::fd::OwnedFd,
}

/// Starts `prog` without waiting for it: stdin from /dev/null, stdout a pipe
/// the caller reads its readiness report from, stderr into `stderr` (its log).
/// Nothing reaps it: it outlives the caller, whose exit hands it to init.
pub fn spawn_detached(
    prog: &OsStr,
    args: &[&OsStr],
    stderr: std::fs::File,
) -> Result<Detached, CmdError> {
    let shown = prog.to_string_lossy().into_owned();
    debug!(prog = %shown, args = %join_args(args), "spawn detached");
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|source| CmdError::Spawn {
            prog: shown.clone(),
            source,
        })?;
    let stdout = child.stdout.take().ok_or_else(|| CmdError::Spawn {
        prog: shown,
        source: std::io::Error::other("no stdout pipe"),
    })?;
    Ok(Detached {
        pid: child.id(),
        stdout: stdout.into(),
    })
}

/// Builds an owned argument list from mixed strings and paths.
pub fn args<I, S>(items: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    items.into_iter().map(|s| s.as_ref().to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_runner_captures_stderr_and_status() {
        let err = run(&HostRunner, "sh", &["-c", "echo oops >&2; exit 3"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("oops"), "{msg}");
        assert!(msg.contains("exit code 3"), "{msg}");
    }

    #[test]
    fn host_runner_keeps_the_stdout_of_a_failure() {
        let err = run(&HostRunner, "sh", &["-c", "echo partial; exit 1"]).unwrap_err();
        assert_eq!(err.stdout().trim(), "partial");
    }

    #[test]
    fn host_runner_forces_c_locale() {
        let out = run(&HostRunner, "sh", &["-c", "echo $LC_ALL"]).unwrap();
        assert_eq!(out.stdout.trim(), "C");
    }

    #[test]
    fn pipe_connects_two_programs() {
        let out = HostRunner
            .pipe(
                ("printf", &[OsStr::new("a\\nb\\n")]),
                ("wc", &[OsStr::new("-l")]),
            )
            .unwrap();
        assert_eq!(out.stdout.trim(), "2");
    }

    #[test]
    fn scripted_runner_answers_in_order_and_rejects_surprises() {
        let r = ScriptedRunner::new()
            .expect("tool get", "12\n")
            .fail("tool destroy", "dataset is busy");
        assert_eq!(run(&r, "tool", &["get", "used"]).unwrap().stdout, "12\n");
        assert!(run(&r, "tool", &["destroy", "x"])
            .unwrap_err()
            .stderr()
            .contains("busy"));
        assert!(matches!(
            run(&r, "zpool", &["list"]),
            Err(CmdError::Unexpected { .. })
        ));
        assert_eq!(r.calls().len(), 3);
    }
}
