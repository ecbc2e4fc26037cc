//! [`enter`]: run a command inside a running container (`berth exec`).
//!
//! The parent opens the namespaces of the container's init through its
//! `/proc/PID` directory, so they all belong to that one process, and forks
//! a relay. The relay enters the container's cgroup first, through files
//! the parent opened ([`crate::cgroup::Entry`]), then joins the user, mount,
//! uts, ipc, net, pid and cgroup namespaces it does not already share.
//! setns(pid) only places children, so the relay forks the command's
//! process, a member of the container's pid namespace. That process
//! confines itself as the init was (capabilities, optional uid/gid, a new
//! session or the pty, no_new_privs, seccomp last) and execs. The relay
//! waits for it and passes its exit status back on a pipe; it stays in the
//! container's cgroup (one task against its pids limit), so stopping the
//! container kills it, and the command with it (SIGKILL).
//!
//! A failed step is reported over a CLOEXEC pipe, as in [`crate::run`]: step
//! index and errno. The relay closes its copy once the command's process
//! exists, so the pipe's EOF is the command's exec.

use std::cell::RefCell;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::sched::CloneFlags;
use nix::unistd::Pid;
use rustix::io::Errno;
use rustix::pipe::{pipe_with, PipeFlags};
use rustix::thread::CapabilitySet;
use tracing::debug;

use crate::cgroup::Entry;
use crate::error::{Result, RuntimeError};
use crate::exec::{self, ExecPlan};
use crate::pty::{relay_if_started, start_session, PtyChild};
use crate::report::{read_message, write_message};
use crate::seccomp::BpfProgram;
use crate::spec::{default_env, ExitStatus, RunSpec, Security, Stdio};
use crate::step::Step;
use crate::sys::HeldSignals;
use crate::sys::{Namespace, Sys};

/// Join order: the user namespace first, so that joining the others (owned
/// by it) is checked against the capabilities it grants.
const NAMESPACES: [Namespace; 7] = [
    Namespace::User,
    Namespace::Mnt,
    Namespace::Uts,
    Namespace::Ipc,
    Namespace::Net,
    Namespace::Pid,
    Namespace::Cgroup,
];

/// The step index reported when exec itself failed.
const EXEC_STEP: u32 = u32::MAX;
/// The step index reported when the relay could not fork the command.
const FORK_STEP: u32 = u32::MAX - 1;

/// Tags of the relay's one message on the status pipe.
const EXITED: u32 = 0;
const SIGNALED: u32 = 1;
const WAIT_FAILED: u32 = 2;

/// What [`enter`] runs, and in which container.
#[derive(Debug)]
pub struct EnterSpec {
    /// Host pid of the container's init ([`crate::Started::pid`]).
    pub pid: i32,
    /// The command; `argv[0]` is looked up in `env`'s `PATH` unless it has a `/`.
    pub argv: Vec<OsString>,
    /// The command's whole environment; a later entry overrides an earlier one.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory inside the container (absolute).
    pub cwd: PathBuf,
    /// uid and gid inside the container; `None` is root. Needs `CAP_SETUID`
    /// and `CAP_SETGID` among the container's capabilities; leaving uid 0
    /// clears the effective capabilities, as in Docker.
    pub user: Option<(u32, u32)>,
    /// A pty from the container's devpts as the command's stdio and
    /// controlling terminal, relayed to `stdio` (default: ours) as in `run`.
    pub tty: bool,
    /// As in [`RunSpec::stdio`].
    pub stdio: Stdio,
    /// The container's confinement: its `caps`, `no_new_privs` and
    /// `seccomp` apply; `mask_proc` and `restrict_devices` were the init's
    /// mounts and cgroup, which the command shares.
    pub security: Security,
    /// The container's cgroup directories ([`crate::Started::cgroup`]).
    pub cgroup: Vec<PathBuf>,
}

impl EnterSpec {
    /// Root in `/`, with the default environment, the default confinement
    /// and no cgroup or pty: set what the container was started with.
    pub fn new(pid: i32, argv: Vec<OsString>) -> Self {
        EnterSpec {
            pid,
            argv,
            env: default_env(std::env::var_os("TERM")),
            cwd: PathBuf::from("/"),
            user: None,
            tty: false,
            stdio: Stdio::default(),
            security: Security::default(),
            cgroup: Vec::new(),
        }
    }

