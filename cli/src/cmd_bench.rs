//! `berth bench`: the storage benchmark (no subcommand), and the single
//! measurements on a user's own containers (`copy`, `clone`, `lifecycle`, `run`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use berth_bench::model::{Measurement, Report, Suite, Unit};
use berth_bench::{Plan, RootfsChoice};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use crate::cmd_bench_tools::BenchCmd;
use crate::output::{print_list, say, warning};
use crate::Cli;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub cmd: Option<BenchCmd>,
    #[command(flatten)]
    pub suite: SuiteArgs,
}

/// `berth bench` with no subcommand. Backends get throw-away pools on
/// loop-mounted images (a zfs-fuse zpool for zfs), removed afterwards.
#[derive(Args, Debug)]
pub struct SuiteArgs {
    /// Backends to measure on throw-away pools: a list, or `all` (the default
    /// when no --pool is given). Those the host cannot run are listed with why.
    #[arg(long, value_delimiter = ',')]
    pub backends: Vec<String>,
    /// The user's pools to measure too (containers named bench-PID-… are made
    /// and destroyed in them).
    #[arg(long = "pool", value_name = "POOL")]
    pub pools: Vec<String>,
    /// What containers are made from: minimal (built in, offline), debootstrap
    /// (Debian minbase, cached), or a directory.
    #[arg(long, default_value = "minimal")]
    pub rootfs: String,
    /// Suites: lifecycle, io, meta, scale, space, image, or all.
    #[arg(long, value_delimiter = ',', default_value = "lifecycle,space")]
    pub suite: Vec<String>,
    /// Runs of each measurement (after which median, min and max are shown).
    #[arg(long, default_value_t = 5, value_parser = crate::cmd_bench_tools::runs)]
    pub runs: usize,
    /// N for the scale, space and image suites: snapshot clones (or containers
    /// from one image) made one after another.
    #[arg(long, default_value_t = 100, value_parser = crate::cmd_bench_tools::runs)]
    pub clones: usize,
    /// Drop the page cache before every measured step (root).
    #[arg(long)]
    pub cold: bool,
    /// Also write report.json, a CSV per suite, SVG charts and index.html here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl SuiteArgs {
    fn plan(&self) -> anyhow::Result<Plan> {
        let mut suites = Vec::new();
        for s in &self.suite {
            if s == "all" {
                suites = Suite::ALL.to_vec();
                break;
            }
            let Some(x) = Suite::parse(s) else {
                anyhow::bail!(
                    "unknown suite {s:?}; choose from lifecycle, io, meta, scale, space, image or all"
                );
            };
            if !suites.contains(&x) {
                suites.push(x);
            }
        }
        let backends = if self.backends.iter().any(|b| b == "all") {
            Vec::new()
        } else {
            self.backends.clone()
        };
        let rootfs = match self.rootfs.as_str() {
            "minimal" => RootfsChoice::Minimal,
            "debootstrap" => RootfsChoice::Debootstrap,
            dir => RootfsChoice::Dir(PathBuf::from(dir)),
        };
        Ok(Plan {
            backends,
            pools: self.pools.clone(),
            rootfs,
            suites,
            runs: self.runs,
            cold: self.cold,
            clones: self.clones,
        })
    }
}

pub fn run(cli: &Cli, a: &BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(c) = &a.cmd {
        return crate::cmd_bench_tools::run(cli, c);
    }
    let plan = a.suite.plan()?;
    let berth = std::env::current_exe()?;
    let bar = Bar::new();
    let report = berth_bench::run(&cli.root, &berth, &plan, &bar);
    bar.finish();
    let report = report?;
    print_report(cli, &report)?;
    if let Some(dir) = &a.suite.out {
        let written = berth_bench::output::write_dir(&report, dir)?;
        warning(format!(
            "wrote {} files to {}",
            written.len(),
            dir.display()
        ));
    }
    let failed: Vec<&Measurement> = report.failures().collect();
    for m in &failed {
        warning(format!(
            "{} {} on {}: {}",
            m.suite.name(),
            m.operation,
            m.pool,
            m.error.as_deref().unwrap_or_default()
        ));
    }
    Ok(if failed.is_empty() && !report.results.is_empty() {
        ExitCode::SUCCESS
    } else {
        if report.results.is_empty() {
            warning("nothing was measured");
        }
        ExitCode::FAILURE
    })
}

