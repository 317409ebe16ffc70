//! Command-line parsing and dispatch.

mod cluster;
mod job;
mod logs;
mod microbenchmark;
mod start;
mod state;
mod status;
mod stop;
mod timeline;

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
    /// Start or update a cluster from a cluster YAML, like `ray up`.
    Up(cluster::UpArgs),
    /// Stop every node of a cluster YAML's machines, like `ray down`.
    Down(cluster::DownArgs),
    /// Run a shell command on the head of a cluster YAML, like `ray exec`.
    Exec(cluster::ExecArgs),
    /// Copy a driver program to the head and run it there, like `ray submit`.
    Submit(cluster::SubmitArgs),
    /// Open a shell on the head, like `ray attach`.
    Attach(cluster::AttachArgs),
    /// Print the head's address from a cluster YAML, like `ray get-head-ip`.
    GetHeadIp(cluster::HeadIpArgs),
    /// Run Ray's microbenchmarks against rayish, like `ray microbenchmark`.
    Microbenchmark(microbenchmark::MicrobenchmarkArgs),
    /// List nodes, jobs, tasks, actors, objects or workers, like `ray list`.
    List(state::ListArgs),
    /// Show one node, task, actor, object or worker by id, like `ray get`.
    Get(state::GetArgs),
    /// Summarize tasks, actors or objects, like `ray summary`.
    Summary(state::SummaryArgs),
    /// List a node's log files, or print or follow one, like `ray logs`.
    Logs(logs::LogsArgs),
    /// Write the tasks' timeline as a Chrome trace, like `ray timeline`.
    Timeline(timeline::TimelineArgs),
    /// Submit, follow, stop and list jobs through the Jobs API, like `ray job`.
    Job(job::JobArgs),
}

/// Parses the command line and runs the command.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Start(args) => start::run(args),
        Command::Status(args) => status::run(args),
        Command::Stop(args) => stop::run(args),
        Command::Up(args) => cluster::up(args),
        Command::Down(args) => cluster::down(args),
        Command::Exec(args) => cluster::exec(args),
        Command::Submit(args) => cluster::submit(args),
        Command::Attach(args) => cluster::attach(args),
        Command::GetHeadIp(args) => cluster::get_head_ip(args),
        Command::Microbenchmark(args) => microbenchmark::run(args),
        Command::List(args) => state::list(args),
        Command::Get(args) => state::get(args),
        Command::Summary(args) => state::summary(args),
        Command::Logs(args) => logs::logs(args),
        Command::Timeline(args) => timeline::timeline(args),
        Command::Job(args) => {
            // `submit` exits with the job's outcome, as Ray's does.
            let code = job::run(args)?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
    }
}
