//! `berth adopt LXCPATH/NAME [--as NAME] [--copy]`: take over an LXC container.

use std::path::PathBuf;
use std::process::ExitCode;

use berth_core::ops::{AdoptMode, AdoptRequest};
use berth_core::Berth;
use clap::Args;

use crate::backend_args::BackendParser;
use crate::output::{parse_size, say, warning};
use crate::{Cli, Format};

#[derive(Args, Debug)]
#[command(after_help = "\
Without --copy nothing is copied: a dir rootfs is renamed into a dir pool on its \
filesystem and the LXC container is disabled (its config renamed to \
config.adopted-by-berth; rename it back to use the container with LXC again, \
after moving the rootfs back); a btrfs rootfs becomes a writable subvolume \
snapshot in a btrfs pool on the same filesystem, and a zfs rootfs a clone in a \
zfs pool on the same zpool, both leaving the LXC container as it was. Where that \
cannot be done, adopt refuses and says so; --copy then copies it into any pool \
and leaves the LXC container alone.

Taken over: lxc.uts.name (into /etc/hostname; the running container's hostname \
is its berth name), lxc.init.cmd, memory, pids and cpuset limits, \
lxc.start.auto/order/delay, lxc.idmap (a user namespace), lxc.net.0.type none \
(host network). Every other setting is named in a warning.")]
pub struct AdoptArgs {
    /// The LXC container's directory, LXCPATH/NAME (e.g. /var/lib/lxc/web1).
    pub path: PathBuf,
    /// Its name in berth (default: the LXC name).
    #[arg(long = "as", value_name = "NAME")]
    pub name: Option<String>,
    /// Copy the rootfs (into --pool, -B's pool, else the default pool) and leave
    /// the LXC container untouched.
    #[arg(short, long)]
    pub copy: bool,
    /// Target pool.
    #[arg(long, conflicts_with = "backend")]
    pub pool: Option<String>,
    /// Target backend (with --copy, any; without, the rootfs' own).
    #[arg(short = 'B', long, value_parser = BackendParser)]
    pub backend: Option<String>,
    /// Size of a copy into a block-backed pool, e.g. 2G.
    #[arg(long, value_parser = parse_size, requires = "copy")]
    pub size: Option<u64>,
    /// With --copy into a pool whose backend cannot store extended attributes,
    /// copy without them instead of refusing (each one dropped is reported).
    #[arg(long, requires = "copy")]
    pub drop_xattrs: bool,
}

pub fn run(cli: &Cli, a: &AdoptArgs) -> anyhow::Result<ExitCode> {
    let req = AdoptRequest {
        name: a.name.clone(),
        copy: a.copy,
        pool: a.pool.clone(),
        backend: a.backend.clone(),
        drop_xattrs: a.drop_xattrs,
        size: a.size,
    };
    let b = Berth::open(&cli.root, true)?;
    let bar = crate::progress::CopyBar::new(format!("copying {}", a.path.display()));
    let done = b.adopt(&a.path, &req, &bar)?;
    bar.finish();
    for w in &done.warnings {
        warning(w);
    }
    if cli.format == Format::Json {
        say(serde_json::to_string_pretty(&done)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let c = &done.container;
    let how = match done.mode {
        AdoptMode::Moved => "moved, no copy",
        AdoptMode::Snapshot => "snapshot, no copy",
        AdoptMode::Copied => "copied",
    };
    say(format!(
        "adopted {} as {} on pool {} ({how}: {})",
        done.lxc_rootfs, c.name, c.pool, c.volume
    ))?;
    if let Some(cfg) = &done.disabled_config {
        say(format!(
            "the LXC container is disabled: its config is now {}",
            cfg.display()
        ))?;
    }
    if let Some(h) = &done.hostname_written {
        say(format!("/etc/hostname set to {h}"))?;
    }
    Ok(ExitCode::SUCCESS)
}