fn figure(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Bytes => crate::output::human(v as u64),
        _ => format!("{v:.1}"),
    }
}

fn print_report(cli: &Cli, r: &Report) -> anyhow::Result<()> {
    let rows = r
        .results
        .iter()
        .map(|m| {
            let berth = m.berth.map_or_else(
                || "-".to_owned(),
                |s| {
                    format!(
                        "{} [{}–{}]",
                        figure(s.median, m.unit),
                        figure(s.min, m.unit),
                        figure(s.max, m.unit)
                    )
                },
            );
            let (prim, prim_cmd) = m.primitive.as_ref().map_or_else(
                || ("-".to_owned(), String::new()),
                |p| (figure(p.value.median, m.unit), p.command.clone()),
            );
            let reported = m.reported.map_or(String::new(), crate::output::human);
            let note = [
                m.error.as_deref(),
                m.note.as_deref(),
                (!reported.is_empty()).then_some(""),
            ]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
            vec![
                m.suite.name().to_owned(),
                m.backend.clone(),
                m.operation.clone(),
                m.unit.label().to_owned(),
                berth,
                m.berth.map_or(0, |s| s.runs).to_string(),
                prim,
                m.ratio
                    .map_or_else(|| "-".to_owned(), |x| format!("{x:.2}")),
                reported,
                if m.error.is_some() {
                    format!("FAILED: {note}")
                } else {
                    note
                },
                prim_cmd,
            ]
        })
        .collect();
    print_list(
        cli.format,
        &[
            "SUITE",
            "BACKEND",
            "OPERATION",
            "UNIT",
            "BERTH [MIN–MAX]",
            "RUNS",
            "PRIMITIVE",
            "RATIO",
            "INFO_SAYS",
            "NOTE",
            "PRIMITIVE_COMMAND",
        ],
        rows,
        r,
    )?;
    if cli.format == crate::Format::Text {
        for s in &r.skipped {
            say(format!("skipped {}: {}", s.backend, s.reason))?;
        }
        say(format!(
            "{}; {} CPUs; rootfs {} ({} files, {}); {} runs{}; {:.0} s",
            r.host.kernel,
            r.host.cpus,
            r.rootfs.source,
            r.rootfs.files,
            crate::output::human(r.rootfs.bytes),
            r.settings.runs,
            if r.settings.cold { ", cold cache" } else { "" },
            r.seconds
        ))?;
    }
    Ok(())
}

/// A progress bar on stderr when it is a terminal; Ctrl-C stops the run at
/// the next step, after which everything made is removed.
struct Bar {
    bar: Mutex<Option<ProgressBar>>,
}

impl Bar {
    fn new() -> Self {
        Bar {
            bar: Mutex::new(None),
        }
    }

    fn finish(&self) {
        if let Ok(mut b) = self.bar.lock() {
            if let Some(b) = b.take() {
                b.finish_and_clear();
            }
        }
    }
}

impl berth_bench::Events for Bar {
    fn begin(&self, total: u64) {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("[{bar:30}] {pos}/{len} {elapsed} {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        if let Ok(mut b) = self.bar.lock() {
            *b = Some(bar);
        }
    }

    fn step(&self, what: &str) {
        if let Ok(b) = self.bar.lock() {
            if let Some(b) = b.as_ref() {
                b.inc(1);
                b.set_message(what.to_owned());
            }
        }
    }

    fn cancelled(&self) -> bool {
        berth_core::interrupt::requested()
    }
}
