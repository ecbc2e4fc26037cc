//! [`run`]: clone the container process into new namespaces, let it set up
//! its rootfs and exec, and wait for it. The child reports a failed step over
//! a CLOEXEC pipe (step index and errno); a clean exec closes the pipe unread.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::sched::CloneFlags;
use rustix::io::Errno;
use rustix::pipe::{pipe_with, PipeFlags};
use tracing::debug;

use crate::error::{Result, RuntimeError};
use crate::exec::{self, ExecPlan};
use crate::pty::{receive_master, PtyChild, Session};
use crate::rootfs::setup_steps;
use crate::spec::{ExitStatus, NetMode, RunSpec};
use crate::step::Step;
use crate::sys::Sys;

/// The step index the child reports when exec itself failed.
const EXEC_STEP: u32 = u32::MAX;
const REPORT_LEN: usize = 8;

/// Runs `spec.argv` in a new container built on `spec.rootfs` and returns how
/// it ended. Setup failures, exec failures included, come back as the
/// [`RuntimeError`] of the failed step; the container's mounts never reach
/// the host's mount namespace.
pub fn run(spec: &RunSpec, sys: &dyn Sys) -> Result<ExitStatus> {
    spec.validate()?;
    let exec_plan = ExecPlan::new(spec)?;
    // With a tty, the child sends its pty master back over a socketpair.
    let (parent_sock, pty) = if spec.tty {
        let (parent, child) = sys.socketpair().map_err(|source| RuntimeError::Pty {
            step: "create the socket pair for the pty master",
            source,
        })?;
        (Some(parent), Some(PtyChild::new(child)))
    } else {
        (None, None)
    };
    let steps = setup_steps(spec, pty.as_ref());
    let (rd, wr) = pipe_with(PipeFlags::CLOEXEC).map_err(|source| RuntimeError::Pipe { source })?;
    debug!(rootfs = %spec.rootfs.display(), hostname = %spec.hostname, argv = ?spec.argv, net = ?spec.net, tty = spec.tty, "run");

    sys.hold_signals()
        .map_err(|source| RuntimeError::Signals { source })?;
    let _held = Held(sys);
    let pid = {
        let mut child = || child_main(&steps, &exec_plan, sys, &wr);
        sys.spawn(clone_flags(spec.net), &mut child)
            .map_err(|source| RuntimeError::Clone { source })?
    };
    // Ours must go so that the child's exec (or exit) is the pipe's EOF, and
    // its exit before sending a pty master the socket's.
    drop(wr);
    if let Some(pty) = &pty {
        pty.close_parent_copy();
    }
    let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
    let session = match &parent_sock {
        Some(sock) => start_session(sys, sock, spec, stdin.as_fd(), stdout.as_fd()),
        None => Ok(None),
    };
    let report = read_report(&rd);
    let relayed = match (&report, &session) {
        (Ok(None), Ok(Some(s))) => s.relay(),
        (Ok(None), Ok(None)) if spec.tty => Err(RuntimeError::Protocol {
            reason: "the container sent no pty master".to_owned(),
        }),
        _ => Ok(()),
    };
    // Restores the host terminal, and hangs the pty up if the container
    // still runs after a failed relay.
    let session = session.map(drop);
    let status = sys
        .wait(pid)
        .map_err(|source| RuntimeError::Wait { source });
    if let Some((step, errno)) = report? {
        return Err(step_error(&steps, &exec_plan, step, errno));
    }
    session?;
    relayed?;
    let status = status?;
    debug!(?pid, ?status, "container exited");
    Ok(status)
}

/// Receives the pty master and sets up the host side; `None` if the child
/// failed before sending it.
fn start_session<'a>(
    sys: &'a dyn Sys,
    sock: &OwnedFd,
    spec: &'a RunSpec,
    stdin: BorrowedFd<'a>,
    stdout: BorrowedFd<'a>,
) -> Result<Option<Session<'a>>> {
    let Some(master) = receive_master(sys, sock)? else {
        return Ok(None);
    };
    let input = spec.stdio.stdin.as_ref().map_or(stdin, AsFd::as_fd);
    let output = spec.stdio.stdout.as_ref().map_or(stdout, AsFd::as_fd);
    Session::start(sys, master, input, output).map(Some)
}

struct Held<'a>(&'a dyn Sys);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.release_signals();
    }
}

