//! The host's figures in Ray's node metrics: CPU, memory, disk, network, and the
//! resident memory and CPU use of the node's own processes.

use super::MetricSet;
use std::path::{Path, PathBuf};
use std::time::Instant;
use sysinfo::{Disks, Networks, Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// Samples the host; keeps what it needs between scrapes (CPU times, network
/// totals) to give utilisation and speeds over the time since the last one.
pub struct HostSampler {
    system: System,
    disks: Disks,
    networks: Networks,
    /// The file system whose use is reported (the session directory's).
    disk_path: PathBuf,
    last_network: Option<(Instant, u64, u64)>,
}

impl HostSampler {
    /// A sampler reporting the disk that holds `disk_path`; an error if this host's
    /// figures cannot be read at all.
    pub fn new(disk_path: &Path) -> Result<Self, String> {
        let mut system = System::new().map_err(|e| e.to_string())?;
        // CPU use is measured between two refreshes: start the first interval now.
        system.refresh_cpu_usage();
        Ok(HostSampler {
            system,
            disks: Disks::new_with_refreshed_list().map_err(|e| e.to_string())?,
            networks: Networks::new_with_refreshed_list().map_err(|e| e.to_string())?,
            disk_path: disk_path.to_path_buf(),
            last_network: None,
        })
    }

    /// The host's CPU, memory and disk use now (CPU since the last sample); the
    /// object store's fields are left at zero.
    pub fn usage(&mut self) -> crate::protocol::NodeUsage {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.disks.refresh(true);
        let total = self.system.total_memory();
        let (disk_total, disk_free) = self
            .disk()
            .map_or((0, 0), |d| (d.total_space(), d.available_space()));
        crate::protocol::NodeUsage {
            cpu_percent: self.system.global_cpu_usage(),
            cpus: self.system.cpus().len() as u32,
            mem_total: total,
            mem_used: total.saturating_sub(self.system.available_memory()),
            disk_total,
            disk_used: disk_total.saturating_sub(disk_free),
            ..Default::default()
        }
    }

    /// The disk holding the session directory: the longest mount point above it.
    fn disk(&self) -> Option<&sysinfo::Disk> {
        self.disks
            .iter()
            .filter(|d| self.disk_path.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len())
    }

    /// Adds the host's samples to `out`; `node_pid` is the node process, `workers`
    /// its worker processes.
    pub fn sample(&mut self, out: &mut MetricSet, node_pid: u32, workers: &[u32]) {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        out.gauge(
            "ray_node_cpu_utilization",
            "Total CPU usage of the node, in percent.",
            &[],
            f64::from(self.system.global_cpu_usage()),
        );
        out.gauge(
            "ray_node_cpu_count",
            "Logical CPUs of the node.",
            &[],
            self.system.cpus().len() as f64,
        );
        let total = self.system.total_memory();
        let available = self.system.available_memory();
        out.gauge(
            "ray_node_mem_total_host",
            "Memory of the node, in bytes.",
            &[],
            total as f64,
        );
        out.gauge(
            "ray_node_mem_used_host",
            "Memory in use on the node (total less available), in bytes.",
            &[],
            total.saturating_sub(available) as f64,
        );
        out.gauge(
            "ray_node_mem_available",
            "Memory available on the node, in bytes.",
            &[],
            available as f64,
        );

        self.disks.refresh(true);
        if let Some(d) = self.disk() {
            let free = d.available_space();
            out.gauge(
                "ray_node_disk_usage",
                "Bytes used on the disk of the node's session directory.",
                &[],
                d.total_space().saturating_sub(free) as f64,
            );
            out.gauge(
                "ray_node_disk_free",
                "Bytes free on the disk of the node's session directory.",
                &[],
                free as f64,
            );
        }

        self.networks.refresh(true);
        let (mut sent, mut received) = (0u64, 0u64);
        for (name, data) in self.networks.iter() {
            if name != "lo" {
                sent += data.total_transmitted();
                received += data.total_received();
            }
        }
        out.gauge(
            "ray_node_network_sent",
            "Bytes sent by the node's network interfaces (loopback excluded).",
            &[],
            sent as f64,
        );
        out.gauge(
            "ray_node_network_received",
            "Bytes received by the node's network interfaces (loopback excluded).",
            &[],
            received as f64,
        );
        let now = Instant::now();
        let (send_speed, receive_speed) = match self.last_network {
            Some((then, s, r)) => {
                let secs = now.duration_since(then).as_secs_f64().max(1e-3);
                (
                    sent.saturating_sub(s) as f64 / secs,
                    received.saturating_sub(r) as f64 / secs,
                )
            }
            None => (0.0, 0.0),
        };
        self.last_network = Some((now, sent, received));
        out.gauge(
            "ray_node_network_send_speed",
            "Bytes sent per second since the last scrape.",
            &[],
            send_speed,
        );
        out.gauge(
            "ray_node_network_receive_speed",
            "Bytes received per second since the last scrape.",
            &[],
            receive_speed,
        );

        let mut pids: Vec<Pid> = vec![Pid::from_u32(node_pid)];
        pids.extend(workers.iter().map(|&p| Pid::from_u32(p)));
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&pids),
            true,
            ProcessRefreshKind::nothing().with_memory().with_cpu(),
        );
        let rss = |pid: &Pid| self.system.process(*pid).map_or(0, |p| p.memory());
        // Percent of one CPU since the last scrape (over 100: more than one CPU), as
        // Ray's "Node CPU by Component" panel reads it.
        let cpu = |pid: &Pid| {
            self.system
                .process(*pid)
                .map_or(0.0, |p| f64::from(p.cpu_usage()))
        };
        out.gauge(
            "ray_component_cpu_percentage",
            "CPU use of the node's processes since the last scrape, by component, in percent of one CPU.",
            &[("Component", "raylet")],
            cpu(&pids[0]),
        );
        out.gauge(
            "ray_component_cpu_percentage",
            "CPU use of the node's processes since the last scrape, by component, in percent of one CPU.",
            &[("Component", "core_worker")],
            pids[1..].iter().map(cpu).sum::<f64>(),
        );
        out.gauge(
            "ray_component_rss_bytes",
            "Resident memory of the node's processes, by component, in bytes.",
            &[("Component", "raylet")],
            rss(&pids[0]) as f64,
        );
        out.gauge(
            "ray_component_rss_bytes",
            "Resident memory of the node's processes, by component, in bytes.",
            &[("Component", "core_worker")],
            pids[1..].iter().map(rss).sum::<u64>() as f64,
        );
    }
}
