//! `berth completions SHELL` and `berth man [DIR]`: shell completions and man
//! pages, both generated from the clap definitions so they never drift from them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::output::say;
use crate::Cli;

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Directory to write berth.1 and one page per subcommand into.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

pub fn completions(a: &CompletionsArgs) -> anyhow::Result<ExitCode> {
    // Rendered first: clap_complete panics on a write error, and a closed stdout
    // (`berth completions bash | head`) must end quietly instead.
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut Cli::command(), "berth", &mut script);
    std::io::stdout().lock().write_all(&script)?;
    Ok(ExitCode::SUCCESS)
}

pub fn man(a: &ManArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("create {:?}", a.dir))?;
    // `help` documents nothing the pages don't; building names the subcommands
    // after their parents (berth-pool-create), which names their pages too.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_pages(&cmd, &a.dir, &mut written)?;
    for p in written {
        say(p.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the page of `cmd`, then those of its subcommands, nested ones included.
fn write_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let path = clap_mangen::Man::new(cmd.clone())
        .generate_to(dir)
        .with_context(|| format!("write the man page of {} into {dir:?}", cmd.get_name()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}