fn clone_flags(net: NetMode) -> CloneFlags {
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if net == NetMode::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    flags
}

/// The container process, from clone to exec. Only syscalls through `sys`
/// and one pipe write: this runs in a copy of a possibly threaded process.
fn child_main(steps: &[Step<'_>], exec_plan: &ExecPlan, sys: &dyn Sys, wr: &OwnedFd) -> i32 {
    for (i, step) in steps.iter().enumerate() {
        if let Err(errno) = step.run(sys) {
            report(wr, u32::try_from(i).unwrap_or(EXEC_STEP - 1), errno);
            return 1;
        }
    }
    match exec::exec(exec_plan, sys) {
        Ok(()) => 0,
        Err(errno) => {
            report(wr, EXEC_STEP, errno);
            127
        }
    }
}

fn report(wr: &OwnedFd, step: u32, errno: Errno) {
    let mut buf = [0u8; REPORT_LEN];
    buf[..4].copy_from_slice(&step.to_le_bytes());
    buf[4..].copy_from_slice(&errno.raw_os_error().to_le_bytes());
    // 8 bytes into an empty pipe is one atomic write; if it fails anyway the
    // parent sees a short report and says so.
    while let Err(Errno::INTR) = rustix::io::write(wr, &buf) {}
}

/// `None` if the child exec'd; `Some((step, errno))` if it reported a failure.
fn read_report(rd: &OwnedFd) -> Result<Option<(u32, Errno)>> {
    let mut buf = [0u8; REPORT_LEN];
    let mut got = 0;
    while got < REPORT_LEN {
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
        REPORT_LEN => {
            let [s0, s1, s2, s3, e0, e1, e2, e3] = buf;
            let step = u32::from_le_bytes([s0, s1, s2, s3]);
            let errno = Errno::from_raw_os_error(i32::from_le_bytes([e0, e1, e2, e3]));
            Ok(Some((step, errno)))
        }
        n => Err(RuntimeError::Protocol {
            reason: format!("short report of {n} bytes"),
        }),
    }
}

fn step_error(steps: &[Step<'_>], exec_plan: &ExecPlan, step: u32, errno: Errno) -> RuntimeError {
    if step == EXEC_STEP {
        return RuntimeError::Exec {
            cmd: exec_plan.cmd.clone(),
            source: errno,
        };
    }
    match usize::try_from(step).ok().and_then(|i| steps.get(i)) {
        Some(s) => s.error(errno),
        None => RuntimeError::Protocol {
            reason: format!("unknown step {step} failed ({errno})"),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::sys::{Call, FakeSys, FAKE_PID};
    use nix::unistd::Pid;

    fn spec() -> RunSpec {
        let mut s = RunSpec::new("/r", "c1", vec!["sh".into(), "-c".into(), "true".into()]);
        s.env = vec![("PATH".into(), "/bin".into())];
        s
    }

    /// One short line per call, so whole sequences read like a script.
    fn brief(c: &Call) -> String {
        let p = |p: &Path| p.display().to_string();
        match c {
            Call::Mount {
                src,
                target,
                fstype,
                data,
                ..
            } => format!(
                "mount {} {} {} {}",
                fstype.as_deref().unwrap_or("-"),
                src.as_deref().map_or("-".into(), p),
                p(target),
                data.as_deref().unwrap_or("-")
            ),
            Call::EnsureDir { path, mode } => format!("mkdir {} {mode:o}", p(path)),
            Call::Mknod {
                path, major, minor, ..
            } => format!("mknod {} {major}:{minor}", p(path)),
            Call::Symlink { target, link } => format!("ln {} {}", p(target), p(link)),
            Call::Chdir { path } => format!("cd {}", p(path)),
            Call::PivotRoot { new_root, put_old } => {
                format!("pivot {} {}", p(new_root), p(put_old))
            }
            Call::Umount { target, .. } => format!("umount {}", p(target)),
            Call::Sethostname { name } => format!("hostname {name}"),
            Call::Exec { path, .. } => format!("exec {}", p(path)),
            Call::Redirect { target, .. } => format!("redirect {target}"),
            Call::RecvFd { .. } => "RecvFd".into(),
            Call::IsTerminal { .. } => "IsTerminal".into(),
            Call::MakeRaw { .. } => "MakeRaw".into(),
            Call::RestoreMode { .. } => "RestoreMode".into(),
            Call::CopyWinsize { .. } => "CopyWinsize".into(),
            Call::SetNonblocking { .. } => "SetNonblocking".into(),
            Call::UnlockPty { .. } => "UnlockPty".into(),
            Call::OpenPtySlave { .. } => "OpenPtySlave".into(),
            Call::SendFd { .. } => "SendFd".into(),
            Call::SetControllingTty { .. } => "SetControllingTty".into(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn exact_call_sequence() {
        let fake = FakeSys::new();
        let status = run(&spec(), &fake).unwrap();
        assert_eq!(status, ExitStatus::Exited(0));
        let got: Vec<String> = fake.calls().iter().map(brief).collect();
        let want = [
            "HoldSignals",
            "Spawn { flags: CloneFlags(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET) }",
            "ResetSignals",
            "mount - - / -",
            "mount - /r /r -",
            "mkdir /r/proc 555",
            "mount proc proc /r/proc -",
            "mkdir /r/sys 555",
            "mount sysfs sysfs /r/sys -",
            "mkdir /r/dev 755",
            "mount tmpfs tmpfs /r/dev mode=755,size=65536k",
            "mknod /r/dev/null 1:3",
            "mknod /r/dev/zero 1:5",
            "mknod /r/dev/full 1:7",
            "mknod /r/dev/random 1:8",
            "mknod /r/dev/urandom 1:9",
            "mknod /r/dev/tty 5:0",
            "mkdir /r/dev/pts 755",
            "mount devpts devpts /r/dev/pts newinstance,ptmxmode=0666,mode=0620,gid=5",
            "mkdir /r/dev/shm 1777",
            "mount tmpfs shm /r/dev/shm mode=1777,size=65536k",
            "ln pts/ptmx /r/dev/ptmx",
            "ln /proc/self/fd /r/dev/fd",
            "ln /proc/self/fd/0 /r/dev/stdin",
            "ln /proc/self/fd/1 /r/dev/stdout",
            "ln /proc/self/fd/2 /r/dev/stderr",
            "cd /r",
            "pivot . .",
            "umount .",
            "hostname c1",
            "LoopbackUp",
            "cd /",
            "DropCaps { keep: CapabilitySet(CHOWN | DAC_OVERRIDE | FOWNER | FSETID | KILL | SETGID | SETUID | SETPCAP | NET_BIND_SERVICE | NET_RAW | SYS_CHROOT | MKNOD | AUDIT_WRITE | SETFCAP) }",
            "exec /bin/sh",
            "Wait { pid: Pid(4242) }",
            "ReleaseSignals",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn propagation_and_pivot_flags() {
        let fake = FakeSys::new();
        run(&spec(), &fake).unwrap();
        let calls = fake.calls();
        assert!(
            matches!(&calls[3], Call::Mount { flags, .. } if *flags == nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE)
        );
        assert!(calls.contains(&Call::Umount {
            target: ".".into(),
            flags: nix::mount::MntFlags::MNT_DETACH
        }));
        assert!(calls
            .iter()
            .any(|c| matches!(c, Call::Mount { fstype: Some(t), flags, .. }
            if t == "sysfs" && flags.contains(nix::mount::MsFlags::MS_RDONLY))));
    }

    #[test]
    fn host_net_keeps_netns_and_skips_loopback() {
        let mut s = spec();
        s.net = NetMode::Host;
        s.drop_caps = false;
        s.cwd = "/tmp".into();
        let fake = FakeSys::new();
        run(&s, &fake).unwrap();
        let calls = fake.calls();
        assert!(
            matches!(&calls[1], Call::Spawn { flags } if !flags.contains(CloneFlags::CLONE_NEWNET))
        );
        assert!(!calls.contains(&Call::LoopbackUp));
        assert!(!calls.iter().any(|c| matches!(c, Call::DropCaps { .. })));
        assert!(calls.contains(&Call::Chdir {
            path: "/tmp".into()
        }));
    }

    #[test]
    fn stdio_is_redirected_first() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let mut s = spec();
        let (rn, wn) = (
            std::os::fd::AsRawFd::as_raw_fd(&r),
            std::os::fd::AsRawFd::as_raw_fd(&w),
        );
        s.stdio.stdin = Some(r);
        s.stdio.stderr = Some(w);
        let fake = FakeSys::new();
        run(&s, &fake).unwrap();
        let calls = fake.calls();
        assert_eq!(calls[3], Call::Redirect { fd: rn, target: 0 });
        assert_eq!(calls[4], Call::Redirect { fd: wn, target: 2 });
    }

    #[test]
    fn exit_status_is_passed_through() {
        let fake = FakeSys::new().exit_with(ExitStatus::Signaled(9));
        assert_eq!(run(&spec(), &fake).unwrap().code(), 137);
    }

    /// The variant a failure of each kind of call must surface as.
    fn expected_variant(c: &Call) -> &'static str {
        match c {
            Call::ResetSignals | Call::HoldSignals => "Signals",
            Call::Spawn { .. } => "Clone",
            Call::Wait { .. } => "Wait",
            Call::Mount { .. } => "Mount",
            Call::EnsureDir { .. } => "MakeDir",
            Call::Mknod { .. } => "Device",
            Call::Symlink { .. } => "Symlink",
            Call::Chdir { .. } => "Chdir",
            Call::PivotRoot { .. } => "PivotRoot",
            Call::Umount { .. } => "Umount",
            Call::Sethostname { .. } => "Sethostname",
            Call::LoopbackUp => "Loopback",
            Call::DropCaps { .. } => "Capabilities",
            Call::Exec { .. } => "Exec",
            Call::Socketpair
            | Call::RecvFd { .. }
            | Call::SetNonblocking { .. }
            | Call::MakeRaw { .. }
            | Call::OpenPtyMaster
            | Call::UnlockPty { .. }
            | Call::OpenPtySlave { .. }
            | Call::SendFd { .. }
            | Call::Setsid
            | Call::SetControllingTty { .. } => "Pty",
            Call::WatchWinch => "Signals",
            other => panic!("unexpected call {other:?}"),
        }
    }

    fn variant(e: &RuntimeError) -> String {
        let dbg = format!("{e:?}");
        dbg.split([' ', '{', '('])
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn failing_call_n_returns_its_steps_error() {
        let n_calls = {
            let fake = FakeSys::new();
            run(&spec(), &fake).unwrap();
            fake.calls().len()
        };
        // The last call (ReleaseSignals) cannot fail.
        for n in 0..n_calls - 1 {
            let fake = FakeSys::new().fail_nth(n, Errno::PERM);
            let res = run(&spec(), &fake);
            let calls = fake.calls();
            let failed = &calls[n];
            match failed {
                // sysfs and mknod fall back, so their failure alone is no error.
                Call::Mount {
                    fstype: Some(t), ..
                } if t == "sysfs" => {
                    assert!(res.is_ok(), "call {n}: {res:?}");
                    continue;
                }
                Call::Mknod { .. } => {
                    assert!(res.is_ok(), "call {n}: {res:?}");
                    continue;
                }
                _ => {}
            }
            let err = res.expect_err(&format!("call {n} ({failed:?}) failed but run succeeded"));
            assert_eq!(
                variant(&err),
                expected_variant(failed),
                "call {n}: {failed:?}"
            );
            // Signals are always given back, and a spawned child always reaped.
            if n > 0 {
                assert_eq!(calls.last(), Some(&Call::ReleaseSignals), "call {n}");
            }
            if n > 1 {
                assert!(
                    calls.contains(&Call::Wait {
                        pid: Pid::from_raw(FAKE_PID)
                    }),
                    "call {n}"
                );
            }
        }
    }

    #[test]
    fn failures_name_step_and_path() {
        // Call 6 is the proc mount (see exact_call_sequence).
        let fake = FakeSys::new().fail_nth(6, Errno::PERM);
        match run(&spec(), &fake) {
            Err(RuntimeError::Mount {
                what: "proc",
                target,
                source: Errno::PERM,
            }) => assert_eq!(target, Path::new("/r/proc")),
            other => panic!("{other:?}"),
        }
        let fake = FakeSys::new().fail_when(|c| matches!(c, Call::PivotRoot { .. }), Errno::INVAL);
        match run(&spec(), &fake) {
            Err(RuntimeError::PivotRoot { new_root, .. }) => assert_eq!(new_root, Path::new("/r")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_command_is_an_exec_error_naming_it() {
        let mut s = spec();
        s.argv = vec!["/bin/foo".into()];
        let fake = FakeSys::new().fail_when(|c| matches!(c, Call::Exec { .. }), Errno::NOENT);
        let err = run(&s, &fake).unwrap_err();
        assert!(
            matches!(&err, RuntimeError::Exec { cmd, source: Errno::NOENT } if cmd == "/bin/foo")
        );
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(
            chain.starts_with("exec /bin/foo: No such file or directory"),
            "{chain}"
        );
    }

    #[test]
    fn invalid_spec_fails_before_any_call() {
        let mut s = spec();
        s.argv.clear();
        let fake = FakeSys::new();
        assert!(matches!(
            run(&s, &fake),
            Err(RuntimeError::InvalidSpec { .. })
        ));
        assert!(fake.calls().is_empty());
    }

    #[test]
    fn report_round_trips_and_short_reports_are_errors() {
        let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).unwrap();
        report(&w, 5, Errno::PERM);
        drop(w);
        assert_eq!(read_report(&r).unwrap(), Some((5, Errno::PERM)));

        let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).unwrap();
        rustix::io::write(&w, &[1, 2, 3]).unwrap();
        drop(w);
        assert!(matches!(
            read_report(&r),
            Err(RuntimeError::Protocol { .. })
        ));
    }

    /// A tty spec whose relay reads `input` from a pipe and writes to a pipe,
    /// returned with that pipe's read end.
    fn tty_spec(input: &[u8]) -> (RunSpec, OwnedFd) {
        let mut s = spec();
        s.tty = true;
        let (in_r, in_w) = rustix::pipe::pipe().unwrap();
        rustix::io::write(&in_w, input).unwrap();
        let (out_r, out_w) = rustix::pipe::pipe().unwrap();
        s.stdio.stdin = Some(in_r);
        s.stdio.stdout = Some(out_w);
        (s, out_r)
    }

    fn read_all(fd: &OwnedFd) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = rustix::io::read(fd, &mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// The calls other than the relay's poll/read/write, briefly.
    fn non_io(fake: &FakeSys) -> Vec<String> {
        fake.calls()
            .iter()
            .filter(|c| !c.is_io())
            .map(brief)
            .collect()
    }

    #[test]
    fn tty_call_sequence_without_a_host_terminal() {
        let (s, out) = tty_spec(b"");
        let fake = FakeSys::new()
            .pty_output(b"/dev/pts/0\r\n")
            .exit_with(ExitStatus::Exited(5));
        assert_eq!(run(&s, &fake).unwrap(), ExitStatus::Exited(5));
        drop(s);
        assert_eq!(read_all(&out), b"/dev/pts/0\r\n");
        let got = non_io(&fake);
        let dropcaps = got.iter().position(|c| c.starts_with("DropCaps")).unwrap();
        assert_eq!(&got[..2], ["Socketpair", "HoldSignals"]);
        // The spec's stdio is the relay's, not the container's.
        assert_eq!(got[3], "ResetSignals");
        assert_eq!(got[4], "mount - - / -");
        assert_eq!(
            got[dropcaps + 1..],
            [
                "OpenPtyMaster",
                "UnlockPty",
                "OpenPtySlave",
                "SendFd",
                "Setsid",
                "SetControllingTty",
                "redirect 0",
                "redirect 1",
                "redirect 2",
                "exec /bin/sh",
                "RecvFd",
                "SetNonblocking",
                "IsTerminal",
                "IsTerminal",
                "Wait { pid: Pid(4242) }",
                "ReleaseSignals",
            ]
        );
        // The slave goes on 0, 1 and 2; the master went out on the socket.
        let calls = fake.calls();
        let slave = calls.iter().find_map(|c| match c {
            Call::SetControllingTty { fd } => Some(*fd),
            _ => None,
        });
        for c in &calls {
            if let Call::Redirect { fd, .. } = c {
                assert_eq!(Some(*fd), slave);
            }
        }
        assert!(calls.iter().any(|c| c.is_io()));
    }

    #[test]
    fn tty_off_makes_no_pty_calls() {
        let fake = FakeSys::new();
        run(&spec(), &fake).unwrap();
        assert!(!fake.calls().iter().any(|c| matches!(
            c,
            Call::Socketpair
                | Call::OpenPtyMaster
                | Call::Setsid
                | Call::RecvFd { .. }
                | Call::MakeRaw { .. }
                | Call::Poll { .. }
        )));
    }

    #[test]
    fn host_terminal_goes_raw_gets_the_size_and_is_restored() {
        let (s, _out) = tty_spec(b"");
        let fake = FakeSys::new().terminal().pty_output(b"x");
        run(&s, &fake).unwrap();
        let got = non_io(&fake);
        let recv = got.iter().position(|c| c == "RecvFd").unwrap();
        assert_eq!(
            got[recv..],
            [
                "RecvFd",
                "SetNonblocking",
                "IsTerminal",
                "MakeRaw",
                "WatchWinch",
                "CopyWinsize",
                "RestoreMode",
                "UnwatchWinch",
                "Wait { pid: Pid(4242) }",
                "ReleaseSignals",
            ]
        );
    }

    #[test]
    fn terminal_is_restored_when_the_relay_fails() {
        let (s, out) = tty_spec(b"");
        let out_w = std::os::fd::AsRawFd::as_raw_fd(s.stdio.stdout.as_ref().unwrap());
        let fake = FakeSys::new().terminal().pty_output(b"x").fail_when(
            move |c| matches!(c, Call::Write { fd, .. } if *fd == out_w),
            Errno::PIPE,
        );
        let err = run(&s, &fake).unwrap_err();
        assert!(
            matches!(
                err,
                RuntimeError::Relay {
                    step: "write to stdout",
                    source: Errno::PIPE
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "relay the container's terminal: write to stdout"
        );
        let got = non_io(&fake);
        assert_eq!(
            got[got.len() - 4..],
            [
                "RestoreMode",
                "UnwatchWinch",
                "Wait { pid: Pid(4242) }",
                "ReleaseSignals"
            ]
        );
        drop(out);
    }

    #[test]
    fn every_failing_tty_call_is_an_error_and_restores_everything() {
        let n_calls = {
            let (s, _out) = tty_spec(b"");
            let fake = FakeSys::new().terminal().pty_output(b"x");
            run(&s, &fake).unwrap();
            fake.calls().len()
        };
        for n in 0..n_calls {
            let (s, _out) = tty_spec(b"");
            let fake = FakeSys::new()
                .terminal()
                .pty_output(b"x")
                .fail_nth(n, Errno::PERM);
            let res = run(&s, &fake);
            let calls = fake.calls();
            let failed = &calls[n];
            match failed {
                // Fallbacks, best-effort calls and ones that cannot fail.
                Call::Mount {
                    fstype: Some(t), ..
                } if t == "sysfs" => continue,
                Call::Mknod { .. }
                | Call::CopyWinsize { .. }
                | Call::RestoreMode { .. }
                | Call::UnwatchWinch
                | Call::ReleaseSignals
                | Call::IsTerminal { .. } => continue,
                _ => {}
            }
            let err = res.expect_err(&format!("call {n} ({failed:?}) failed but run succeeded"));
            let want = match failed {
                Call::Redirect { .. } => "Stdio",
                Call::Poll { .. } | Call::Read { .. } | Call::Write { .. } => "Relay",
                other => expected_variant(other),
            };
            assert_eq!(variant(&err), want, "call {n}: {failed:?}");
            if n > 1 {
                assert_eq!(calls.last(), Some(&Call::ReleaseSignals), "call {n}");
            }
            let raw = calls
                .iter()
                .filter(|c| matches!(c, Call::MakeRaw { .. }))
                .count();
            let restored = calls
                .iter()
                .filter(|c| matches!(c, Call::RestoreMode { .. }))
                .count();
            // A failed MakeRaw leaves nothing to restore.
            let raw_ok = if matches!(failed, Call::MakeRaw { .. }) {
                0
            } else {
                raw
            };
            assert_eq!(raw_ok, restored, "call {n}: {failed:?}");
        }
    }

    #[test]
    fn child_pty_failures_name_the_step() {
        for (call, msg) in [
            (Call::OpenPtyMaster, "pty: open /dev/ptmx in the container"),
            (Call::Setsid, "pty: start a new session"),
        ] {
            let (s, _out) = tty_spec(b"");
            let want = call.clone();
            let fake = FakeSys::new().fail_when(move |c| *c == want, Errno::NOSPC);
            let err = run(&s, &fake).unwrap_err();
            assert_eq!(err.to_string(), msg);
            assert!(matches!(
                err,
                RuntimeError::Pty {
                    source: Errno::NOSPC,
                    ..
                }
            ));
            assert!(fake.calls().contains(&Call::Wait {
                pid: Pid::from_raw(FAKE_PID)
            }));
        }
    }
}