    /// Rejects what the kernel would refuse later with a less helpful error.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field, reason: &str| {
            Err(RuntimeError::InvalidSpec {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.pid <= 0 {
            return invalid("pid", "must be a positive process id");
        }
        if let Some((uid, gid)) = self.user {
            if uid == u32::MAX || gid == u32::MAX {
                return invalid("user", "4294967295 is no uid or gid");
            }
        }
        let has_nul = |s: &OsStr| s.as_bytes().contains(&0);
        if self
            .cgroup
            .iter()
            .any(|d| !d.is_absolute() || has_nul(d.as_os_str()))
        {
            return invalid("cgroup", "directories must be absolute paths without NUL");
        }
        self.command().validate()
    }

    /// The command as a [`RunSpec`] in `/`: argv, env and cwd are checked
    /// and planned for exec as `run` does.
    fn command(&self) -> RunSpec {
        let mut spec = RunSpec::new("/", "exec", self.argv.clone());
        spec.env.clone_from(&self.env);
        spec.cwd.clone_from(&self.cwd);
        spec
    }
}

/// Why entering a running container failed, before the command's exec.
#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    #[error("container process {pid} is gone")]
    Gone { pid: i32, source: Errno },

    #[error("open /proc/{pid}")]
    OpenProc { pid: i32, source: Errno },

    #[error("open the {ns} namespace of process {pid}")]
    OpenNamespace {
        pid: i32,
        ns: Namespace,
        source: Errno,
    },

    #[error("process {pid} shares berth's mount namespace: it is no container's init")]
    NotAContainer { pid: i32 },

    #[error("start the process that enters the container")]
    Relay { source: Errno },

    #[error("ask to be killed when berth exits")]
    DieWithParent { source: Errno },

    #[error("join the container's {ns} namespace")]
    Setns { ns: Namespace, source: Errno },

    #[error("fork into the container's pid namespace")]
    Fork { source: Errno },

    #[error("become uid {uid}, gid {gid}")]
    SetUser { uid: u32, gid: u32, source: Errno },

    #[error("wait for the command")]
    WaitCommand { source: Errno },

    #[error("the relay process ended ({status:?}) without the command's exit status")]
    NoStatus { status: ExitStatus },
}

/// Runs `spec.argv` in the running container whose init is `spec.pid` and
/// returns how it ended. Setup failures, exec's included, come back as the
/// [`RuntimeError`] of the failed step.
pub fn enter(spec: &EnterSpec, sys: &dyn Sys) -> Result<ExitStatus> {
    spec.validate()?;
    let exec_plan = ExecPlan::new(&spec.command())?;
    // Compiled here: the command's process may not allocate or call libseccomp.
    let caps = spec.security.caps.unwrap_or(CapabilitySet::all());
    let seccomp = spec
        .security
        .seccomp
        .program_cached(caps, spec.security.seccomp_cache.as_deref())?;
    let namespaces = open_namespaces(sys, spec.pid)?;
    let (parent_sock, pty) = if spec.tty {
        let (parent, child) = sys.socketpair().map_err(|source| RuntimeError::Pty {
            step: "create the socket pair for the pty master",
            source,
        })?;
        (Some(parent), Some(PtyChild::new(child)))
    } else {
        (None, None)
    };
    let cgroup = Entry::open(&spec.cgroup)?;
    let plan = Plan::new(spec, &cgroup, &namespaces, pty.as_ref(), seccomp.as_ref());
    let pipe = || pipe_with(PipeFlags::CLOEXEC).map_err(|source| RuntimeError::Pipe { source });
    let (rd, wr) = pipe()?;
    let (status_rd, status_wr) = pipe()?;
    // In a cell so that the relay can close its copy.
    let wr = RefCell::new(Some(wr));
    let joined: Vec<Namespace> = namespaces.iter().map(|(ns, _)| *ns).collect();
    debug!(pid = spec.pid, argv = ?spec.argv, ?joined, tty = spec.tty, "enter");

    sys.hold_signals()
        .map_err(|source| RuntimeError::Signals { source })?;
    let _held = HeldSignals(sys);
    let relay = {
        let mut child = |born_in_cgroup| {
            relay_main(
                &plan,
                &exec_plan,
                sys,
                &wr,
                &status_wr,
                pty.as_ref(),
                born_in_cgroup,
            )
        };
        cgroup
            .spawn(sys, CloneFlags::empty(), &mut child)
            .map_err(|source| EnterError::Relay { source })?
    };
    // Ours must go: the report pipe's EOF is then the command's exec (or
    // the relay's failure), the status pipe's the relay's exit.
    drop(wr.take());
    drop(status_wr);
    if let Some(pty) = &pty {
        pty.close_parent_copy();
    }
    let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
    let session = match &parent_sock {
        Some(sock) => start_session(sys, sock, &spec.stdio, stdin.as_fd(), stdout.as_fd()),
        None => Ok(None),
    };
    let report = read_message(&rd);
    let relayed = relay_if_started(
        matches!(report, Ok(None)),
        &session,
        spec.tty,
        "the command",
    );
    // Restores the host terminal; hangs the pty up after a failed relay.
    let session = session.map(drop);
    let waited = sys
        .wait(relay)
        .map_err(|source| RuntimeError::Wait { source });
    if let Some((step, errno)) = report? {
        return Err(plan.error(step, Errno::from_raw_os_error(errno), &exec_plan));
    }
    session?;
    relayed?;
    let relay_status = waited?;
    let status = match read_message(&status_rd)? {
        Some((EXITED, code)) => ExitStatus::Exited(code),
        Some((SIGNALED, sig)) => ExitStatus::Signaled(sig),
        Some((WAIT_FAILED, errno)) => {
            let source = Errno::from_raw_os_error(errno);
            return Err(EnterError::WaitCommand { source }.into());
        }
        // Killed with the container's cgroup, say: the command, which dies
        // with the relay, got the same SIGKILL.
        None if relay_status == ExitStatus::Signaled(libc::SIGKILL) => relay_status,
        _ => {
            let status = relay_status;
            return Err(EnterError::NoStatus { status }.into());
        }
    };
    debug!(pid = spec.pid, ?status, "command exited");
    Ok(status)
}

