//! [`run`]: clone the container process into new namespaces, let it set up
//! its rootfs and exec, and wait for it. The child reports a failed step over
//! a CLOEXEC pipe (step index and errno); a clean exec closes the pipe unread.

use std::os::fd::{AsFd, OwnedFd};

use nix::sched::CloneFlags;
use nix::unistd::Pid;
use rustix::io::Errno;
use rustix::pipe::{pipe_with, PipeFlags};
use rustix::thread::CapabilitySet;
use tracing::{debug, warn};

use crate::cgroup::Cgroup;

use crate::error::{Result, RuntimeError};
use crate::exec::{self, ExecPlan};
use crate::pty::{receive_master, relay_if_started, start_session, PtyChild};
use crate::report::{read_message, write_message};
use crate::rootfs::{setup_steps, ChildContext};
use crate::spec::{ExitStatus, NetMode, RunSpec, UserNs};
use crate::step::Step;
use crate::sys::HeldSignals;
use crate::sys::Sys;

/// The step index the child reports when exec itself failed.
const EXEC_STEP: u32 = u32::MAX;

/// Runs `spec.argv` in a new container built on `spec.rootfs` and returns how
/// it ended. Setup failures, exec failures included, come back as the
/// [`RuntimeError`] of the failed step; the container's mounts never reach
/// the host's mount namespace.
pub fn run(spec: &RunSpec, sys: &dyn Sys) -> Result<ExitStatus> {
    run_observed(spec, sys, &mut drop)
}

/// What a running container is, for whoever watches it: its init's host pid,
/// its cgroup directories (one per hierarchy; empty without a cgroup) and,
/// with [`RunSpec::keep_pty`], its pty master.
#[derive(Debug)]
pub struct Started {
    pub pid: i32,
    pub cgroup: Vec<std::path::PathBuf>,
    pub pty: Option<OwnedFd>,
}

/// [`run`], calling `started` once the container's command runs (its exec
/// succeeded, so setup is over) and before waiting for it.
pub fn run_observed(
    spec: &RunSpec,
    sys: &dyn Sys,
    started: &mut dyn FnMut(Started),
) -> Result<ExitStatus> {
    spec.validate()?;
    let exec_plan = ExecPlan::new(spec)?;
    // Compiled here: the child may not allocate or call libseccomp.
    let caps = spec.security.caps.unwrap_or(CapabilitySet::all());
    let seccomp = spec
        .security
        .seccomp
        .program_cached(caps, spec.security.seccomp_cache.as_deref())?;
    // Before the child exists, so its limits hold from its first instruction.
    let cgroup = CgroupGuard(match &spec.cgroup {
        Some(cfg) => Some(Cgroup::create(cfg)?),
        None => None,
    });
    // Without a cgroup, an entry that joins nothing.
    let entry = cgroup
        .0
        .as_ref()
        .map(Cgroup::entry)
        .transpose()?
        .unwrap_or_default();
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
    // The child joins its cgroup itself, asks to die with us, then waits
    // for its id maps and network and for our word: if we die before it
    // asked, the pipe's EOF ends it instead of a container nobody watches.
    let (sync_rd, go) =
        pipe_with(PipeFlags::CLOEXEC).map_err(|source| RuntimeError::Pipe { source })?;
    let tree = match &spec.userns {
        Some(ns) if ns.idmap_rootfs => {
            Some(sys.socketpair().map_err(|source| RuntimeError::UserNs {
                step: "create the socket pair for the idmapped rootfs",
                source,
            })?)
        }
        _ => None,
    };
    let ctx = ChildContext {
        cgroup: &entry,
        pty: pty.as_ref(),
        sync: (sync_rd.as_fd(), go.as_fd()),
        tree_sock: tree.as_ref().map(|(_, child)| child.as_fd()),
        seccomp: seccomp.as_ref(),
    };
    let steps = setup_steps(spec, &ctx);
    let (rd, wr) = pipe_with(PipeFlags::CLOEXEC).map_err(|source| RuntimeError::Pipe { source })?;
    debug!(rootfs = %spec.rootfs.display(), hostname = %spec.hostname, argv = ?spec.argv, net = ?spec.net, tty = spec.tty, userns = spec.userns.is_some(), "run");

    sys.hold_signals()
        .map_err(|source| RuntimeError::Signals { source })?;
    let _held = HeldSignals(sys);
    let pid = {
        let mut child = |born_in_cgroup| child_main(&steps, &exec_plan, sys, &wr, born_in_cgroup);
        entry
            .spawn(sys, clone_flags(spec), &mut child)
            .map_err(|source| RuntimeError::Clone { source })?
    };
    // Ours must go so that the child's exec (or exit) is the pipe's EOF, and
    // its exit before sending a pty master the socket's.
    drop(wr);
    if let Some(pty) = &pty {
        pty.close_parent_copy();
    }
    // Removes the host veth when we are done, whatever happened; the kernel
    // would too once the namespace goes, but later.
    let _net = NetGuard {
        sys,
        host_veth: match &spec.net {
            NetMode::Bridge(link) => Some(link.host_veth.as_str()),
            _ => None,
        },
    };
    let prepared = prepare_child(sys, spec, pid, tree.as_ref().map(|(p, _)| p));
    let released = prepared.and_then(|()| {
        sys.release_child(go.as_fd())
            .map_err(|source| RuntimeError::Sync { source })
    });
    if let Err(e) = released {
        sys.kill(pid);
        let _ = sys.wait(pid);
        return Err(e);
    }

    let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
    let mut kept_pty = None;
    let session = match &parent_sock {
        Some(sock) if spec.keep_pty => receive_master(sys, sock).map(|m| {
            kept_pty = m;
            None
        }),
        Some(sock) => start_session(sys, sock, &spec.stdio, stdin.as_fd(), stdout.as_fd()),
        None => Ok(None),
    };
    let report = read_report(&rd);
    if let Ok(None) = report {
        started(Started {
            pid: pid.as_raw(),
            cgroup: cgroup.0.as_ref().map(Cgroup::paths).unwrap_or_default(),
            pty: kept_pty.take(),
        });
    }
    let relayed = relay_if_started(
        matches!(report, Ok(None)),
        &session,
        spec.tty && !spec.keep_pty,
        "the container",
    );
    // Restores the host terminal, and hangs the pty up if the container
    // still runs after a failed relay.
    let session = session.map(drop);
    let status = sys
        .wait(pid)
        .map_err(|source| RuntimeError::Wait { source });
    drop(cgroup);
    if let Some((step, errno)) = report? {
        return Err(step_error(&steps, &exec_plan, step, errno));
    }
    session?;
    relayed?;
    let status = status?;
    debug!(?pid, ?status, "container exited");
    Ok(status)
}

