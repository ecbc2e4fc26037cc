//! `berth bench copy|clone|lifecycle|run`: single measurements on the user's
//! own containers (the whole benchmark is `berth bench` with no subcommand).
//! Figures go to the README, never into tests.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use berth_bdev::cmd::{self, HostRunner};
use berth_bdev::copy::{copy_tree, NoProgress};
use berth_bdev::delete::remove_tree;
use berth_bdev::plan::CloneMode;
use berth_core::ops::{CloneRequest, DestroyRequest};
use berth_core::Berth;
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::output::print_list;
use crate::Cli;

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// berth's tree copy against `cp -a` on the same tree.
    Copy(CopyArgs),
    /// Snapshot clone and full copy of a container into each pool.
    Clone(CloneArgs),
    /// start → exec /bin/true → stop of a detached container, with `--lxc` next
    /// to LXC's lxc-start -d → lxc-attach → lxc-stop on a copy of its rootfs.
    Lifecycle(LifecycleArgs),
    /// `berth run NAME -- /bin/true` next to its floor: the backend's own
    /// mount, `unshare … chroot ROOTFS /bin/true`, unmount, alternating.
    Run(RunBenchArgs),
}

#[derive(Args, Debug)]
pub struct RunBenchArgs {
    /// A stopped container.
    pub name: String,
    #[arg(long, default_value_t = 11, value_parser = runs)]
    pub runs: usize,
}