/// The init's namespaces that differ from ours, in join order.
fn open_namespaces(sys: &dyn Sys, pid: i32) -> Result<Vec<(Namespace, OwnedFd)>, EnterError> {
    let proc = sys
        .open_proc(Pid::from_raw(pid))
        .map_err(|source| match source {
            Errno::NOENT | Errno::SRCH => EnterError::Gone { pid, source },
            _ => EnterError::OpenProc { pid, source },
        })?;
    let mut out = Vec::with_capacity(NAMESPACES.len());
    for ns in NAMESPACES {
        match sys.open_namespace(proc.as_fd(), ns) {
            Ok(Some(fd)) => out.push((ns, fd)),
            Ok(None) => {}
            // It exited (or is a zombie) since /proc/PID was opened.
            Err(source @ (Errno::NOENT | Errno::SRCH)) => {
                return Err(EnterError::Gone { pid, source })
            }
            Err(source) => return Err(EnterError::OpenNamespace { pid, ns, source }),
        }
    }
    // Every berth container has its own: a pid reused by a host process, say.
    if !out.iter().any(|(ns, _)| *ns == Namespace::Mnt) {
        return Err(EnterError::NotAContainer { pid });
    }
    Ok(out)
}

/// One step of the relay or of the command's process.
#[derive(Debug)]
enum EnterStep<'a> {
    /// A step of `run`'s container setup.
    Common(Step<'a>),
    /// Dies with berth, whose pid is `parent`.
    DieWithParent {
        parent: Pid,
    },
    Setns {
        ns: Namespace,
        fd: BorrowedFd<'a>,
    },
    SetUser {
        uid: u32,
        gid: u32,
    },
}

impl EnterStep<'_> {
    fn run(&self, sys: &dyn Sys) -> Result<(), Errno> {
        match self {
            EnterStep::Common(step) => step.run(sys),
            EnterStep::DieWithParent { parent } => sys.die_with_parent(*parent),
            EnterStep::Setns { ns, fd } => sys.setns(*fd, *ns),
            EnterStep::SetUser { uid, gid } => sys.set_user(*uid, *gid),
        }
    }

    fn error(&self, source: Errno) -> RuntimeError {
        let e = match self {
            EnterStep::Common(step) => return step.error(source),
            EnterStep::DieWithParent { .. } => EnterError::DieWithParent { source },
            EnterStep::Setns { ns, .. } => EnterError::Setns { ns: *ns, source },
            EnterStep::SetUser { uid, gid } => EnterError::SetUser {
                uid: *uid,
                gid: *gid,
                source,
            },
        };
        e.into()
    }
}

/// Every step, in order: `steps[..relay]` run in the relay, the rest in the
/// command's process.
#[derive(Debug)]
struct Plan<'a> {
    steps: Vec<EnterStep<'a>>,
    relay: usize,
}

