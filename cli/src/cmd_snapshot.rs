//! `berth snapshot NAME [SNAP]`, `snapshot ls|restore|rm` (lxc-snapshot).

use std::process::ExitCode;

use crate::progress::CopyBar;
use berth_core::Berth;
use clap::{Args, Subcommand};

use crate::output::{print_list, say};
use crate::Cli;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub cmd: Option<SnapCmd>,
    /// Container to snapshot.
    #[arg(required = true)]
    pub name: Option<String>,
    /// Snapshot name (default snapN).
    pub snap: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum SnapCmd {
    /// List a container's snapshots.
    #[command(visible_alias = "list")]
    Ls { name: String },
    /// Restore a container to a snapshot (atomically).
    Restore { name: String, snap: String },
    /// Remove a snapshot.
    Rm { name: String, snap: String },
}

pub fn run(cli: &Cli, a: &SnapshotArgs) -> anyhow::Result<ExitCode> {
    match &a.cmd {
        Some(SnapCmd::Ls { name }) => {
            let b = Berth::open(&cli.root, false)?;
            let snaps = b.snapshots(name)?;
            let rows = snaps
                .iter()
                .map(|s| vec![s.name.clone(), s.created.to_string(), s.volume.to_string()])
                .collect();
            print_list(cli.format, &["NAME", "CREATED", "VOLUME"], rows, &snaps)?;
        }
        Some(SnapCmd::Restore { name, snap }) => {
            let bar = CopyBar::new(format!("restoring {name}"));
            Berth::open(&cli.root, true)?.restore(name, snap, &bar)?;
            bar.finish();
            say(format!("restored {name} to {snap}"))?;
        }
        Some(SnapCmd::Rm { name, snap }) => {
            Berth::open(&cli.root, true)?.snapshot_rm(name, snap)?;
            say(format!("removed snapshot {name}@{snap}"))?;
        }
        None => {
            let Some(name) = &a.name else {
                anyhow::bail!("which container? `berth snapshot NAME [SNAP]`");
            };
            let s = Berth::open(&cli.root, true)?.snapshot(name, a.snap.as_deref())?;
            say(format!("snapshot {name}@{} taken", s.name))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
