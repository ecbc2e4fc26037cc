//! FakeSys tests of [`super::enter`]: exact call sequences (cgroup before
//! setns, setns order, seccomp last) and every failing call surfacing as its
//! step's error.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::OnceLock;

use super::*;
use crate::sys::{Call, FakeSys, FAKE_PID};

const PID: i32 = 77;

/// A v1 memory and a cgroup2 directory of cgroup berth/c1, as plain files.
fn cgroup_tree() -> &'static Path {
    static TREE: OnceLock<tempfile::TempDir> = OnceLock::new();
    TREE.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        for (dir, file) in [("memory", "tasks"), ("unified", "cgroup.procs")] {
            let dir = tmp.path().join(dir).join("berth/c1");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(file), "").unwrap();
        }
        tmp
    })
    .path()
}

fn spec() -> EnterSpec {
    let mut s = EnterSpec::new(PID, vec!["sh".into(), "-c".into(), "true".into()]);
    s.env = vec![("PATH".into(), "/bin".into())];
    let tree = cgroup_tree();
    s.cgroup = vec![tree.join("memory/berth/c1"), tree.join("unified/berth/c1")];
    s
}

/// One short line per call, so whole sequences read like a script.
fn brief(c: &Call) -> String {
    let p = |p: &Path| p.display().to_string();
    let cg = |p: &Path| {
        p.strip_prefix(cgroup_tree())
            .unwrap_or(p)
            .display()
            .to_string()
    };
    match c {
        Call::OpenNamespace { ns } => format!("open {ns}"),
        Call::Setns { ns } => format!("setns {ns}"),
        Call::JoinCgroup { file } => format!("join {}", cg(file)),
        Call::SpawnInto { flags, cgroup } if flags.is_empty() => {
            format!("fork into {}", cg(cgroup))
        }
        Call::Chdir { path } => format!("cd {}", p(path)),
        Call::Exec { path, .. } => format!("exec {}", p(path)),
        Call::Redirect { target, .. } => format!("redirect {target}"),
        Call::DropCaps { .. } => "DropCaps".into(),
        Call::LoadSeccomp { .. } => "seccomp".into(),
        Call::Spawn { flags } if flags.is_empty() => "fork".into(),
        Call::RecvFd { .. } => "RecvFd".into(),
        Call::IsTerminal { .. } => "IsTerminal".into(),
        Call::SetNonblocking { .. } => "SetNonblocking".into(),
        Call::UnlockPty { .. } => "UnlockPty".into(),
        Call::OpenPtySlave { .. } => "OpenPtySlave".into(),
        Call::SendFd { .. } => "SendFd".into(),
        Call::SetControllingTty { .. } => "SetControllingTty".into(),
        other => format!("{other:?}"),
    }
}

fn script(fake: &FakeSys) -> Vec<String> {
    fake.calls()
        .iter()
        .filter(|c| !c.is_io())
        .map(brief)
        .collect()
}

const OPENS: [&str; 8] = [
    "OpenProc { pid: Pid(77) }",
    "open user",
    "open mnt",
    "open uts",
    "open ipc",
    "open net",
    "open pid",
    "open cgroup",
];

#[test]
fn exact_call_sequence() {
    let fake = FakeSys::new().exit_with(ExitStatus::Exited(7));
    assert_eq!(enter(&spec(), &fake).unwrap(), ExitStatus::Exited(7));
    let mut want: Vec<&str> = OPENS.to_vec();
    want.extend([
        "HoldSignals",
        // The relay: born in the cgroup2 directory, joins v1 by itself,
        // then every namespace, user first.
        "fork into unified/berth/c1",
        "ForgetChildren",
        "DieWithParent",
        "join memory/berth/c1/tasks",
        "setns user",
        "setns mnt",
        "setns uts",
        "setns ipc",
        "setns net",
        "setns pid",
        "setns cgroup",
        // The command's process, in the container's pid namespace.
        "fork",
        "ResetSignals",
        "BecomeRoot",
        "DropCaps",
        "cd /",
        "Setsid",
        "CloexecFrom { first: 3 }",
        "NoNewPrivs",
        "seccomp",
        "exec /bin/sh",
        // The relay waits for the command, berth for the relay.
        "Wait { pid: Pid(4242) }",
        "Wait { pid: Pid(4242) }",
        "ReleaseSignals",
    ]);
    assert_eq!(script(&fake), want);
    let calls = fake.calls();
    assert!(calls.contains(&Call::DropCaps {
        keep: crate::DEFAULT_CAPS
    }));
}

