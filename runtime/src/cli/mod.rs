//! Command-line parsing and dispatch.

mod start;
mod status;
mod stop;

use clap::{Parser, Subcommand};

/// rayish: a Ray-compatible distributed task runtime.
#[derive(Parser, Debug)]
#[command(name = "rayish", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the head (--head) or a node joining a head (--address), like `ray start`.
    Start(start::StartArgs),
    /// Show the cluster's nodes, resources and demand, like `ray status`.
    Status(status::StatusArgs),
    /// Stop the rayish node processes of this machine, like `ray stop`.
    Stop(stop::StopArgs),
}

/// Parses the command line and runs the command.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Start(args) => start::run(args),
        Command::Status(args) => status::run(args),
        Command::Stop(args) => stop::run(args),
    }
}
