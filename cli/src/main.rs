//! The `berth` command: argument parsing and output. The work is in `berth_core::ops`.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod backend_args;
mod cmd_adopt;
mod cmd_bench;
mod cmd_bench_tools;
mod cmd_config;
mod cmd_container;
mod cmd_docs;
mod cmd_doctor;
mod cmd_export;
mod cmd_image;
mod cmd_life;
mod cmd_network;
mod cmd_pool;
mod cmd_run;
mod cmd_snapshot;
mod output;
mod progress;

#[derive(Parser, Debug)]
#[command(
    name = "berth",
    version,
    about = "Container root filesystems on pluggable storage backends"
)]
pub struct Cli {
    /// State directory.
    #[arg(long, global = true, env = "BERTH_ROOT", default_value = berth_core::store::DEFAULT_ROOT)]
    pub root: PathBuf,

    /// Output format of listings.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Fail at once, with a busy error, instead of waiting for another berth
    /// command that holds a container or the store.
    #[arg(long, global = true)]
    pub no_wait: bool,

    /// More log output (-v info, -vv debug); BERTH_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    #[value(alias = "table")]
    Text,
    Json,
    /// Comma-separated values with a header row (listings only).
    Csv,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Manage storage pools.
    #[command(subcommand)]
    Pool(cmd_pool::PoolCmd),
    /// Manage bridge networks (`--net bridge[=NAME]`).
    #[command(subcommand)]
    Network(cmd_network::NetworkCmd),
    /// Create a container from a template.
    Create(cmd_container::CreateArgs),
    /// Clone a container (snapshot clone or full copy, any backend to any other).
    Clone(cmd_container::CloneArgs),
    /// Take over a stopped LXC container (LXCPATH/NAME): its rootfs without
    /// copying where the backend allows, or a copy with --copy.
    Adopt(cmd_adopt::AdoptArgs),
    /// Destroy a container.
    Destroy(cmd_container::DestroyArgs),
    /// List containers.
    #[command(visible_alias = "list")]
    Ls,
    /// Show a container's configuration, storage and capabilities.
    Info(NameArg),
    /// Mount a container's rootfs; prints the path on its last line.
    Mount(NameArg),
    /// Unmount what `berth mount` mounted.
    #[command(visible_alias = "unmount")]
    Umount(NameArg),
    /// Make a snapshot clone independent of its origin (a full copy in its pool).
    Flatten(NameArg),
    /// Grow a container's volume and its filesystem.
    Resize(cmd_container::ResizeArgs),
    /// Run a command in a container.
    Run(cmd_run::RunArgs),
    /// Start a container detached, its output kept as a log (`berth logs`).
    Start(cmd_life::StartArgs),
    /// Stop a detached container: SIGTERM (SIGPWR for systemd/sysvinit) to its
    /// init, SIGKILL after the timeout.
    Stop(cmd_life::StopArgs),
    /// Stop a detached container and start it again as it was last started.
    Restart(cmd_life::StopArgs),
    /// Run a command inside a running detached container (its namespaces,
    /// cgroup and confinement); its exit status is berth's.
    Exec(cmd_life::ExecArgs),
    /// Connect to the console of a container started with `start -t`;
    /// Ctrl-P Ctrl-Q detaches and leaves it running.
    Attach(cmd_life::AttachArgs),
    /// Send a signal to a detached container's init.
    Kill(cmd_life::KillArgs),
    /// Wait until a detached container stops; its exit status is berth's.
    Wait(NameArg),
    /// Print a detached container's output.
    Logs(cmd_life::LogsArgs),
    /// Freeze every process of a detached container (cgroup freezer).
    Freeze(NameArg),
    /// Thaw a frozen container.
    Unfreeze(NameArg),
    #[command(name = "__monitor", hide = true)]
    Monitor(cmd_life::MonitorArgs),
    /// Find, and with --fix repair, what does not add up: volumes without a
    /// record, records without a volume, interrupted operations, stray mounts.
    Doctor(cmd_doctor::DoctorArgs),
    /// Show or change a container's limits and security settings.
    #[command(subcommand)]
    Config(cmd_config::ConfigCmd),
    /// Take, list, restore and remove snapshots.
    Snapshot(cmd_snapshot::SnapshotArgs),
    /// Write a container (rootfs, snapshots, config) to a file or stdout:
    /// portable layer tars, or the backend's own send streams.
    Export(cmd_export::ExportArgs),
    /// Make a container from an export (a file or stdin), or apply an
    /// incremental export to the container it was made for.
    Import(cmd_export::ImportArgs),
    /// The storage benchmark: every backend's lifecycle, I/O, metadata,
    /// scaling and space figures next to its raw primitive.
    Bench(cmd_bench::BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, …) to stdout.
    Completions(cmd_docs::CompletionsArgs),
    /// Write man pages: berth.1 and one per subcommand (berth-create.1, …).
    Man(cmd_docs::ManArgs),
    /// Manage images: build once, create many containers from each.
    #[command(subcommand)]
    Image(cmd_image::ImageCmd),
    /// Turn a container's rootfs into a new image.
    Commit(cmd_image::CommitArgs),
}