#[test]
fn without_clone3_into_the_cgroup_the_relay_joins_each_hierarchy_by_a_write() {
    for refused in [Errno::NOSYS, Errno::INVAL, Errno::TOOBIG, Errno::PERM] {
        let fake = FakeSys::new().fail_when(|c| matches!(c, Call::SpawnInto { .. }), refused);
        enter(&spec(), &fake).unwrap();
        let got = script(&fake);
        let start = OPENS.len() + 1;
        assert_eq!(
            got[start..start + 6],
            [
                "fork into unified/berth/c1",
                "fork",
                "ForgetChildren",
                "DieWithParent",
                "join memory/berth/c1/tasks",
                "join unified/berth/c1/cgroup.procs",
            ],
            "{refused}"
        );
    }
    // Any other failure is the relay's: nothing is retried.
    let fake = FakeSys::new().fail_when(|c| matches!(c, Call::SpawnInto { .. }), Errno::AGAIN);
    let err = enter(&spec(), &fake).unwrap_err();
    assert_eq!(variant(&err), "Relay", "{err}");
}

#[test]
fn shared_namespaces_are_skipped_and_root_stays_root() {
    let fake = FakeSys::new().sharing(&[Namespace::User, Namespace::Net, Namespace::Cgroup]);
    let mut s = spec();
    s.cgroup.clear();
    enter(&s, &fake).unwrap();
    let got = script(&fake);
    let setns: Vec<&str> = got
        .iter()
        .filter(|c| c.starts_with("setns") || c.starts_with("join"))
        .map(String::as_str)
        .collect();
    assert_eq!(setns, ["setns mnt", "setns uts", "setns ipc", "setns pid"]);
    assert!(!got.contains(&"BecomeRoot".to_owned()), "{got:?}");
}

#[test]
fn a_process_in_our_mount_namespace_is_refused() {
    let fake = FakeSys::new().sharing(&[Namespace::Mnt]);
    let err = enter(&spec(), &fake).unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::Enter {
                source: EnterError::NotAContainer { pid: PID }
            }
        ),
        "{err:?}"
    );
    assert!(!fake.calls().contains(&Call::HoldSignals));
}

#[test]
fn a_gone_process_is_a_clean_error() {
    for fail in [
        Call::OpenProc {
            pid: Pid::from_raw(PID),
        },
        Call::OpenNamespace { ns: Namespace::Pid },
    ] {
        let fake = FakeSys::new().fail_when(move |c| *c == fail, Errno::NOENT);
        let err = enter(&spec(), &fake).unwrap_err();
        assert_eq!(err.to_string(), "enter the running container");
        let RuntimeError::Enter { source } = &err else {
            panic!("{err:?}")
        };
        assert!(
            matches!(source, EnterError::Gone { pid: PID, .. }),
            "{source:?}"
        );
        assert_eq!(source.to_string(), "container process 77 is gone");
        assert!(!fake.calls().iter().any(|c| matches!(c, Call::Spawn { .. })));
    }
}

#[test]
fn a_user_is_set_after_the_caps_and_before_the_cwd() {
    let mut s = spec();
    s.user = Some((1000, 100));
    s.cwd = "/home/u".into();
    let fake = FakeSys::new();
    enter(&s, &fake).unwrap();
    let got = script(&fake);
    let at = got.iter().position(|c| c == "DropCaps").unwrap();
    assert_eq!(
        got[at - 1..at + 4],
        [
            "BecomeRoot",
            "DropCaps",
            "SetUser { uid: 1000, gid: 100 }",
            "cd /home/u",
            "Setsid"
        ]
    );
    // Root needs no SetUser.
    s.user = Some((0, 0));
    let fake = FakeSys::new();
    enter(&s, &fake).unwrap();
    assert!(!fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::SetUser { .. })));
}