#[derive(Args, Debug)]
pub struct LifecycleArgs {
    /// A stopped container to start (its rootfs gets a small init script).
    pub name: String,
    #[arg(long, default_value_t = 5, value_parser = runs)]
    pub runs: usize,
    /// Measure LXC too (needs Debian's lxc package).
    #[arg(long)]
    pub lxc: bool,
}

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// The tree to copy, e.g. a Debian minbase rootfs (`berth mount` one).
    #[arg(long)]
    pub from: PathBuf,
    #[arg(long, default_value_t = 3, value_parser = runs)]
    pub runs: usize,
    /// Where to copy to (default: the state root's scratch directory); a tmpfs
    /// here measures CPU and syscall cost instead of the disk.
    #[arg(long)]
    pub to: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CloneArgs {
    /// The container to clone.
    pub name: String,
    /// Pools to clone into (default: every pool).
    #[arg(long, value_delimiter = ',')]
    pub pools: Vec<String>,
    #[arg(long, default_value_t = 3, value_parser = runs)]
    pub runs: usize,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

#[derive(Serialize)]
struct CopyResult {
    files: u64,
    bytes: u64,
    berth_ms: f64,
    cp_a_ms: f64,
    speedup: f64,
}

fn bench_copy(cli: &Cli, a: &CopyArgs) -> anyhow::Result<()> {
    let scratch = a.to.clone().unwrap_or_else(|| cli.root.join("tmp"));
    std::fs::create_dir_all(&scratch)?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut stats = None;
    for _ in 0..a.runs {
        let dst = tempfile::Builder::new()
            .prefix("bench-")
            .tempdir_in(&scratch)?;
        // Flush earlier runs' dirty pages so that writeback does not land in this one.
        rustix::fs::sync();
        let t = Instant::now();
        stats = Some(copy_tree(&a.from, dst.path(), &NoProgress)?);
        ours.push(t.elapsed());
        remove_tree(dst.path(), &scratch)?;

        let dst = tempfile::Builder::new()
            .prefix("bench-")
            .tempdir_in(&scratch)?;
        let target: &Path = dst.path();
        rustix::fs::sync();
        let t = Instant::now();
        cmd::run(
            &HostRunner,
            "cp",
            &[
                "-a",
                "--",
                &format!("{}/.", a.from.display()),
                &target.display().to_string(),
            ],
        )?;
        theirs.push(t.elapsed());
        remove_tree(dst.path(), &scratch)?;
    }
    let (o, t) = (median(ours), median(theirs));
    let s = stats.unwrap_or_default();
    let r = CopyResult {
        files: s.files,
        bytes: s.bytes,
        berth_ms: o.as_secs_f64() * 1000.0,
        cp_a_ms: t.as_secs_f64() * 1000.0,
        speedup: t.as_secs_f64() / o.as_secs_f64().max(1e-9),
    };
    print_list(
        cli.format,
        &["FILES", "BYTES", "BERTH_MS", "CP_A_MS", "CP_A/BERTH"],
        vec![vec![
            r.files.to_string(),
            r.bytes.to_string(),
            ms(o),
            ms(t),
            format!("{:.2}", r.speedup),
        ]],
        &r,
    )
}

#[derive(Serialize)]
struct CloneResult {
    pool: String,
    backend: String,
    mode: String,
    /// Whole `clone` calls through the library, each followed by a sync.
    ms: Option<berth_bench::stats::Summary>,
    error: Option<String>,
}

/// Snapshot clone and copy of `name` into each pool, `runs` times each; fails
/// when any row failed.
fn bench_clone(cli: &Cli, a: &CloneArgs) -> anyhow::Result<bool> {
    let pools: Vec<String> = if a.pools.is_empty() {
        Berth::open(&cli.root, false)?
            .pools()?
            .into_iter()
            .map(|p| p.name)
            .collect()
    } else {
        a.pools.clone()
    };
    // Checked once, up front: a missing container is one error, not a row per pool.
    Berth::open(&cli.root, false)?.store().container(&a.name)?;
    let mut results = Vec::new();
    for pool in &pools {
        for mode in [CloneMode::Snapshot, CloneMode::Copy] {
            let b = Berth::open(&cli.root, true)?;
            let backend = b.store().pool(pool)?.backend.to_string();
            let req = CloneRequest {
                mode,
                pool: Some(pool.clone()),
                backend: None,
                ephemeral: false,
                drop_xattrs: false,
                size: None,
                freeze: false,
            };
            let mut times = Vec::new();
            let mut error = None;
            for i in 0..a.runs {
                // Never one of the user's names.
                let dst = format!("bench-{}-{i}", std::process::id());
                rustix::fs::sync();
                let t = Instant::now();
                let made = b.clone_container(&a.name, &dst, &req, &NoProgress);
                // The clone's writeback counts, as it does for `berth clone`.
                rustix::fs::sync();
                match made {
                    Ok(_) => {
                        times.push(t.elapsed());
                        b.destroy(&dst, DestroyRequest::default())?;
                    }
                    Err(e) => {
                        error = Some(e.to_string());
                        break;
                    }
                }
            }
            results.push(CloneResult {
                pool: pool.clone(),
                backend,
                mode: format!("{mode:?}").to_lowercase(),
                ms: berth_bench::stats::Summary::of_durations(&times),
                error,
            });
        }
    }
    let rows = results
        .iter()
        .map(|r| {
            let cell = |f: fn(&berth_bench::stats::Summary) -> f64| {
                r.ms.map_or_else(|| "-".to_owned(), |s| format!("{:.1}", f(&s)))
            };
            vec![
                r.pool.clone(),
                r.backend.clone(),
                r.mode.clone(),
                cell(|s| s.median),
                cell(|s| s.min),
                cell(|s| s.max),
                r.ms.map_or(0, |s| s.runs).to_string(),
                r.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_list(
        cli.format,
        &[
            "POOL",
            "BACKEND",
            "MODE",
            "MEDIAN_MS",
            "MIN_MS",
            "MAX_MS",
            "RUNS",
            "ERROR",
        ],
        rows,
        &results,
    )?;
    Ok(results.iter().all(|r| r.error.is_none()))
}

/// `--runs`: at least one.
pub fn runs(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a count")),
    }
}

pub fn run(cli: &Cli, c: &BenchCmd) -> anyhow::Result<ExitCode> {
    match c {
        BenchCmd::Copy(a) => bench_copy(cli, a)?,
        BenchCmd::Clone(a) => {
            if !bench_clone(cli, a)? {
                return Ok(ExitCode::FAILURE);
            }
        }
        BenchCmd::Lifecycle(a) => bench_lifecycle(cli, a)?,
        BenchCmd::Run(a) => bench_run(cli, a)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_run(cli: &Cli, a: &RunBenchArgs) -> anyhow::Result<()> {
    use berth_core::ops::lifecycle::bench;
    let exe = std::env::current_exe()?;
    let steps = bench::bench_run(&cli.root, &a.name, a.runs, &exe)?;
    print_steps(cli, &steps, "floor", "BERTH/FLOOR")
}

fn bench_lifecycle(cli: &Cli, a: &LifecycleArgs) -> anyhow::Result<()> {
    use berth_core::ops::lifecycle::bench;
    if a.lxc && !bench::have_lxc() {
        anyhow::bail!("--lxc needs lxc-start, lxc-attach and lxc-stop (apt-get install lxc)");
    }
    let exe = std::env::current_exe()?;
    let steps = bench::bench_lifecycle(&cli.root, &a.name, a.runs, &exe, a.lxc)?;
    print_steps(cli, &steps, "lxc", "BERTH/LXC")
}

/// The steps as a table, each berth step with its ratio to the `reference`
/// tool's step of the same name, or to its only step.
fn print_steps(
    cli: &Cli,
    steps: &[berth_core::ops::lifecycle::bench::StepTimes],
    reference: &str,
    ratio_header: &str,
) -> anyhow::Result<()> {
    let theirs: Vec<_> = steps.iter().filter(|s| s.tool == reference).collect();
    let reference_median = |step: &str| {
        theirs
            .iter()
            .find(|s| s.step == step)
            .or(match theirs.as_slice() {
                [only] => Some(only),
                _ => None,
            })
            .map(|s| s.median_ms)
    };
    let rows = steps
        .iter()
        .map(|s| {
            let ratio = match (s.tool, reference_median(s.step)) {
                ("berth", Some(r)) if r > 0.0 => format!("{:.2}", s.median_ms / r),
                _ => "-".to_owned(),
            };
            vec![
                s.tool.to_owned(),
                s.step.to_owned(),
                format!("{:.1}", s.median_ms),
                format!("{:.1}", s.min_ms),
                format!("{:.1}", s.max_ms),
                s.runs.to_string(),
                ratio,
            ]
        })
        .collect();
    print_list(
        cli.format,
        &[
            "TOOL",
            "STEP",
            "MEDIAN_MS",
            "MIN_MS",
            "MAX_MS",
            "RUNS",
            ratio_header,
        ],
        rows,
        &steps,
    )
}
