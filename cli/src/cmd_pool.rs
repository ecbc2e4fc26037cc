//! `berth pool add|ls|rm`.

use std::path::PathBuf;
use std::process::ExitCode;

use berth_bdev::{FsType, PoolConfig};
use berth_core::ops::PoolEntry;
use berth_core::Berth;
use clap::{Args, Subcommand};

use crate::backend_args::{BackendParser, PoolOptionArgs};
use crate::output::{parse_size, print_list, say};
use crate::Cli;

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// Add a pool (checked with the backend's probe first).
    Add(PoolAddArgs),
    /// List pools.
    #[command(visible_alias = "list")]
    Ls,
    /// Remove a pool that holds no containers (its data is left in place).
    Rm { name: String },
}

#[derive(Args, Debug)]
pub struct PoolAddArgs {
    pub name: String,
    /// The storage backend.
    #[arg(long, short = 'B', value_parser = BackendParser)]
    pub backend: String,
    /// Directory holding the volumes (or their mount points).
    #[arg(long)]
    pub path: Option<PathBuf>,
    #[command(flatten)]
    pub settings: PoolOptionArgs,
    /// Default size of new volumes (block-backed backends), e.g. 2G.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Default filesystem of new volumes (block-backed backends).
    #[arg(long)]
    pub fstype: Option<FsType>,
}

pub fn run(cli: &Cli, cmd: &PoolCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PoolCmd::Add(a) => {
            let b = Berth::open(&cli.root, true)?;
            let mut pool = PoolConfig::new(&a.name, &a.backend);
            pool.path = a.path.clone();
            pool.options = a.settings.options.clone();
            pool.size = a.size;
            pool.fstype = a.fstype;
            b.pool_add(&pool)?;
            say(format!("pool {} added ({})", a.name, a.backend))?;
        }
        PoolCmd::Ls => {
            let b = Berth::open(&cli.root, false)?;
            let pools = b.pool_entries()?;
            let rows = pools
                .iter()
                .map(|e| match e {
                    PoolEntry::Ok(p) => {
                        let place = p
                            .path
                            .as_ref()
                            .map(|x| x.display().to_string())
                            .or_else(|| p.options.values().next().cloned())
                            .unwrap_or_default();
                        vec![
                            p.name.clone(),
                            "ok".to_owned(),
                            p.backend.to_string(),
                            place,
                        ]
                    }
                    PoolEntry::Broken { name, .. } => {
                        vec![
                            name.clone(),
                            "broken".to_owned(),
                            "?".to_owned(),
                            "?".to_owned(),
                        ]
                    }
                })
                .collect();
            print_list(
                cli.format,
                &["NAME", "STATE", "BACKEND", "LOCATION"],
                rows,
                &pools,
            )?;
            if cli.format == crate::Format::Text {
                for e in &pools {
                    if let PoolEntry::Broken { name, broken, .. } = e {
                        say(format!(
                            "{name}: broken: {broken}; repair the file, or `berth pool rm {name}` once no container uses it"
                        ))?;
                    }
                }
            }
        }
        PoolCmd::Rm { name } => {
            Berth::open(&cli.root, true)?.pool_rm(name)?;
            say(format!("pool {name} removed"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
