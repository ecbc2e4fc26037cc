//! FakeSys tests of [`super::run`]: exact call sequences, and every failing
//! call surfacing as its step's error.

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
        Call::LoadSeccomp { .. } => "seccomp".into(),
        other => format!("{other:?}"),
    }
}

/// The /proc hardening calls every default run makes, briefly.
fn hardening() -> Vec<String> {
    let mut out = Vec::new();
    for p in ["bus", "fs", "irq", "sys", "sysrq-trigger"] {
        out.push(format!("mount - /r/proc/{p} /r/proc/{p} -"));
        out.push(format!("mount - - /r/proc/{p} -"));
    }
    for p in [
        "proc/acpi",
        "proc/asound",
        "proc/kcore",
        "proc/keys",
        "proc/latency_stats",
        "proc/timer_list",
        "proc/timer_stats",
        "proc/sched_debug",
        "proc/scsi",
        "sys/firmware",
        "sys/devices/virtual/powercap",
    ] {
        out.push(format!("mount - /dev/null /r/{p} -"));
    }
    out
}

#[test]
fn exact_call_sequence() {
    let fake = FakeSys::new();
    let status = run(&spec(), &fake).unwrap();
    assert_eq!(status, ExitStatus::Exited(0));
    let got: Vec<String> = fake.calls().iter().map(brief).collect();
    let mut want: Vec<String> = [
        "HoldSignals",
        "Spawn { flags: CloneFlags(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET) }",
        "ResetSignals",
        "AwaitParent",
        "Setsid",
        "mount - - / -",
        "mount - /r /r -",
        "mkdir /r/proc 555",
        "mount proc proc /r/proc -",
        "mkdir /r/sys 555",
        "mount sysfs sysfs /r/sys -",
    ]
    .map(String::from)
    .to_vec();
    want.extend(hardening());
    want.extend(
        [
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
            "DropCaps { keep: CapabilitySet(CHOWN | DAC_OVERRIDE | FOWNER | FSETID | KILL | SETGID | SETUID | SETPCAP | NET_BIND_SERVICE | SYS_CHROOT | AUDIT_WRITE | SETFCAP) }",
            "CloexecFrom { first: 3 }",
            "NoNewPrivs",
            "seccomp",
            "exec /bin/sh",
            "ReleaseChild",
            "Wait { pid: Pid(4242) }",
            "ReleaseSignals",
        ]
        .map(String::from),
    );
    assert_eq!(got, want);
}

#[test]
fn userns_waits_for_the_parent() {
    let mut s = spec();
    s.userns = Some(crate::UserNs::root_at(100_000, 200_000, 65536));
    let fake = FakeSys::new();
    run(&s, &fake).unwrap();
    let got: Vec<String> = fake.calls().iter().map(brief).collect();
    assert!(got[2].contains("CLONE_NEWUSER"), "{}", got[2]);
    assert_eq!(
        got[3..10],
        [
            "ResetSignals",
            "AwaitParent",
            "BecomeRoot",
            "Setsid",
            "mount - - / -",
            "AttachTree { target: \"/r\" }",
            "mkdir /r/proc 555",
        ]
    );
    let parent: Vec<&String> = got.iter().skip_while(|c| !c.starts_with("exec")).collect();
    assert_eq!(
        parent[1..5],
        [
            "WriteIdMaps { pid: Pid(4242), uid_map: \"0 100000 65536\\n\", gid_map: \"0 200000 65536\\n\" }",
            "IdmappedTree { path: \"/r\", pid: Pid(4242) }",
            "SendFd",
            "ReleaseChild",
        ]
    );
}

#[test]
fn a_parent_side_failure_kills_the_waiting_child() {
    let mut s = spec();
    s.userns = Some(crate::UserNs::root_at(100_000, 100_000, 65536));
    let fake = FakeSys::new().fail_when(|c| matches!(c, Call::IdmappedTree { .. }), Errno::INVAL);
    let err = run(&s, &fake).unwrap_err();
    assert!(
        matches!(err, RuntimeError::UserNs { step, source: Errno::INVAL } if step.starts_with("idmap the rootfs")),
        "{err:?}"
    );
    let calls = fake.calls();
    let kill = calls.iter().position(|c| matches!(c, Call::Kill { .. }));
    assert!(kill.is_some(), "{calls:?}");
    assert!(!calls.contains(&Call::ReleaseChild));
    assert!(calls.contains(&Call::Wait {
        pid: Pid::from_raw(FAKE_PID)
    }));
}

