//! `rayish up / down / exec / submit / attach / get-head-ip`: Ray's cluster-launcher
//! commands over a cluster YAML (`rayish_launcher::launcher`).

use anyhow::{Context, Result};
use clap::Args;
use rayish_launcher::launcher::config::ClusterConfig;
use rayish_launcher::launcher::{default_state_dir, Launcher, MachineOutcome};
use std::path::PathBuf;

/// Arguments shared by every cluster-file command.
#[derive(Args, Debug)]
pub struct FileArgs {
    /// The cluster file (Ray's cluster-launcher YAML).
    cluster_config_file: PathBuf,
    /// Where this machine keeps launched clusters' state (default ~/.rayish/clusters).
    #[arg(long, hide = true, env = "RAYISH_CLUSTERS_DIR")]
    state_dir: Option<PathBuf>,
}

impl FileArgs {
    fn launcher(&self) -> Result<Launcher> {
        let (_, plan) = ClusterConfig::load(&self.cluster_config_file)?;
        let text = std::fs::read_to_string(&self.cluster_config_file)
            .with_context(|| format!("reading {}", self.cluster_config_file.display()))?;
        Ok(Launcher::new(
            plan,
            text,
            self.state_dir.clone().unwrap_or_else(default_state_dir),
        ))
    }
}

/// Arguments of `rayish up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    file: FileArgs,
    /// Check the file and print what would be done, touching no machine.
    #[arg(long)]
    dry_run: bool,
    /// Re-run set-up and start commands even on machines that are already right.
    #[arg(long)]
    restart: bool,
    /// Ray's: leave running nodes alone. rayish already does unless something changed.
    #[arg(long, conflicts_with = "restart")]
    no_restart: bool,
    /// Ray's confirmation skip; rayish does not ask.
    #[arg(long, short = 'y')]
    yes: bool,
}

/// Runs `rayish up`.
pub fn up(args: UpArgs) -> Result<()> {
    let (_, plan) = ClusterConfig::load(&args.file.cluster_config_file)?;
    if args.dry_run {
        println!(
            "{}: valid. Cluster {:?}: head {}; workers {}..{} from {} machine(s) [{}]; \
             upscaling_speed {}, idle timeout {:?}",
            args.file.cluster_config_file.display(),
            plan.name,
            plan.head,
            plan.min_workers,
            plan.max_workers,
            plan.worker_pool.len(),
            plan.worker_pool.join(", "),
            plan.upscaling_speed,
            plan.idle_timeout
        );
        for (role, c) in [
            ("head", &plan.head_container),
            ("worker", &plan.worker_container),
        ] {
            if let Some(c) = c {
                println!(
                    "  {role} set-up and start commands run in container {} of {} (pull: {}, options: {})",
                    c.name,
                    c.image,
                    c.pull,
                    c.run_options.join(" ")
                );
            }
        }
        for (role, c) in [
            ("head", &plan.head_commands),
            ("worker", &plan.worker_commands),
        ] {
            for (phase, list) in [
                ("initialization", &c.initialization),
                ("setup", &c.setup),
                ("start", &c.start),
            ] {
                for command in list {
                    println!("  {role} {phase}: {command}");
                }
            }
        }
        for (remote, local) in &plan.file_mounts {
            println!("  file mount: {local} -> {remote}");
        }
        return Ok(());
    }
    let launcher = args.file.launcher()?;
    let outcomes = launcher.up(args.restart)?;
    let started = outcomes
        .iter()
        .filter(|(_, o)| *o == MachineOutcome::Started)
        .count();
    println!(
        "{} machine(s) set up and started, {} unchanged.",
        started,
        outcomes.len() - started
    );
    Ok(())
}

/// Arguments of `rayish down`.
#[derive(Args, Debug)]
pub struct DownArgs {
    #[command(flatten)]
    file: FileArgs,
    /// Ray's confirmation skip; rayish does not ask.
    #[arg(long, short = 'y')]
    yes: bool,
}

/// Runs `rayish down`.
pub fn down(args: DownArgs) -> Result<()> {
    args.file.launcher()?.down()?;
    Ok(())
}

/// Arguments of `rayish exec`.
#[derive(Args, Debug)]
pub struct ExecArgs {
    #[command(flatten)]
    file: FileArgs,
    /// The shell command to run on the head.
    cmd: String,
}

/// Runs `rayish exec`; exits with the command's code.
pub fn exec(args: ExecArgs) -> Result<()> {
    // The launcher is dropped (closing its ssh connections) before exiting.
    let code = args.file.launcher()?.exec(&args.cmd)?;
    std::process::exit(code)
}

/// Arguments of `rayish submit`.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    file: FileArgs,
    /// The driver program (a binary built against rayish) to copy to the head and run.
    program: PathBuf,
    /// Its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Runs `rayish submit`; exits with the program's code.
pub fn submit(args: SubmitArgs) -> Result<()> {
    let code = args.file.launcher()?.submit(&args.program, &args.args)?;
    std::process::exit(code)
}

/// Arguments of `rayish attach`.
#[derive(Args, Debug)]
pub struct AttachArgs {
    #[command(flatten)]
    file: FileArgs,
}

/// Runs `rayish attach`.
pub fn attach(args: AttachArgs) -> Result<()> {
    let code = args.file.launcher()?.attach()?;
    std::process::exit(code)
}

/// Arguments of `rayish get-head-ip`.
#[derive(Args, Debug)]
pub struct HeadIpArgs {
    #[command(flatten)]
    file: FileArgs,
}

/// Runs `rayish get-head-ip`.
pub fn get_head_ip(args: HeadIpArgs) -> Result<()> {
    let (_, plan) = ClusterConfig::load(&args.file.cluster_config_file)?;
    println!("{}", plan.head_external);
    Ok(())
}
