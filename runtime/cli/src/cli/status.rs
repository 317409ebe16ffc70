//! `rayish status`.

use anyhow::{bail, Context, Result};
use clap::Args;
use rayish_core::launch::{resolve, route_ip};
use rayish_core::protocol::{ClusterStatus, FromHead, Hello, PeerRole, ToHead};
use rayish_core::resources::ResourceSet;
use rayish_core::session::{read_cluster_record, temp_root};
use rayish_core::transport::tls::ClusterTls;
use rayish_core::transport::{connect, make_client_endpoint, open_control};
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `rayish status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The head, HOST:PORT (default: the cluster started on this machine).
    #[arg(long)]
    address: Option<String>,
    /// The cluster token (default: the one recorded on this machine).
    #[arg(long, env = "RAYISH_TOKEN")]
    token: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Root for sessions (default /tmp/rayish or $RAYISH_TEMP_DIR).
    #[arg(long)]
    temp_dir: Option<PathBuf>,
}

/// Runs `rayish status`.
pub fn run(args: StatusArgs) -> Result<()> {
    let root = args.temp_dir.clone().unwrap_or_else(temp_root);
    let record = read_cluster_record(&root);
    let address = match args
        .address
        .clone()
        .or_else(|| record.as_ref().map(|r| r.address.clone()))
    {
        Some(a) => a,
        None => bail!("no cluster found on this machine; pass --address HOST:PORT"),
    };
    let head = resolve(&address).map_err(anyhow::Error::msg)?;
    let token = args
        .token
        .clone()
        .or_else(|| {
            record
                .filter(|r| resolve(&r.address).ok() == Some(head))
                .map(|r| r.token)
        })
        .context("no token: pass --token or set RAYISH_TOKEN")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = rt.block_on(async {
        let tls = ClusterTls::from_token(&token)?;
        let bind = std::net::SocketAddr::new(route_ip(head).unwrap_or_else(|| head.ip()), 0);
        let endpoint = make_client_endpoint(bind, &tls, Duration::from_secs(10))?;
        let conn = connect(&endpoint, head, Duration::from_secs(5)).await?;
        let hello = Hello {
            role: PeerRole::Client,
            software_version: env!("CARGO_PKG_VERSION").into(),
        };
        let mut control = open_control(&conn, hello).await?;
        control.sender.send(ToHead::StatusRequest);
        let status = loop {
            match control.reader.next().await? {
                Some(FromHead::Status(s)) => break *s,
                Some(_) => continue,
                None => bail!("the head closed the connection"),
            }
        };
        // Say goodbye, so the head frees the connection now rather than after its
        // idle timeout.
        conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        Ok::<_, anyhow::Error>(status)
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&address, &status));
    }
    Ok(())
}

/// A duration as `1h 2m 3s`, `2m 3s` or `3s`.
fn age(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}

fn render(address: &str, s: &ClusterStatus) -> String {
    let mut out = String::new();
    let line = "-".repeat(60);
    out += &format!("======== rayish cluster status (head {address}) ========\n");
    if let Some(starts) = &s.head_starts {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let ago = |ms: u64| age(Duration::from_millis(now.saturating_sub(ms)));
        out += &format!(
            "Head: up {}; {} restart{} (first started {} ago)\n",
            ago(starts.last_ms),
            starts.restarts(),
            if starts.restarts() == 1 { "" } else { "s" },
            ago(starts.first_ms),
        );
    }
    out += &format!("Node status\n{line}\n");
    let alive: Vec<_> = s.nodes.iter().filter(|n| n.alive).collect();
    let dead: Vec<_> = s.nodes.iter().filter(|n| !n.alive).collect();
    out += "Active:\n";
    for n in &alive {
        out += &format!(
            " {} {} ({}, incarnation {}) running {} finished {}  {}  workers {}  store {} objects {} bytes ({} bytes free for reuse, {} reused)\n",
            n.node_id,
            n.address,
            n.hostname,
            n.incarnation,
            n.running_tasks,
            n.finished_tasks,
            n.total,
            n.load.workers,
            n.load.store_objects,
            n.load.store_bytes,
            n.load.store_free_bytes,
            n.load.store_reused
        );
    }
    if alive.is_empty() {
        out += " (no active nodes)\n";
    }
    out += "Dead:\n";
    for n in &dead {
        out += &format!(
            " {} {} ({}, incarnation {})\n",
            n.node_id, n.address, n.hostname, n.incarnation
        );
    }
    if dead.is_empty() {
        out += " (no dead nodes)\n";
    }
    out += &format!("\nResources\n{line}\nUsage:\n");
    let mut total = ResourceSet::new();
    let mut available = ResourceSet::new();
    for n in &alive {
        total.add(&n.total);
        available.add(&n.available);
    }
    for (name, t) in total.iter() {
        let used = t - available.get(name);
        out += &format!(" {used}/{t} {name}\n");
    }
    out += &format!(
        "\nTasks: {} running, {} pending, {} finished; {} objects; {} drivers; {} actors\n",
        s.running_tasks, s.pending_tasks, s.finished_tasks, s.objects, s.drivers, s.actors
    );
    out += "Demands:\n";
    if s.pending_demand.is_empty() && s.infeasible_demand.is_empty() {
        out += " (no resource demands)\n";
    }
    for (shape, n) in &s.pending_demand {
        out += &format!(" {shape}: {n} pending tasks\n");
    }
    for (shape, n) in &s.infeasible_demand {
        out += &format!(" {shape}: {n} infeasible tasks (no node can run them)\n");
    }
    out += &format!("\nAutoscaler\n{line}\n");
    match &s.autoscaler {
        None => out += " (not running: start the head with --autoscaling-config)\n",
        Some(a) => {
            out += &format!(
                " workers {}..{}, idle timeout {:.0} s\n",
                a.min_workers, a.max_workers, a.idle_timeout_secs
            );
            for m in &a.machines {
                out += &format!(" {} {} {}\n", m.host, m.state, m.detail);
            }
            out += "Recent:\n";
            if a.recent.is_empty() {
                out += " (nothing done yet)\n";
            }
            for r in &a.recent {
                out += &format!(" {r}\n");
            }
        }
    }
    out
}
