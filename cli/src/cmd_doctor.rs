//! `berth doctor [--fix]`: what does not add up in the store, and its repair.

use std::process::ExitCode;

use berth_core::Berth;
use clap::Args;

use crate::output::say;
use crate::Cli;

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Repair what was found (destroy orphan volumes, finish or undo
    /// interrupted operations, unmount strays) and say what was done.
    #[arg(long)]
    pub fix: bool,
}

pub fn run(cli: &Cli, a: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let findings = Berth::open(&cli.root, true)?.doctor(a.fix)?;
    if cli.format == crate::Format::Json {
        say(serde_json::to_string_pretty(&findings)?)?;
    } else if findings.is_empty() {
        say("nothing to repair")?;
    } else {
        for f in &findings {
            let state = match (a.fix, f.fixed) {
                (_, true) => "fixed",
                (true, false) => "not fixed",
                (false, false) => "found",
            };
            say(format!("{state}: {} ({})", f.what, f.fix))?;
        }
    }
    // Something left to repair is worth a non-zero status for scripts.
    let left = findings.iter().any(|f| !f.fixed);
    Ok(if left && !a.fix {
        ExitCode::from(1)
    } else if left {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