#[test]
fn privileged_keeps_caps_and_skips_hardening() {
    let mut s = spec();
    s.security = crate::Security::privileged();
    let fake = FakeSys::new();
    run(&s, &fake).unwrap();
    let got: Vec<String> = fake.calls().iter().map(brief).collect();
    for c in &got {
        assert!(
            !c.starts_with("DropCaps")
                && c != "NoNewPrivs"
                && c != "seccomp"
                && !c.contains("/dev/null /r/proc")
                && !c.contains("/r/proc/sys"),
            "{c}"
        );
    }
    // Still a new session: no terminal of ours to inject into.
    assert!(got.contains(&"Setsid".to_owned()));
}

#[test]
fn propagation_and_pivot_flags() {
    let fake = FakeSys::new();
    run(&spec(), &fake).unwrap();
    let calls = fake.calls();
    assert!(
        matches!(&calls[5], Call::Mount { flags, .. } if *flags == nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE)
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
    s.security.caps = None;
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

fn bridged() -> RunSpec {
    let mut s = spec();
    s.net = NetMode::Bridge(crate::net::BridgeLink {
        bridge: "berth0".into(),
        host_veth: "vb0123".into(),
        address: "10.88.0.2".parse().unwrap(),
        prefix: 16,
        gateway: "10.88.0.1".parse().unwrap(),
    });
    s
}

#[test]
fn a_bridged_child_waits_for_its_veth_which_goes_after_it() {
    let fake = FakeSys::new();
    run(&bridged(), &fake).unwrap();
    let calls = fake.calls();
    let at = |want: &dyn Fn(&Call) -> bool| calls.iter().position(want).unwrap();
    let attach =
        at(&|c| matches!(c, Call::AttachBridge { link, .. } if link.host_veth == "vb0123"));
    assert!(
        at(&|c| matches!(c, Call::Spawn { flags } if flags.contains(CloneFlags::CLONE_NEWNET)))
            < attach
    );
    assert!(attach < at(&|c| *c == Call::ReleaseChild));
    assert!(calls.contains(&Call::LoopbackUp));
    let detach = at(&|c| matches!(c, Call::DetachBridge { host_veth } if host_veth == "vb0123"));
    assert!(at(&|c| matches!(c, Call::Wait { .. })) < detach);
}

#[test]
fn a_failed_veth_is_the_runs_error_and_is_removed() {
    let fake = FakeSys::new().fail_when(|c| matches!(c, Call::AttachBridge { .. }), Errno::NODEV);
    let e = run(&bridged(), &fake).unwrap_err();
    assert!(
        matches!(
            e,
            RuntimeError::Bridge {
                source: Errno::NODEV,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("berth0"), "{e}");
    let calls = fake.calls();
    assert!(!calls.contains(&Call::ReleaseChild));
    assert!(calls.iter().any(|c| matches!(c, Call::DetachBridge { .. })));
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
        Call::AwaitParent | Call::ReleaseChild => "Sync",
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
        Call::NoNewPrivs => "NoNewPrivs",
        Call::CloexecFrom { .. } => "CloseFds",
        Call::LoadSeccomp { .. } => "SeccompLoad",
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
        // Without a pty, setsid is its own step.
        let want = match failed {
            Call::Setsid => "Session",
            other => expected_variant(other),
        };
        assert_eq!(variant(&err), want, "call {n}: {failed:?}");
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
    // Call 8 is the proc mount (see exact_call_sequence).
    let fake = FakeSys::new().fail_nth(8, Errno::PERM);
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
    assert!(matches!(&err, RuntimeError::Exec { cmd, source: Errno::NOENT } if cmd == "/bin/foo"));
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
    assert_eq!(got[3..6], ["ResetSignals", "AwaitParent", "mount - - / -"]);
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
            "CloexecFrom { first: 3 }",
            "NoNewPrivs",
            "seccomp",
            "exec /bin/sh",
            "ReleaseChild",
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
            | Call::SetControllingTty { .. }
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
