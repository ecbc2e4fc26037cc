//! `berth network create|ls|rm`: the bridges containers started with
//! `--net bridge[=NAME]` join, and their subnets.

use std::process::ExitCode;

use berth_core::net::Subnet;
use berth_core::Berth;
use clap::Subcommand;

use crate::output::{print_list, say};
use crate::Cli;

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// Define a bridge network; berth makes the bridge when a container first
    /// joins it and removes it when the last one stops.
    Create {
        /// The bridge's name (an interface name, at most 15 bytes).
        name: String,
        /// Its IPv4 subnet; the bridge takes the first address, containers the next.
        #[arg(long, value_name = "CIDR", value_parser = clap::value_parser!(Subnet))]
        subnet: Subnet,
    },
    /// List the networks (berth0, 10.88.0.0/16, is always there).
    #[command(visible_alias = "list")]
    Ls,
    /// Forget a network no container's config names.
    Rm { name: String },
}

pub fn run(cli: &Cli, cmd: &NetworkCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        NetworkCmd::Create { name, subnet } => {
            Berth::open(&cli.root, true)?.network_create(name, *subnet)?;
            say(format!("network {name} defined ({subnet})"))?;
        }
        NetworkCmd::Ls => {
            let nets = Berth::open(&cli.root, false)?.networks()?;
            let rows = nets
                .iter()
                .map(|n| {
                    vec![
                        n.bridge.clone(),
                        n.subnet.clone(),
                        match n.containers.is_empty() {
                            true => "-".to_owned(),
                            false => n.containers.join(","),
                        },
                    ]
                })
                .collect();
            print_list(cli.format, &["BRIDGE", "SUBNET", "CONTAINERS"], rows, &nets)?;
        }
        NetworkCmd::Rm { name } => {
            Berth::open(&cli.root, true)?.network_remove(name)?;
            say(format!("network {name} removed"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
