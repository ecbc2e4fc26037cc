//! `berth run`: mount the rootfs, confine the container as its config (and
//! this run's overrides) say, run the command, unmount. The store lock is held
//! while mounting and unmounting, not while the command runs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use std::net::Ipv4Addr;

use berth_runtime::{ExitStatus, LinuxSys, NetMode, RunSpec, RuntimeError, Started, Stdio, UserNs};
use tracing::{info, warn};

use super::{Berth, Mounted};
use crate::confine::{IdShift, RunConfig};
use crate::error::{BerthError, Result};
use crate::net::{self, BridgeHold, NetChoice};
use crate::userns::{shift_owners, subordinate_ids, unshifted};

/// What one `berth run` asks for.
#[derive(Debug, Default)]
pub struct RunRequest {
    pub argv: Vec<OsString>,
    /// Added to the default environment.
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    pub tty: bool,
    /// With `tty`: the pty master goes to the `started` callback (a detached
    /// container's console) instead of being relayed to stdio.
    pub keep_pty: bool,
    /// `berth config` keys set for this run only (from flags), applied in order.
    pub overrides: Vec<(String, String)>,
}

/// Runs `req` in container `name` of the store at `root`; returns the
/// command's exit status.
pub fn run(root: &Path, name: &str, req: RunRequest) -> Result<ExitStatus> {
    let mounted = Berth::open(root, true)?.start_run(name)?;
    let result = confined_run(root, &mounted, &req, Stdio::default(), &mut drop);
    let finished = Berth::open(root, true).and_then(|b| b.finish_run(mounted));
    let status = result?;
    finished?;
    Ok(status)
}

/// Runs `req` in the mounted container `m` with `stdio`, calling `started` once
/// its command runs.
pub(super) fn confined_run(
    root: &Path,
    m: &Mounted,
    req: &RunRequest,
    stdio: Stdio,
    started: &mut dyn FnMut(Started),
) -> Result<ExitStatus> {
    if m.read_only {
        warn!(name = %m.container.name, "clones depend on this container: its rootfs is mounted read-only");
    }
    let mut cfg = m.container.run.clone();
    for (k, v) in &req.overrides {
        cfg.set(k, v)?;
    }
    let mut spec = RunSpec::new(&m.rootfs, m.container.name.clone(), req.argv.clone());
    let choice = cfg.net.clone().unwrap_or_default();
    // Held while the container runs: the last one out removes the bridge.
    let (net_mode, _bridge) = network(root, m, &choice)?;
    spec.net = net_mode;
    if let Some(cwd) = req
        .cwd
        .clone()
        .or_else(|| cfg.workdir.as_ref().map(PathBuf::from))
    {
        spec.cwd = cwd;
    }
    // The image's environment first: a later entry wins.
    spec.env.extend(cfg.env.iter().filter_map(|e| {
        e.split_once('=')
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
    }));
    spec.env.extend(req.env.iter().cloned());
    spec.tty = req.tty;
    spec.keep_pty = req.keep_pty;
    spec.stdio = stdio;
    spec.security = cfg.security()?;
    spec.security.seccomp_cache = Some(crate::confine::seccomp_cache(root));
    spec = spec.with_cgroup(cfg.cgroup_parent.clone(), cfg.limits()?);
    let on_disk = m.container.run.shifted;
    if !cfg.userns {
        if let Some(shift) = on_disk {
            // Owners were shifted for a user namespace: put them back first.
            unshift(root, m, shift)?;
        }
        return Ok(berth_runtime::run_observed(&spec, &LinuxSys, started)?);
    }
    let ids = match on_disk {
        Some(shift) => shift,
        None => subordinate_ids()?,
    };
    spec.userns = Some(UserNs::root_at(ids.uid, ids.gid, ids.count));
    if on_disk.is_some() {
        set_idmapped(&mut spec, false);
        return Ok(berth_runtime::run_observed(&spec, &LinuxSys, started)?);
    }
    match berth_runtime::run_observed(&spec, &LinuxSys, started) {
        Err(RuntimeError::UserNs { step, source }) if step.starts_with("idmap the rootfs") => {
            // This filesystem cannot be idmapped (FUSE, overlay): shift the
            // owners on disk once, and remember it.
            info!(name = %m.container.name, error = %source, "no idmapped mount here: shifting owners on disk");
            let n = shift_owners(&m.rootfs, unshifted(ids.count), ids)?;
            info!(name = %m.container.name, entries = n, "owners shifted");
            record_shift(root, &m.container.name, Some(ids))?;
            set_idmapped(&mut spec, false);
            Ok(berth_runtime::run_observed(&spec, &LinuxSys, started)?)
        }
        other => Ok(other?),
    }
}

