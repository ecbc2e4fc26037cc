//! Root, real kernel: start a container (`sleep 30` in a busybox rootfs, in
//! its own cgroup) with [`crate::run_observed`] in a thread, enter it with
//! [`LinuxSys`] and check what the command saw; then kill the container and
//! check its cgroup is gone.

use std::ffi::OsString;
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;
use crate::cgroup::Limits;
use crate::spawn::{run_observed, Started};
use crate::spec::UserNs;
use crate::sys::LinuxSys;

const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "grep", "hostname", "id", "sleep", "test", "tr", "tty",
];

/// Under CI (`CI=true`) a missing prerequisite is a failure, elsewhere a skip.
fn skip(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("required under CI, but: {reason}");
    }
    eprintln!("SKIP: {reason}");
}

fn can_run() -> bool {
    if !fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        skip("enter tests need root (namespaces, cgroups)");
        return false;
    }
    if !Path::new("/bin/busybox").exists() {
        skip("enter tests need /bin/busybox (busybox-static)");
        return false;
    }
    true
}

fn argv(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn dev_null() -> OwnedFd {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .expect("open /dev/null")
        .into()
}

/// Polls `f` every 10 ms for up to 10 s.
fn wait_for(f: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// A running container; dropping it kills it and waits for `run` to return.
struct Container {
    started: Started,
    run: Option<JoinHandle<Result<ExitStatus>>>,
    _root: tempfile::TempDir,
}

impl Container {
    /// `sleep 30` as init, in cgroup `name`, once it has exec'd (the
    /// `started` callback comes before its setup is done).
    fn start(name: &str, userns: Option<UserNs>) -> Result<Container, String> {
        Container::start_with(name, userns, false)
    }

    /// [`Container::start`], with clone3 refused in the thread that runs it
    /// (`no_clone3`), as an old kernel or a seccomp filter around berth would.
    fn start_with(
        name: &str,
        userns: Option<UserNs>,
        no_clone3: bool,
    ) -> Result<Container, String> {
        let root = tempfile::Builder::new()
            .prefix("berth-enter-")
            .tempdir_in("/var/tmp")
            .expect("temp dir in /var/tmp");
        let bin = root.path().join("bin");
        fs::create_dir(&bin).expect("mkdir rootfs/bin");
        // A hard link, not a copy: a copy open for writing while a concurrent
        // test forks makes exec of it fail with ETXTBSY.
        if fs::hard_link("/bin/busybox", bin.join("busybox")).is_err() {
            fs::copy("/bin/busybox", bin.join("busybox")).expect("copy busybox");
        }
        for applet in APPLETS {
            symlink("busybox", bin.join(applet)).expect("applet symlink");
        }
        let (tx, rx) = mpsc::channel();
        let (path, name) = (root.path().to_path_buf(), name.to_owned());
        let run = std::thread::spawn(move || {
            if no_clone3 {
                refuse_clone3();
            }
            let mut spec = RunSpec::new(path, name, argv(&["sleep", "30"]))
                .with_cgroup(None, Limits::default());
            spec.userns = userns;
            spec.stdio = Stdio {
                stdin: Some(dev_null()),
                stdout: Some(dev_null()),
                stderr: Some(dev_null()),
            };
            run_observed(&spec, &LinuxSys, &mut |s| {
                let _ = tx.send(s);
            })
        });
        let Ok(started) = rx.recv_timeout(Duration::from_secs(30)) else {
            let res = run.join().expect("run thread");
            return Err(format!("the container did not start: {res:?}"));
        };
        let mut c = Container {
            started,
            run: Some(run),
            _root: root,
        };
        let cmdline = format!("/proc/{}/cmdline", c.started.pid);
        if !wait_for(|| fs::read(&cmdline).is_ok_and(|b| b.starts_with(b"sleep\0"))) {
            let res = c.kill();
            return Err(format!("the container's init never ran sleep: {res:?}"));
        }
        Ok(c)
    }

    /// An [`EnterSpec`] for this container with default confinement.
    fn spec(&self, args: &[&str]) -> EnterSpec {
        let mut s = EnterSpec::new(self.started.pid, argv(args));
        s.cgroup.clone_from(&self.started.cgroup);
        s.stdio.stdin = Some(dev_null());
        s.stdio.stderr = Some(dev_null());
        s
    }

    /// Enters with `spec`, its stdout going to a file; returns what it wrote.
    fn enter_capturing(&self, mut spec: EnterSpec) -> (Result<ExitStatus>, String) {
        let out = tempfile::NamedTempFile::new().expect("stdout file");
        spec.stdio.stdout = Some(out.reopen().expect("reopen stdout file").into());
        let res = enter(&spec, &LinuxSys);
        drop(spec);
        (res, fs::read_to_string(out.path()).expect("read stdout"))
    }

    fn kill(&mut self) -> Option<Result<ExitStatus>> {
        let run = self.run.take()?;
        LinuxSys.kill(Pid::from_raw(self.started.pid));
        Some(run.join().expect("run thread panicked"))
    }

    /// Kills the container and checks that its cgroup went with it.
    fn stop(mut self) {
        let res = self.kill().expect("still running");
        assert!(
            matches!(res, Ok(ExitStatus::Signaled(9))),
            "the container ended otherwise: {res:?}"
        );
        for dir in &self.started.cgroup {
            assert!(!dir.exists(), "cgroup {dir:?} left behind");
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn procs(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

const STATUS_LINES: &str = "'^(CapEff|CapPrm|CapBnd|NoNewPrivs|Seccomp):'";

#[test]
fn enter_joins_the_namespaces_cgroup_and_confinement_of_init() {
    if !can_run() {
        return;
    }
    let c = Container::start("berth-enter-ns", None).expect("start the container");
    assert!(!c.started.cgroup.is_empty());
    let script = format!(
        "hostname; tr '\\0' ' ' < /proc/1/cmdline; echo; \
         test -d /proc/$$ && echo own-pid-in-proc; \
         cat /proc/self/cgroup; echo --; cat /proc/1/cgroup; echo --; \
         grep -E {STATUS_LINES} /proc/self/status; echo --; \
         grep -E {STATUS_LINES} /proc/1/status; exit 7"
    );
    let (res, out) = c.enter_capturing(c.spec(&["sh", "-c", &script]));
    assert_eq!(res.expect("enter"), ExitStatus::Exited(7), "{out}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("berth-enter-ns"), "uts namespace: {out}");
    assert_eq!(lines.next(), Some("sleep 30 "), "mount namespace: {out}");
    // The container's /proc shows it: it is in the container's pid namespace.
    assert_eq!(
        lines.next(),
        Some("own-pid-in-proc"),
        "pid namespace: {out}"
    );
    let rest: Vec<&str> = lines.collect();
    let parts: Vec<&[&str]> = rest.split(|l| *l == "--").collect();
    let [own_cg, init_cg, own_st, init_st] = parts[..] else {
        panic!("{out}")
    };
    assert_eq!(own_cg, init_cg, "cgroup: {out}");
    // In the container's cgroup namespace, its cgroup is the root.
    assert!(own_cg
        .iter()
        .any(|l| l.contains(":memory:/") || l.starts_with("0::/")));
    assert!(own_cg.iter().all(|l| l.ends_with(":/")), "cgroup: {out}");
    assert_eq!(own_st, init_st, "confinement: {out}");
    let want_eff = format!("CapEff:\t{:016x}", crate::DEFAULT_CAPS.bits());
    assert!(own_st.contains(&want_eff.as_str()), "{want_eff} in {out}");
    assert!(own_st.contains(&"NoNewPrivs:\t1"), "{out}");
    assert!(own_st.contains(&"Seccomp:\t2"), "{out}");

    // Seen from the host: while the command runs, each of the init's cgroup
    // directories holds the init, the relay and the command.
    let mut c = c;
    let res = enter_blocked(&mut c, false, |c, _| {
        for d in &c.started.cgroup {
            assert_eq!(procs(d).len(), 3, "{d:?}");
        }
    });
    assert_eq!(res.expect("enter"), ExitStatus::Exited(5));
    // The relay and the command are gone from it again.
    for d in &c.started.cgroup {
        assert_eq!(procs(d), [c.started.pid.to_string()], "{d:?}");
    }
    c.stop();
}

/// The parent of process `pid`, from `/proc/PID/stat`.
fn ppid(pid: &str) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may hold spaces: split after it.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Enters `c` with `sh -c 'read x; exit 5'` reading a pipe, in a thread.
/// Once the command runs (the container's cgroup holds the init, the relay
/// and the command, exec'd), calls `meanwhile` with the relay's pid. If that `ends`
/// the command, waits up to 10 s for enter to return; then gives the
/// command its line.
fn enter_blocked(
    c: &mut Container,
    ends: bool,
    meanwhile: impl FnOnce(&mut Container, i32),
) -> Result<ExitStatus> {
    let (r, w) = pipe_with(PipeFlags::CLOEXEC).expect("pipe");
    let mut spec = c.spec(&["sh", "-c", "read x; exit 5"]);
    spec.stdio.stdin = Some(r);
    spec.stdio.stdout = Some(dev_null());
    std::thread::scope(|s| {
        let entered = s.spawn(|| enter(&spec, &LinuxSys));
        let me = std::process::id();
        let init = c.started.pid.to_string();
        let dir = c.started.cgroup.first().expect("a cgroup").clone();
        let relay = || {
            let procs = procs(&dir);
            let relay = procs.iter().find(|p| **p != init && ppid(p) == Some(me))?;
            let command = procs.iter().find(|p| **p != init && *p != relay)?;
            // Exec'd: a signal that comes between fork and the reset of
            // the dispositions is lost, as in `run`.
            let cmdline = fs::read(format!("/proc/{command}/cmdline")).ok()?;
            relay
                .parse()
                .ok()
                .filter(|_| cmdline.starts_with(b"sh\0-c\0"))
        };
        let joined = wait_for(|| relay().is_some());
        // Unblocks the command on every way out, a failed assertion's too.
        let unblock = Unblock(Some(w));
        if let (true, Some(pid)) = (joined, relay()) {
            meanwhile(c, pid);
        }
        if ends {
            wait_for(|| entered.is_finished());
        }
        drop(unblock);
        let res = entered.join().expect("enter thread");
        assert!(joined, "relay and command not seen in {dir:?}: {res:?}");
        res
    })
}

struct Unblock(Option<OwnedFd>);

impl Drop for Unblock {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            // EPIPE if the command is gone already.
            let _ = rustix::io::write(&w, b"\n");
        }
    }
}

#[test]
fn sigterm_reaches_the_command_and_a_stop_ends_it() {
    if !can_run() {
        return;
    }
    let mut c = Container::start("berth-enter-sig", None).expect("start the container");
    // What berth forwards to the relay, the relay forwards to the command.
    let res = enter_blocked(&mut c, true, |_, relay| {
        let relay = Pid::from_raw(relay);
        nix::sys::signal::kill(relay, nix::sys::signal::Signal::SIGTERM).expect("kill");
    });
    assert_eq!(res.expect("enter"), ExitStatus::Signaled(libc::SIGTERM));
    // Stopping the container kills the command (and the relay, in its cgroup).
    let mut stopped = None;
    let res = enter_blocked(&mut c, true, |c, _| stopped = c.kill());
    assert_eq!(res.expect("enter"), ExitStatus::Signaled(libc::SIGKILL));
    assert!(
        matches!(stopped, Some(Ok(ExitStatus::Signaled(9)))),
        "{stopped:?}"
    );
    for dir in &c.started.cgroup {
        assert!(!dir.exists(), "cgroup {dir:?} left behind");
    }
}

#[test]
fn enter_as_a_user_with_a_tty_and_a_missing_program() {
    if !can_run() {
        return;
    }
    let c = Container::start("berth-enter-user", None).expect("start the container");

    let mut spec = c.spec(&["sh", "-c", "id -u; id -g; grep CapEff /proc/self/status"]);
    spec.user = Some((1000, 1001));
    let (res, out) = c.enter_capturing(spec);
    assert_eq!(res.expect("enter as 1000"), ExitStatus::Exited(0), "{out}");
    assert_eq!(out, "1000\n1001\nCapEff:\t0000000000000000\n");

    let mut spec = c.spec(&[
        "sh",
        "-c",
        "tty; test -t 0 && test -t 1 && echo term; exit 3",
    ]);
    spec.tty = true;
    let (in_r, in_w) = pipe_with(PipeFlags::CLOEXEC).expect("pipe");
    drop(in_w);
    spec.stdio.stdin = Some(in_r);
    let (res, out) = c.enter_capturing(spec);
    assert_eq!(
        res.expect("enter with a tty"),
        ExitStatus::Exited(3),
        "{out}"
    );
    assert!(
        out.contains("/dev/pts/") && out.contains("term\r\n"),
        "{out:?}"
    );

    let (res, _) = c.enter_capturing(c.spec(&["nosuch-program", "x"]));
    let err = res.expect_err("a missing program");
    assert!(
        matches!(&err, RuntimeError::Exec { cmd, source: Errno::NOENT } if cmd == "nosuch-program"),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "exec nosuch-program");
    c.stop();
}

#[test]
fn enter_a_container_with_its_own_user_namespace() {
    if !can_run() {
        return;
    }
    let userns = UserNs::root_at(200_000, 200_000, 65536);
    let c = match Container::start("berth-enter-userns", Some(userns)) {
        Ok(c) => c,
        Err(e) => {
            skip(&format!("no user namespace container here: {e}"));
            return;
        }
    };
    let script = "id -u; tr -s ' ' < /proc/self/uid_map; hostname";
    let (res, out) = c.enter_capturing(c.spec(&["sh", "-c", script]));
    assert_eq!(res.expect("enter"), ExitStatus::Exited(0), "{out}");
    assert_eq!(out, "0\n 0 200000 65536\nberth-enter-userns\n");
    c.stop();
}

/// Makes clone3 fail with ENOSYS in the calling thread and what it spawns.
fn refuse_clone3() {
    use libc::{sock_filter, sock_fprog, BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let stmt = |code, k| sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |k, jt, jf| sock_filter {
        code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let clone3 = u32::try_from(libc::SYS_clone3).unwrap();
    let enosys = u32::try_from(libc::ENOSYS).unwrap();
    // seccomp_data: nr at offset 0, arch at offset 4.
    let mut filter = [
        stmt((BPF_LD | BPF_W | BPF_ABS) as u16, 4),
        jump(0xc000_003e, 0, 3), // AUDIT_ARCH_X86_64, else allow
        stmt((BPF_LD | BPF_W | BPF_ABS) as u16, 0),
        jump(clone3, 0, 1),
        stmt(BPF_RET as u16, libc::SECCOMP_RET_ERRNO | enosys),
        stmt(BPF_RET as u16, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = sock_fprog {
        len: u16::try_from(filter.len()).unwrap(),
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `prog` points to `filter`, both alive across the call; as
    // root, PR_SET_SECCOMP needs no no_new_privs.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            std::ptr::from_ref(&prog),
        )
    };
    assert_eq!(
        rc,
        0,
        "install the clone3 filter: {}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn without_clone3_run_and_enter_join_every_hierarchy_by_writes() {
    if !can_run() || !cfg!(target_arch = "x86_64") {
        return;
    }
    let c = Container::start_with("berth-enter-noclone3", None, true).expect("start");
    assert!(!c.started.cgroup.is_empty());
    for d in &c.started.cgroup {
        assert_eq!(procs(d), [c.started.pid.to_string()], "{d:?}");
    }
    let spec = c.spec(&["cat", "/proc/self/cgroup"]);
    let (res, out) = std::thread::scope(|s| {
        s.spawn(|| {
            refuse_clone3();
            c.enter_capturing(spec)
        })
        .join()
        .expect("enter thread")
    });
    assert_eq!(res.expect("enter"), ExitStatus::Exited(0), "{out}");
    // Its cgroup namespace's root is the container's cgroup, in each
    // hierarchy: outside it, a line would read "/..".
    assert_eq!(
        out.lines().count(),
        fs::read_to_string("/proc/self/cgroup")
            .unwrap()
            .lines()
            .count(),
        "{out}"
    );
    assert!(out.lines().all(|l| l.ends_with(":/")), "{out}");
    c.stop();
}

#[test]
fn enter_fails_cleanly_without_a_container() {
    // No such process (pid_max is at most 2^22).
    let spec = EnterSpec::new(i32::MAX, argv(&["true"]));
    let err = enter(&spec, &LinuxSys).unwrap_err();
    assert!(
        matches!(
            &err,
            RuntimeError::Enter {
                source: EnterError::Gone { pid: i32::MAX, .. }
            }
        ),
        "{err:?}"
    );
    // A process sharing our namespaces is no container.
    let me = i32::try_from(std::process::id()).unwrap();
    let err = enter(&EnterSpec::new(me, argv(&["true"])), &LinuxSys).unwrap_err();
    assert!(
        matches!(
            &err,
            RuntimeError::Enter {
                source: EnterError::NotAContainer { .. }
            }
        ),
        "{err:?}"
    );
}