#[test]
fn privileged_keeps_caps_and_loads_no_filter() {
    let mut s = spec();
    s.security = Security::privileged();
    let fake = FakeSys::new();
    enter(&s, &fake).unwrap();
    let got = script(&fake);
    for c in ["DropCaps", "NoNewPrivs", "seccomp"] {
        assert!(!got.contains(&c.to_owned()), "{c} in {got:?}");
    }
    // Even privileged: no descriptor of berth's reaches the command.
    assert!(got.contains(&"CloexecFrom { first: 3 }".to_owned()));
}

#[test]
fn stdio_is_redirected_in_the_commands_process() {
    let (r, w) = rustix::pipe::pipe().unwrap();
    let (rn, wn) = (r.as_raw_fd(), w.as_raw_fd());
    let mut s = spec();
    s.stdio.stdin = Some(r);
    s.stdio.stdout = Some(w);
    let fake = FakeSys::new();
    enter(&s, &fake).unwrap();
    let calls = fake.calls();
    let reset = calls.iter().position(|c| *c == Call::ResetSignals).unwrap();
    assert_eq!(
        calls[reset + 1..reset + 3],
        [
            Call::Redirect { fd: rn, target: 0 },
            Call::Redirect { fd: wn, target: 1 }
        ]
    );
}

#[test]
fn the_commands_status_is_relayed() {
    let fake = FakeSys::new().exit_with(ExitStatus::Signaled(9));
    assert_eq!(enter(&spec(), &fake).unwrap(), ExitStatus::Signaled(9));
}

#[test]
fn a_missing_program_is_an_exec_error_naming_it() {
    let mut s = spec();
    s.argv = vec!["nosuch".into()];
    let fake = FakeSys::new().fail_when(|c| matches!(c, Call::Exec { .. }), Errno::NOENT);
    let err = enter(&s, &fake).unwrap_err();
    assert!(
        matches!(&err, RuntimeError::Exec { cmd, source: Errno::NOENT } if cmd == "nosuch"),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "exec nosuch");
}

#[test]
fn invalid_specs_fail_before_any_call() {
    type Break = fn(&mut EnterSpec);
    let cases: [(&str, Break); 5] = [
        ("pid", |s| s.pid = 0),
        ("argv", |s| s.argv.clear()),
        ("cwd", |s| s.cwd = "rel".into()),
        ("user", |s| s.user = Some((u32::MAX, 0))),
        ("cgroup", |s| s.cgroup = vec!["rel".into()]),
    ];
    for (want, break_it) in cases {
        let mut s = spec();
        break_it(&mut s);
        let fake = FakeSys::new();
        match enter(&s, &fake) {
            Err(RuntimeError::InvalidSpec { field, .. }) => assert_eq!(field, want),
            other => panic!("{want}: {other:?}"),
        }
        assert!(fake.calls().is_empty());
    }
}

/// The error variant a failure of each kind of call must surface as.
fn expected(c: &Call) -> &'static str {
    match c {
        Call::OpenProc { .. } => "OpenProc",
        Call::OpenNamespace { .. } => "OpenNamespace",
        Call::HoldSignals | Call::ResetSignals => "Signals",
        Call::Spawn { .. } | Call::SpawnInto { .. } => "Spawn",
        Call::DieWithParent => "DieWithParent",
        Call::JoinCgroup { .. } => "JoinCgroup",
        Call::Setns { .. } => "Setns",
        Call::BecomeRoot => "UserNs",
        Call::DropCaps { .. } => "Capabilities",
        Call::SetUser { .. } => "SetUser",
        Call::Chdir { .. } => "Chdir",
        Call::Setsid => "Session",
        Call::CloexecFrom { .. } => "CloseFds",
        Call::NoNewPrivs => "NoNewPrivs",
        Call::LoadSeccomp { .. } => "SeccompLoad",
        Call::Exec { .. } => "Exec",
        Call::Wait { .. } => "Wait",
        other => panic!("unexpected call {other:?}"),
    }
}