/// What the runtime needs for network `choice`; on a bridge, the container's
/// address (kept in its config), the bridge itself and its /etc files.
fn network(root: &Path, m: &Mounted, choice: &NetChoice) -> Result<(NetMode, Option<BridgeHold>)> {
    let bridge = match choice {
        NetChoice::None => return Ok((NetMode::None, None)),
        NetChoice::Host => return Ok((NetMode::Host, None)),
        NetChoice::Bridge(b) => b,
    };
    let name = &m.container.name;
    let subnet = net::subnet_of(root, bridge)?;
    // The store's cleanup ran as the rootfs was mounted: only the lock now.
    let address = Berth::open_locked(root)?.assign_address(name, bridge, subnet)?;
    let hold = net::hold_bridge(root, bridge, subnet)?;
    net::write_etc(&m.rootfs, name, address)?;
    Ok((net::bridge_mode(name, bridge, subnet, address), Some(hold)))
}

fn set_idmapped(spec: &mut RunSpec, on: bool) {
    if let Some(ns) = &mut spec.userns {
        ns.idmap_rootfs = on;
    }
}

fn unshift(root: &Path, m: &Mounted, shift: IdShift) -> Result<()> {
    let n = shift_owners(&m.rootfs, shift, unshifted(shift.count))?;
    info!(name = %m.container.name, entries = n, "owners shifted back");
    record_shift(root, &m.container.name, None)
}

/// Records (or clears) the on-disk shift in the container's config.
fn record_shift(root: &Path, name: &str, shift: Option<IdShift>) -> Result<()> {
    let b = Berth::open(root, true)?;
    let mut c = b.store().container(name)?;
    c.run.shifted = shift;
    b.store().save(&c)
}

impl Berth {
    /// The address of `name` on `bridge`: the one in its config if it is in
    /// `subnet` (refused if another container has it), else the lowest free
    /// one, recorded there.
    fn assign_address(&self, name: &str, bridge: &str, subnet: net::Subnet) -> Result<Ipv4Addr> {
        let mut c = self.store().container(name)?;
        let others = self.store().containers()?;
        let holder = |ip: Ipv4Addr| {
            others
                .iter()
                .find(|o| o.name != name && o.run.ipv4 == Some(ip))
                .map(|o| o.name.clone())
        };
        let address = match c.run.ipv4 {
            Some(ip) if subnet.contains(ip) => match holder(ip) {
                Some(other) => {
                    return Err(BerthError::Invalid(format!(
                        "{name}: net.ipv4 {ip} is {other}'s; unset it \
                         (`berth config set {name} net.ipv4=`) for a free one"
                    )))
                }
                None => ip,
            },
            kept => {
                if let Some(old) = kept {
                    info!(name, %old, bridge, "its address is not in this bridge's subnet: choosing another");
                }
                let taken: Vec<Ipv4Addr> = others
                    .iter()
                    .filter(|o| o.name != name)
                    .filter_map(|o| o.run.ipv4)
                    .collect();
                let ip = net::allocate(subnet, &taken)?;
                c.run.ipv4 = Some(ip);
                self.store().save(&c)?;
                ip
            }
        };
        if let Some(mut s) = self.store().run_state(name)? {
            s.ipv4 = Some(address);
            self.store().save_run_state(name, &s)?;
        }
        Ok(address)
    }

    /// `berth config set`: validates and stores run settings.
    pub fn set_config(&self, name: &str, settings: &[(String, String)]) -> Result<RunConfig> {
        let mut c = self.store().container(name)?;
        for (k, v) in settings {
            c.run.set(k, v)?;
        }
        self.store().save(&c)?;
        Ok(c.run)
    }
}

/// One line of `berth network ls`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NetworkEntry {
    pub bridge: String,
    pub subnet: String,
    /// Containers whose config puts them on it.
    pub containers: Vec<String>,
}

impl Berth {
    fn network_users(&self, bridge: &str) -> Result<Vec<String>> {
        Ok(self
            .store()
            .containers()?
            .into_iter()
            .filter(|c| matches!(&c.run.net, Some(NetChoice::Bridge(b)) if b == bridge))
            .map(|c| c.name)
            .collect())
    }

    /// `berth network ls`.
    pub fn networks(&self) -> Result<Vec<NetworkEntry>> {
        net::networks(self.store().root())?
            .into_iter()
            .map(|(bridge, subnet)| {
                Ok(NetworkEntry {
                    containers: self.network_users(&bridge)?,
                    subnet: subnet.to_string(),
                    bridge,
                })
            })
            .collect()
    }

    /// `berth network create`.
    pub fn network_create(&self, bridge: &str, subnet: net::Subnet) -> Result<()> {
        net::define(self.store().root(), bridge, subnet)
    }

    /// `berth network rm`: refused while a container's config names it.
    pub fn network_remove(&self, bridge: &str) -> Result<()> {
        let users = self.network_users(bridge)?;
        net::undefine(self.store().root(), bridge, &users)
    }
}
