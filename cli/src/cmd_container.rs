//! `berth create|clone|destroy|ls|info|mount|umount`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::progress::CopyBar;
use anyhow::Context;
use berth_bdev::plan::CloneMode;
use berth_bdev::{BdevError, FsType};
use berth_core::ops::{CloneRequest, CreateRequest, DestroyRequest, Listed, State};
use berth_core::templates::Template;
use berth_core::{Berth, BerthError};
use clap::Args;
use serde::Serialize;

use crate::backend_args::BackendParser;
use crate::output::{human, parse_size, print_list, say, warning};
use crate::Cli;

#[derive(Args, Debug)]
pub struct CreateArgs {
    pub name: String,
    /// Template: minimal (default, offline), debootstrap[:SUITE].
    #[arg(short = 't', long, conflicts_with_all = ["from_dir", "from_tar"])]
    pub template: Option<String>,
    /// Import the rootfs from a directory.
    #[arg(long, conflicts_with = "from_tar")]
    pub from_dir: Option<PathBuf>,
    /// Import the rootfs from a tarball (plain, gz, xz, zst, bz2).
    #[arg(long)]
    pub from_tar: Option<PathBuf>,
    /// Debian mirror for debootstrap (default: the host's apt sources).
    #[arg(long)]
    pub mirror: Option<String>,
    /// Pool to create the volume in.
    #[arg(long, conflicts_with = "backend")]
    pub pool: Option<String>,
    /// Backend to use (its pool is made under the state root when needed).
    #[arg(short = 'B', long, value_parser = BackendParser)]
    pub backend: Option<String>,
    /// Volume size for block-backed backends, e.g. 2G.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Filesystem for block-backed backends: ext4, xfs or btrfs.
    #[arg(long)]
    pub fstype: Option<FsType>,
    /// Where the target pool's backend cannot store extended attributes (aufs via
    /// unionfs-fuse), copy without them instead of refusing: file capabilities
    /// (security.capability, e.g. ping's cap_net_raw), POSIX ACLs
    /// (system.posix_acl_access/default), SELinux labels and user.*/trusted.*
    /// attributes are lost. Each dropped attribute is reported.
    #[arg(long)]
    pub drop_xattrs: bool,
    /// Make it from an image (`berth image ls`): a snapshot clone of the
    /// image's copy on the pool, which the first such container makes.
    #[arg(long, conflicts_with_all = ["template", "from_dir", "from_tar", "mirror"])]
    pub image: Option<String>,
}

#[derive(Args, Debug)]
pub struct CloneArgs {
    /// Source container, or NAME@SNAP to clone one of its snapshots.
    pub src: String,
    pub dst: String,
    /// Copy-on-write clone sharing data with the source (refused where impossible).
    #[arg(short, long, conflicts_with = "copy")]
    pub snapshot: bool,
    /// Independent full copy (the default).
    #[arg(short, long)]
    pub copy: bool,
    /// Target pool (default: the source's).
    #[arg(long, conflicts_with = "backend")]
    pub pool: Option<String>,
    /// Target backend.
    #[arg(short = 'B', long, value_parser = BackendParser)]
    pub backend: Option<String>,
    /// Destroy the clone when it stops (implies --snapshot unless --copy).
    #[arg(short, long)]
    pub ephemeral: bool,
    /// Copy a running container frozen for the whole copy (a snapshot clone of
    /// one freezes it only for the snapshot).
    #[arg(long)]
    pub freeze: bool,
    /// Where the target pool's backend cannot store extended attributes (aufs via
    /// unionfs-fuse), copy without them instead of refusing (with --copy;
    /// snapshot clones onto such a backend are refused when the source has any):
    /// file capabilities (security.capability, e.g. ping's cap_net_raw), POSIX ACLs
    /// (system.posix_acl_access/default), SELinux labels and user.*/trusted.*
    /// attributes are lost. Each dropped attribute is reported.
    #[arg(long)]
    pub drop_xattrs: bool,
    /// Size of a copy into a block-backed pool, e.g. 2G (default: the data the
    /// source holds, plus a quarter and 64 MiB).
    #[arg(long, value_parser = parse_size, conflicts_with = "snapshot")]
    pub size: Option<u64>,
}