#[derive(Args, Debug)]
pub struct NameArg {
    pub name: String,
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // No colour codes in logs that go to a file or a pipe.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    berth_core::locks::set_no_wait(cli.no_wait);
    if let Err(e) = berth_core::interrupt::install() {
        eprintln!("berth: warning: cannot handle Ctrl-C gracefully: {e}");
    }
    let result = match &cli.command {
        Command::Pool(c) => cmd_pool::run(&cli, c),
        Command::Network(c) => cmd_network::run(&cli, c),
        Command::Create(a) => cmd_container::create(&cli, a),
        Command::Clone(a) => cmd_container::clone(&cli, a),
        Command::Adopt(a) => cmd_adopt::run(&cli, a),
        Command::Destroy(a) => cmd_container::destroy(&cli, a),
        Command::Ls => cmd_container::ls(&cli),
        Command::Info(a) => cmd_container::info(&cli, &a.name),
        Command::Mount(a) => cmd_container::mount(&cli, &a.name),
        Command::Umount(a) => cmd_container::umount(&cli, &a.name),
        Command::Flatten(a) => cmd_container::flatten(&cli, &a.name),
        Command::Resize(a) => cmd_container::resize(&cli, a),
        Command::Run(a) => cmd_run::run(&cli, a),
        Command::Start(a) => cmd_life::start(&cli, a),
        Command::Stop(a) => cmd_life::stop(&cli, a),
        Command::Restart(a) => cmd_life::restart(&cli, a),
        Command::Kill(a) => cmd_life::kill(&cli, a),
        Command::Exec(a) => cmd_life::exec(&cli, a),
        Command::Attach(a) => cmd_life::attach(&cli, a),
        Command::Wait(a) => cmd_life::wait(&cli, &a.name),
        Command::Logs(a) => cmd_life::logs(&cli, a),
        Command::Freeze(a) => cmd_life::freeze(&cli, &a.name, true),
        Command::Unfreeze(a) => cmd_life::freeze(&cli, &a.name, false),
        Command::Monitor(a) => cmd_life::monitor(a),
        Command::Config(c) => cmd_config::run(&cli, c),
        Command::Doctor(a) => cmd_doctor::run(&cli, a),
        Command::Snapshot(a) => cmd_snapshot::run(&cli, a),
        Command::Export(a) => cmd_export::export(&cli, a),
        Command::Import(a) => cmd_export::import(&cli, a),
        Command::Bench(c) => cmd_bench::run(&cli, c),
        Command::Completions(a) => cmd_docs::completions(a),
        Command::Man(a) => cmd_docs::man(a),
        Command::Image(c) => cmd_image::run(&cli, c),
        Command::Commit(a) => cmd_image::commit(&cli, a),
    };
    match result {
        Ok(code) => code,
        // The reader has what it wanted (`berth info c | head -1`).
        Err(e) if output::is_closed_stdout(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