/// Parent side, while the child waits: its id maps, its idmapped rootfs, its network.
fn prepare_child(
    sys: &dyn Sys,
    spec: &RunSpec,
    pid: Pid,
    tree_sock: Option<&OwnedFd>,
) -> Result<()> {
    if let Some(ns) = &spec.userns {
        let userns = |step| move |source| RuntimeError::UserNs { step, source };
        sys.write_id_maps(
            pid,
            &UserNs::map_text(&ns.uid_map),
            &UserNs::map_text(&ns.gid_map),
        )
        .map_err(userns("write the uid and gid maps"))?;
        if let Some(sock) = tree_sock {
            let tree = sys.idmapped_tree(&spec.rootfs, pid).map_err(userns(
                "idmap the rootfs (the filesystem may not support idmapped mounts)",
            ))?;
            sys.send_fd(sock.as_fd(), tree.as_fd())
                .map_err(userns("send the idmapped rootfs"))?;
        }
    }
    if let NetMode::Bridge(link) = &spec.net {
        sys.attach_bridge(pid, link)
            .map_err(|source| RuntimeError::Bridge {
                bridge: link.bridge.clone(),
                veth: link.host_veth.clone(),
                source,
            })?;
    }
    Ok(())
}

/// Deletes the container's host veth.
struct NetGuard<'a> {
    sys: &'a dyn Sys,
    host_veth: Option<&'a str>,
}

impl Drop for NetGuard<'_> {
    fn drop(&mut self) {
        if let Some(veth) = self.host_veth {
            if let Err(e) = self.sys.detach_bridge(veth) {
                warn!(veth, error = %e, "could not remove the container's veth");
            }
        }
    }
}

/// Kills what is left in the container's cgroup and removes it.
struct CgroupGuard(Option<Cgroup>);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(cg) = self.0.take() {
            if let Err(e) = cg.kill_and_remove() {
                // The next berth command's cleanup removes it.
                warn!(error = %e, "could not remove the container's cgroup");
            }
        }
    }
}

fn clone_flags(spec: &RunSpec) -> CloneFlags {
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if spec.net.private() {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if spec.userns.is_some() {
        // The other new namespaces are then owned by the container's root.
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    flags
}

/// The container process, from clone to exec. Only syscalls through `sys`
/// and one pipe write: this runs in a copy of a possibly threaded process.
fn child_main(
    steps: &[Step<'_>],
    exec_plan: &ExecPlan,
    sys: &dyn Sys,
    wr: &OwnedFd,
    born_in_cgroup: bool,
) -> i32 {
    for (i, step) in steps.iter().enumerate() {
        if step.done_by_clone(born_in_cgroup) {
            continue;
        }
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
    write_message(wr, step, errno.raw_os_error());
}

/// `None` if the child exec'd; `Some((step, errno))` if it reported a failure.
fn read_report(rd: &OwnedFd) -> Result<Option<(u32, Errno)>> {
    Ok(read_message(rd)?.map(|(step, errno)| (step, Errno::from_raw_os_error(errno))))
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
mod tests;