#[derive(Args, Debug)]
pub struct DestroyArgs {
    pub name: String,
    /// Also destroy the clones that depend on it.
    #[arg(short, long)]
    pub force: bool,
    /// Also destroy its snapshots.
    #[arg(short = 's', long)]
    pub with_snapshots: bool,
    /// Keep the clones that depend on it: promote one where the backend can (zfs),
    /// turn the others into independent copies.
    #[arg(long, visible_alias = "promote", conflicts_with = "force")]
    pub keep_clones: bool,
}

#[derive(Args, Debug)]
pub struct ResizeArgs {
    pub name: String,
    /// New size, e.g. 4G (grow only).
    #[arg(value_parser = parse_size)]
    pub size: u64,
}

/// The template `-t`, `--from-dir`, `--from-tar` and `--mirror` name.
pub fn template_from(
    template: Option<&str>,
    from_dir: Option<&PathBuf>,
    from_tar: Option<&PathBuf>,
    mirror: Option<&String>,
) -> anyhow::Result<Template> {
    if let Some(d) = from_dir {
        return Ok(Template::FromDir(d.clone()));
    }
    if let Some(t) = from_tar {
        return Ok(Template::FromTar(t.clone()));
    }
    let mut t: Template = template.unwrap_or("minimal").parse()?;
    if let (Template::Debootstrap { mirror: m, .. }, Some(given)) = (&mut t, mirror) {
        *m = Some(given.clone());
    } else if mirror.is_some() {
        anyhow::bail!("--mirror only applies to -t debootstrap");
    }
    Ok(t)
}