/// The variant's name, one level into [`RuntimeError::Enter`].
fn variant(e: &RuntimeError) -> String {
    let name = |dbg: String| {
        dbg.split([' ', '{', '('])
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    match e {
        RuntimeError::Enter { source } => name(format!("{source:?}")),
        other => name(format!("{other:?}")),
    }
}

#[test]
fn every_failing_call_is_its_steps_error() {
    let mut s = spec();
    s.user = Some((1, 1));
    let n_calls = {
        let fake = FakeSys::new();
        enter(&s, &fake).unwrap();
        fake.calls().len()
    };
    // The last call (ReleaseSignals) cannot fail.
    for n in 0..n_calls - 1 {
        let fake = FakeSys::new().fail_nth(n, Errno::PERM);
        let res = enter(&s, &fake);
        let calls = fake.calls();
        let failed = &calls[n];
        if *failed == Call::ForgetChildren || matches!(failed, Call::SpawnInto { .. }) {
            // Atomics only: nothing to fail; a refused clone3 falls back.
            assert!(res.is_ok(), "{res:?}");
            continue;
        }
        let err = res.expect_err(&format!("call {n} ({failed:?}) failed but enter succeeded"));
        let want = match failed {
            // The relay's fork, the command's fork, or a wait.
            Call::Spawn { .. } if calls[..n].contains(&Call::DieWithParent) => "Fork",
            Call::Spawn { .. } => "Relay",
            Call::Wait { .. } if n == n_calls - 3 => "WaitCommand",
            other => expected(other),
        };
        assert_eq!(variant(&err), want, "call {n}: {failed:?}: {err}");
        if calls.contains(&Call::HoldSignals) && n > OPENS.len() {
            assert_eq!(calls.last(), Some(&Call::ReleaseSignals), "call {n}");
        }
        // A relay once forked is always reaped.
        let forks = calls
            .iter()
            .filter(|c| matches!(c, Call::Spawn { .. } | Call::SpawnInto { .. }))
            .count();
        if forks > 0 && !(forks == 1 && matches!(failed, Call::Spawn { .. })) {
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
fn failures_name_the_namespace_and_cgroup() {
    let fake = FakeSys::new().fail_when(|c| *c == Call::Setns { ns: Namespace::Pid }, Errno::INVAL);
    let err = enter(&spec(), &fake).unwrap_err();
    let RuntimeError::Enter { source } = err else {
        panic!("{err:?}")
    };
    assert_eq!(source.to_string(), "join the container's pid namespace");
    let fake = FakeSys::new().fail_when(|c| matches!(c, Call::JoinCgroup { .. }), Errno::NOENT);
    let err = enter(&spec(), &fake).unwrap_err();
    let dir = cgroup_tree().join("memory/berth/c1");
    assert_eq!(err.to_string(), format!("join cgroup {dir:?}"));
    // Nothing after the failed step ran.
    assert!(!fake.calls().iter().any(|c| matches!(c, Call::Setns { .. })));
}

#[test]
fn tty_opens_the_pty_in_the_commands_process() {
    let mut s = spec();
    s.tty = true;
    let (in_r, in_w) = rustix::pipe::pipe().unwrap();
    drop(in_w);
    let (out_r, out_w) = rustix::pipe::pipe().unwrap();
    s.stdio.stdin = Some(in_r);
    s.stdio.stdout = Some(out_w);
    let fake = FakeSys::new()
        .pty_output(b"/dev/pts/0\r\n")
        .exit_with(ExitStatus::Exited(3));
    assert_eq!(enter(&s, &fake).unwrap(), ExitStatus::Exited(3));
    drop(s);
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    while let Ok(n @ 1..) = rustix::io::read(&out_r, &mut buf) {
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(out, b"/dev/pts/0\r\n");
    let got = script(&fake);
    assert_eq!(got[OPENS.len()], "Socketpair");
    let cd = got.iter().position(|c| c == "cd /").unwrap();
    assert_eq!(
        got[cd + 1..],
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
            "Wait { pid: Pid(4242) }",
            "RecvFd",
            "SetNonblocking",
            "IsTerminal",
            "IsTerminal",
            "Wait { pid: Pid(4242) }",
            "ReleaseSignals",
        ]
    );
}

#[test]
fn messages_round_trip_and_short_ones_are_errors() {
    let (r, w) = pipe_with(PipeFlags::CLOEXEC).unwrap();
    write_message(&w, SIGNALED, 15);
    drop(w);
    assert_eq!(read_message(&r).unwrap(), Some((SIGNALED, 15)));
    let (r, w) = pipe_with(PipeFlags::CLOEXEC).unwrap();
    rustix::io::write(&w, &[1, 2]).unwrap();
    drop(w);
    assert!(matches!(
        read_message(&r),
        Err(RuntimeError::Protocol { .. })
    ));
}