impl<'a> Plan<'a> {
    fn new(
        spec: &'a EnterSpec,
        cgroup: &'a Entry,
        namespaces: &'a [(Namespace, OwnedFd)],
        pty: Option<&'a PtyChild>,
        seccomp: Option<&'a BpfProgram>,
    ) -> Self {
        use EnterStep::Common;
        let mut steps = vec![EnterStep::DieWithParent {
            parent: nix::unistd::getpid(),
        }];
        // Before setns: the relay is still host root.
        steps.extend(cgroup.steps().map(Common));
        for (ns, fd) in namespaces {
            steps.push(EnterStep::Setns {
                ns: *ns,
                fd: fd.as_fd(),
            });
        }
        let relay = steps.len();
        steps.push(Common(Step::ResetSignals));
        if pty.is_none() {
            let stdio = [&spec.stdio.stdin, &spec.stdio.stdout, &spec.stdio.stderr];
            for (target, fd) in (0..).zip(stdio) {
                if let Some(fd) = fd {
                    steps.push(Common(Step::Redirect {
                        fd: fd.as_fd(),
                        target,
                    }));
                }
            }
        }
        if namespaces.iter().any(|(ns, _)| *ns == Namespace::User) {
            // Our host ids mean nothing in the container's user namespace.
            steps.push(Common(Step::BecomeRoot));
        }
        if let Some(keep) = spec.security.caps {
            // Still root: dropping from the bounding set needs CAP_SETPCAP.
            steps.push(Common(Step::DropCaps { keep }));
        }
        if let Some((uid, gid)) = spec.user.filter(|u| *u != (0, 0)) {
            steps.push(EnterStep::SetUser { uid, gid });
        }
        // As the user, who must be able to enter it.
        steps.push(Common(Step::Chdir {
            path: spec.cwd.clone(),
        }));
        match pty {
            // Opened here so that its slave is in the container's devpts.
            Some(pty) => steps.extend(pty.steps().into_iter().map(Common)),
            // No controlling terminal of ours (no TIOCSTI into it).
            None => steps.push(Common(Step::Setsid)),
        }
        steps.push(Common(Step::CloseInherited));
        if spec.security.no_new_privs {
            steps.push(Common(Step::NoNewPrivs));
        }
        if let Some(prog) = seccomp {
            // Last: every step above makes calls the filter may deny.
            steps.push(Common(Step::Seccomp { prog }));
        }
        Plan { steps, relay }
    }

    /// The error a report of `step` failing with `errno` stands for.
    fn error(&self, step: u32, errno: Errno, exec_plan: &ExecPlan) -> RuntimeError {
        match step {
            EXEC_STEP => RuntimeError::Exec {
                cmd: exec_plan.cmd.clone(),
                source: errno,
            },
            FORK_STEP => EnterError::Fork { source: errno }.into(),
            _ => match usize::try_from(step).ok().and_then(|i| self.steps.get(i)) {
                Some(s) => s.error(errno),
                None => RuntimeError::Protocol {
                    reason: format!("unknown step {step} failed ({errno})"),
                },
            },
        }
    }
}

/// The relay, from fork to the command's end: only syscalls through `sys`
/// and pipe writes, as it runs in a copy of a possibly threaded process.
fn relay_main(
    plan: &Plan<'_>,
    exec_plan: &ExecPlan,
    sys: &dyn Sys,
    wr: &RefCell<Option<OwnedFd>>,
    status: &OwnedFd,
    pty: Option<&PtyChild>,
    born_in_cgroup: bool,
) -> i32 {
    // SIGTERM and SIGHUP that berth forwards here, the handler inherited
    // from berth forwards on to the children this process spawns: only the
    // command, not the other containers of the berth process.
    sys.forget_children();
    for (i, step) in plan.steps[..plan.relay].iter().enumerate() {
        if matches!(step, EnterStep::Common(s) if s.done_by_clone(born_in_cgroup)) {
            continue;
        }
        if let Err(errno) = step.run(sys) {
            report(wr, step_index(i), errno);
            return 1;
        }
    }
    let mut command = || command_main(plan, exec_plan, sys, wr);
    let pid = match sys.spawn(CloneFlags::empty(), &mut command) {
        Ok(pid) => pid,
        Err(errno) => {
            report(wr, FORK_STEP, errno);
            return 1;
        }
    };
    // Only the command's process may hold these now: berth waits for their EOF.
    drop(wr.borrow_mut().take());
    if let Some(pty) = pty {
        pty.close_parent_copy();
    }
    let (tag, value) = match sys.wait(pid) {
        Ok(ExitStatus::Exited(code)) => (EXITED, code),
        Ok(ExitStatus::Signaled(sig)) => (SIGNALED, sig),
        Err(errno) => (WAIT_FAILED, errno.raw_os_error()),
    };
    write_message(status, tag, value);
    0
}

/// The command's process, from fork to exec.
fn command_main(
    plan: &Plan<'_>,
    exec_plan: &ExecPlan,
    sys: &dyn Sys,
    wr: &RefCell<Option<OwnedFd>>,
) -> i32 {
    for (i, step) in plan.steps.iter().enumerate().skip(plan.relay) {
        if let Err(errno) = step.run(sys) {
            report(wr, step_index(i), errno);
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

fn step_index(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(FORK_STEP - 1)
}

fn report(wr: &RefCell<Option<OwnedFd>>, step: u32, errno: Errno) {
    if let Some(fd) = wr.borrow().as_ref() {
        write_message(fd, step, errno.raw_os_error());
    }
}

#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod tests;