pub fn create(cli: &Cli, a: &CreateArgs) -> anyhow::Result<ExitCode> {
    let req = CreateRequest {
        pool: a.pool.clone(),
        backend: a.backend.clone(),
        template: match &a.image {
            Some(_) => None,
            None => Some(template_from(
                a.template.as_deref(),
                a.from_dir.as_ref(),
                a.from_tar.as_ref(),
                a.mirror.as_ref(),
            )?),
        },
        image: a.image.clone(),
        size: a.size,
        fstype: a.fstype,
        drop_xattrs: a.drop_xattrs,
    };
    let b = Berth::open(&cli.root, true)?;
    let bar = CopyBar::new(format!("creating {}", a.name));
    let c = b
        .create(&a.name, &req, &bar)
        .map_err(|e| create_error(&a.name, e))?;
    bar.finish();
    say(format!(
        "created {} on pool {} ({})",
        c.name, c.pool, c.volume
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// A volume the backend refuses to make (too small for its filesystem) is no
/// "invalid volume spec" to someone who typed `--size`: name what was asked.
fn create_error(name: &str, e: BerthError) -> anyhow::Error {
    match e {
        BerthError::Bdev(BdevError::SizeRefused { volume, reason }) => {
            anyhow::anyhow!("cannot create {name} (volume {volume}): {reason}")
        }
        other => other.into(),
    }
}

pub fn clone(cli: &Cli, a: &CloneArgs) -> anyhow::Result<ExitCode> {
    let mode = if a.snapshot || (a.ephemeral && !a.copy) {
        CloneMode::Snapshot
    } else {
        CloneMode::Copy
    };
    let req = CloneRequest {
        mode,
        pool: a.pool.clone(),
        backend: a.backend.clone(),
        ephemeral: a.ephemeral,
        drop_xattrs: a.drop_xattrs,
        size: a.size,
        freeze: a.freeze,
    };
    let b = Berth::open(&cli.root, true)?;
    let bar = CopyBar::new(format!("copying {}", a.src));
    let c = b.clone_container(&a.src, &a.dst, &req, &bar)?;
    bar.finish();
    let how = match mode {
        CloneMode::Snapshot => "snapshot clone",
        CloneMode::Copy => "copy",
    };
    say(format!(
        "cloned {} to {} ({how}, pool {}, {})",
        a.src, c.name, c.pool, c.volume
    ))?;
    Ok(ExitCode::SUCCESS)
}

pub fn destroy(cli: &Cli, a: &DestroyArgs) -> anyhow::Result<ExitCode> {
    let b = Berth::open(&cli.root, true)?;
    let report = b.destroy_report(
        &a.name,
        DestroyRequest {
            force: a.force,
            with_snapshots: a.with_snapshots,
            keep_clones: a.keep_clones,
        },
    )?;
    for w in &report.warnings {
        warning(w);
    }
    for n in report.destroyed {
        say(format!("destroyed {n}"))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn ls(cli: &Cli) -> anyhow::Result<ExitCode> {
    let b = Berth::open(&cli.root, false)?;
    let entries = b.list()?;
    let unknown = || "?".to_owned();
    let rows = entries
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                e.state.as_str().to_owned(),
                e.backend.clone().unwrap_or_else(unknown),
                e.pool.clone().unwrap_or_else(unknown),
                e.origin.clone().unwrap_or_else(|| "-".to_owned()),
                e.snapshots.map_or_else(unknown, |n| n.to_string()),
                e.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                e.ipv4.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            ]
        })
        .collect();
    print_list(
        cli.format,
        &[
            "NAME",
            "STATE",
            "BACKEND",
            "POOL",
            "ORIGIN",
            "SNAPSHOTS",
            "PID",
            "IPV4",
        ],
        rows,
        &entries,
    )?;
    if cli.format == crate::Format::Text {
        for e in &entries {
            if let Some(note) = problem_note(e) {
                say(note)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The line under the table that says what is wrong with an entry and what to do.
fn problem_note(e: &Listed) -> Option<String> {
    let name = &e.name;
    match (e.state, &e.broken, &e.volume) {
        (State::Broken, Some(d), _) => Some(format!(
            "{name}: broken: {d}; repair the file, or drop the record with `berth destroy --force {name}`"
        )),
        (State::Missing, _, Some(v)) => Some(format!(
            "{name}: missing: its volume {v} is gone; `berth destroy {name}` removes the record"
        )),
        _ => None,
    }
}

#[derive(Serialize)]
struct Info {
    #[serde(flatten)]
    container: berth_core::store::Container,
    backend: String,
    caps: berth_bdev::Caps,
    mechanism: std::collections::BTreeMap<String, String>,
    usage: Option<berth_bdev::Usage>,
    dependents: Vec<String>,
    /// Broken records that may be clones of it: they keep it from being destroyed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    broken_dependents: Vec<String>,
    /// Whether it runs now: "status", since the container's own `run` holds
    /// its settings.
    #[serde(rename = "status")]
    run: berth_core::ops::lifecycle::RunInfo,
}

pub fn info(cli: &Cli, name: &str) -> anyhow::Result<ExitCode> {
    let b = Berth::open(&cli.root, false)?;
    let c = b.store().container(name)?;
    let backend = b.backend_of(&c)?;
    let usage = backend.usage(&c.volume).ok();
    let dependents = berth_core::store::dependents(&b.store().containers()?, name)
        .into_iter()
        .map(|(d, s)| match s {
            Some(s) => format!("{d} (from @{s})"),
            None => d,
        })
        .collect();
    let broken_dependents = b
        .broken_dependents(&c)?
        .into_iter()
        .map(|r| r.name)
        .collect();
    let info = Info {
        backend: backend.name().to_owned(),
        caps: backend.caps(),
        mechanism: backend
            .describe()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        usage,
        dependents,
        broken_dependents,
        run: b.run_info(name)?,
        container: c,
    };
    if cli.format == crate::Format::Json {
        print_list(cli.format, &[], Vec::new(), &info)?;
        return Ok(ExitCode::SUCCESS);
    }
    let c = &info.container;
    say(format!("name:       {}", c.name))?;
    say(format!("pool:       {} ({})", c.pool, info.backend))?;
    say(format!("volume:     {}", c.volume))?;
    if let Some(t) = &c.template {
        say(format!("template:   {t}"))?;
    }
    if let Some(o) = &c.origin {
        let from = match &o.snapshot {
            Some(s) => format!("{}@{s}", o.container),
            None => o.container.clone(),
        };
        let dep = if o.pinned {
            "depends on it"
        } else {
            "independent"
        };
        say(format!("origin:     {from} ({}, {dep})", o.mode))?;
    }
    if let Some(i) = &c.image {
        let how = match (i.mode.as_str(), i.pinned) {
            ("snapshot", true) => "snapshot clone of its copy on this pool, which it pins",
            ("snapshot", false) => "snapshot clone of its copy on this pool",
            ("flattened", _) => "flattened: independent of it",
            _ => "full copy: this pool's backend cannot clone it",
        };
        say(format!("image:      {} ({how})", i.name))?;
    }
    if c.ephemeral {
        say("ephemeral:  yes (destroyed when it stops)")?;
    }
    if let Some(u) = &info.usage {
        let limit = u
            .limit_bytes
            .map(|l| format!(" of {}", human(l)))
            .unwrap_or_default();
        let kind = format!("{:?}", u.kind).to_lowercase();
        say(format!(
            "usage:      {}{limit} ({kind})",
            human(u.used_bytes)
        ))?;
        if let Some(n) = &u.note {
            say(format!("            {n}"))?;
        }
    }
    for (k, v) in &info.mechanism {
        say(format!("{:<11} {v}", format!("{k}:")))?;
    }
    let caps = serde_json::to_value(info.caps)?;
    let on: Vec<String> = caps
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    say(format!("caps:       {}", on.join(", ")))?;
    if !c.snapshots.is_empty() {
        let names: Vec<&str> = c.snapshots.iter().map(|s| s.name.as_str()).collect();
        say(format!("snapshots:  {}", names.join(", ")))?;
    }
    if !info.dependents.is_empty() {
        say(format!("dependents: {}", info.dependents.join(", ")))?;
    }
    if !info.broken_dependents.is_empty() {
        say(format!(
            "maybe dependents (broken records): {}",
            info.broken_dependents.join(", ")
        ))?;
    }
    for line in crate::cmd_config::describe(&c.run) {
        say(line)?;
    }
    let r = &info.run;
    match (r.pid, r.uptime_secs) {
        (Some(pid), Some(up)) => say(format!(
            "state:      {} (init pid {pid}, up {up} s)",
            r.state
        ))?,
        _ => say(format!("state:      {}", r.state))?,
    }
    if let Some(e) = &r.last_exit {
        say(format!("last run:   {e}"))?;
    }
    for dir in &r.cgroup {
        say(format!("cgroup:     {}", dir.display()))?;
    }
    if let Some(log) = &r.log {
        say(format!("log:        {}", log.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn mount(cli: &Cli, name: &str) -> anyhow::Result<ExitCode> {
    let b = Berth::open(&cli.root, true)?;
    let at = b.mount(name).with_context(|| format!("mount {name}"))?;
    say(at.display())?;
    Ok(ExitCode::SUCCESS)
}

pub fn umount(cli: &Cli, name: &str) -> anyhow::Result<ExitCode> {
    let b = Berth::open(&cli.root, true)?;
    b.umount(name)?;
    say(format!("unmounted {name}"))?;
    Ok(ExitCode::SUCCESS)
}

pub fn flatten(cli: &Cli, name: &str) -> anyhow::Result<ExitCode> {
    let b = Berth::open(&cli.root, true)?;
    let bar = CopyBar::new(format!("flattening {name}"));
    if b.flatten(name, &bar)? {
        say(format!("{name} no longer depends on its origin"))?;
    } else {
        say(format!(
            "{name} does not depend on another container; nothing to do"
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn resize(cli: &Cli, a: &ResizeArgs) -> anyhow::Result<ExitCode> {
    Berth::open(&cli.root, true)?.resize(&a.name, a.size)?;
    say(format!("resized {} to {}", a.name, human(a.size)))?;
    Ok(ExitCode::SUCCESS)
}
