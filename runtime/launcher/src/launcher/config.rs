//! The cluster YAML: Ray's cluster-launcher format (`ray-schema.json`), read with every
//! field checked.
//!
//! A Ray user's local-provider file is accepted as it is; only its start commands need
//! `ray` changed to `rayish` (and the defaults, when a file has none, already say
//! `rayish`). Unknown fields, values of the wrong type and settings rayish cannot honour
//! are errors that name the field and its line, never silently ignored.

use serde::de::{Deserializer, IgnoredAny};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use thiserror::Error;

/// Why a cluster file was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Not YAML, or a field unknown or of the wrong type (the message names the field
    /// and its line and column).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's account, with the field and its position.
        message: String,
    },
    /// A field whose value cannot work.
    #[error("{path}:{line}: {field}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// 1-based line of the field (0 when the field is absent).
        line: usize,
        /// The field, dotted (`provider.worker_ips`).
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// The default head start commands, Ray's with `rayish`.
pub const DEFAULT_HEAD_START: [&str; 2] = [
    "rayish stop",
    "ulimit -c unlimited && rayish start --head --port=6379 --autoscaling-config=~/ray_bootstrap_config.yaml",
];

/// The default worker start commands, Ray's with `rayish`.
pub const DEFAULT_WORKER_START: [&str; 2] =
    ["rayish stop", "rayish start --address=$RAY_HEAD_IP:6379"];

/// A cluster file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Names the cluster (and its local state file).
    pub cluster_name: String,
    /// Deprecated in Ray in favour of the node type's; still honoured.
    #[serde(default)]
    pub min_workers: Option<u32>,
    /// Most worker nodes besides the head.
    #[serde(default)]
    pub max_workers: Option<u32>,
    /// Deprecated in Ray; accepted and ignored.
    #[serde(default, skip_serializing)]
    pub initial_workers: Option<u32>,
    /// Deprecated in Ray (use `upscaling_speed`); accepted and ignored.
    #[serde(default, skip_serializing)]
    pub autoscaling_mode: Option<AutoscalingMode>,
    /// Deprecated in Ray (use `upscaling_speed`); accepted and ignored.
    #[serde(default, skip_serializing)]
    pub target_utilization_fraction: Option<f64>,
    /// Workers started per round: at most `upscaling_speed` × running nodes (at least 1).
    #[serde(default = "default_upscaling_speed")]
    pub upscaling_speed: f64,
    /// A worker idle this long is stopped (down to the minimum).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_minutes: f64,
    /// Where the machines are.
    pub provider: ProviderConfig,
    /// How to log in to them.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Ray's container mode: set-up and start commands run in a container of this
    /// image on each machine (an empty `image` disables it).
    #[serde(default)]
    pub docker: Option<DockerConfig>,
    /// The node type of the head, a key of `available_node_types`.
    #[serde(default)]
    pub head_node_type: Option<String>,
    /// Deprecated in Ray; accepted and ignored.
    #[serde(default, skip_serializing)]
    pub worker_default_node_type: Option<String>,
    /// Provider settings for the head; must be empty for the local provider.
    #[serde(default, deserialize_with = "null_as_default")]
    pub head_node: BTreeMap<String, serde_json::Value>,
    /// Provider settings for workers; must be empty for the local provider.
    #[serde(default, deserialize_with = "null_as_default")]
    pub worker_nodes: BTreeMap<String, serde_json::Value>,
    /// `REMOTE_PATH: LOCAL_PATH`, copied to every machine before its setup.
    #[serde(default, deserialize_with = "null_as_default")]
    pub file_mounts: BTreeMap<String, String>,
    /// Paths on the head copied to each worker.
    #[serde(default, deserialize_with = "null_as_default")]
    pub cluster_synced_files: Vec<String>,
    /// Ray's continuous sync; not supported when true.
    #[serde(default)]
    pub file_mounts_sync_continuously: bool,
    /// rsync `--exclude` patterns for file mounts.
    #[serde(default, deserialize_with = "null_as_default")]
    pub rsync_exclude: Vec<String>,
    /// rsync filter files (`.gitignore`-style) looked up in mounted directories.
    #[serde(default, deserialize_with = "null_as_default")]
    pub rsync_filter: Vec<String>,
    /// Free-form user data; never interpreted.
    #[serde(default, skip_serializing)]
    pub metadata: Option<IgnoredYaml>,
    /// Run first on every machine.
    #[serde(default, deserialize_with = "null_as_default")]
    pub initialization_commands: Vec<String>,
    /// Run on every machine after the initialization commands.
    #[serde(default, deserialize_with = "null_as_default")]
    pub setup_commands: Vec<String>,
    /// Run on the head after `setup_commands`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub head_setup_commands: Vec<String>,
    /// Run on each worker after `setup_commands`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub worker_setup_commands: Vec<String>,
    /// Start the head ([`DEFAULT_HEAD_START`] when absent).
    #[serde(default)]
    pub head_start_ray_commands: Option<Vec<String>>,
    /// Start a worker ([`DEFAULT_WORKER_START`] when absent); `$RAY_HEAD_IP` is the
    /// head's address.
    #[serde(default)]
    pub worker_start_ray_commands: Option<Vec<String>>,
    /// Set by Ray's `--no-restart` flag, never by users: refused in a file.
    #[serde(default, skip_serializing)]
    pub no_restart: Option<IgnoredYaml>,
    /// Node types: resources and worker counts.
    #[serde(default, deserialize_with = "null_as_default")]
    pub available_node_types: BTreeMap<String, NodeTypeConfig>,
}

/// Ray's deprecated autoscaling modes.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AutoscalingMode {
    /// Ray's default.
    Default,
    /// Ray's aggressive mode.
    Aggressive,
}

/// Any YAML value, kept only to accept the field.
#[derive(Debug, Clone, Default)]
pub struct IgnoredYaml;

impl<'de> Deserialize<'de> for IgnoredYaml {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d).map(|_| IgnoredYaml)
    }
}

/// `provider:`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Only `local` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// The head machine (host name or address).
    #[serde(default)]
    pub head_ip: Option<String>,
    /// The address the head is reached at from where `rayish up` runs, if not `head_ip`.
    #[serde(default)]
    pub external_head_ip: Option<String>,
    /// The machines workers may be started on.
    #[serde(default, deserialize_with = "null_as_default")]
    pub worker_ips: Vec<String>,
    /// Ray's on-prem coordinator server; not supported.
    #[serde(default)]
    pub coordinator_address: Option<String>,
    /// Accepted for compatibility; addresses are used as given.
    #[serde(default)]
    pub use_internal_ips: Option<bool>,
}

/// `auth:`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The login on every machine (default: the current user).
    #[serde(default)]
    pub ssh_user: Option<String>,
    /// Key file (`~` is expanded).
    #[serde(default)]
    pub ssh_private_key: Option<String>,
    /// Accepted; the private key is what is used.
    #[serde(default)]
    pub ssh_public_key: Option<String>,
    /// ssh `ProxyCommand`.
    #[serde(default)]
    pub ssh_proxy_command: Option<String>,
}

/// `docker:`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// The image every command would run in.
    #[serde(default)]
    pub image: Option<String>,
    /// The container's name.
    #[serde(default)]
    pub container_name: Option<String>,
    /// Pull before running.
    #[serde(default)]
    pub pull_before_run: Option<bool>,
    /// `docker run` options.
    #[serde(default, deserialize_with = "null_as_default")]
    pub run_options: Vec<String>,
    /// The head's image.
    #[serde(default)]
    pub head_image: Option<String>,
    /// The head's extra options.
    #[serde(default, deserialize_with = "null_as_default")]
    pub head_run_options: Vec<String>,
    /// Workers' image.
    #[serde(default)]
    pub worker_image: Option<String>,
    /// Workers' extra options.
    #[serde(default, deserialize_with = "null_as_default")]
    pub worker_run_options: Vec<String>,
    /// GPU runtime detection switch.
    #[serde(default)]
    pub disable_automatic_runtime_detection: Option<bool>,
    /// `/dev/shm` size detection switch.
    #[serde(default)]
    pub disable_shm_size_detection: Option<bool>,
    /// Podman instead of Docker.
    #[serde(default)]
    pub use_podman: Option<bool>,
}

impl DockerConfig {
    /// Whether the section asks for containers at all (Ray: an empty image disables).
    pub fn enabled(&self) -> bool {
        [&self.image, &self.head_image, &self.worker_image]
            .iter()
            .any(|i| i.as_deref().is_some_and(|s| !s.trim().is_empty()))
    }
}

/// One entry of `available_node_types`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeTypeConfig {
    /// Resources a node of this type offers (`CPU`, `GPU`, custom), passed to
    /// `rayish start` as `--num-cpus`, `--num-gpus`, `--resources`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub resources: BTreeMap<String, f64>,
    /// Provider settings; must be empty for the local provider.
    #[serde(default, deserialize_with = "null_as_default")]
    pub node_config: BTreeMap<String, serde_json::Value>,
    /// Fewest workers of this type.
    #[serde(default)]
    pub min_workers: Option<u32>,
    /// Most workers of this type.
    #[serde(default)]
    pub max_workers: Option<u32>,
    /// Replace the global initialization commands for this type.
    #[serde(default)]
    pub initialization_commands: Option<Vec<String>>,
    /// Replace the global setup and worker setup commands for this type.
    #[serde(default)]
    pub worker_setup_commands: Option<Vec<String>>,
    /// Ray's per-type container settings (the worker's image, options, pull).
    #[serde(default)]
    pub docker: Option<DockerConfig>,
}

fn default_upscaling_speed() -> f64 {
    1.0
}

fn default_idle_timeout() -> f64 {
    5.0
}

/// A `null` (a key with nothing after it) reads as the empty value.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// What a cluster file resolves to: the machines and the commands for each role.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterPlan {
    /// The cluster's name.
    pub name: String,
    /// The head machine.
    pub head: String,
    /// Where `rayish up` reaches the head (usually `head`).
    pub head_external: String,
    /// The pool of worker machines, in file order.
    pub worker_pool: Vec<String>,
    /// Workers always running (started by `up`).
    pub min_workers: usize,
    /// Most workers running.
    pub max_workers: usize,
    /// Upscaling speed.
    pub upscaling_speed: f64,
    /// Idle timeout.
    pub idle_timeout: std::time::Duration,
    /// `rayish start` resource flags for the head.
    pub head_resources: BTreeMap<String, f64>,
    /// `rayish start` resource flags for workers.
    pub worker_resources: BTreeMap<String, f64>,
    /// Login user (None: ssh's default).
    pub ssh_user: Option<String>,
    /// Key file, `~` expanded.
    pub ssh_key: Option<std::path::PathBuf>,
    /// ssh `ProxyCommand`.
    pub ssh_proxy_command: Option<String>,
    /// `REMOTE: LOCAL` copies.
    pub file_mounts: BTreeMap<String, String>,
    /// rsync exclude patterns.
    pub rsync_exclude: Vec<String>,
    /// rsync filter files.
    pub rsync_filter: Vec<String>,
    /// Paths synced from the head to workers.
    pub cluster_synced_files: Vec<String>,
    /// Ray's container mode for the head: set-up and start commands run inside it.
    pub head_container: Option<ContainerPlan>,
    /// Ray's container mode for workers.
    pub worker_container: Option<ContainerPlan>,
    /// The head's commands, in the order they run.
    pub head_commands: RoleCommands,
    /// A worker's commands, in the order they run.
    pub worker_commands: RoleCommands,
}

/// A container on a machine that a role's set-up and start commands run in (Ray's
/// `docker:` section): started with the machine's network (`--net=host`), the file
/// mounts and rayish's files mounted at the same paths.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerPlan {
    /// The image.
    pub image: String,
    /// The container's name.
    pub name: String,
    /// `docker pull` before running (else only if the machine lacks the image).
    pub pull: bool,
    /// Extra `docker run` options, split into words.
    pub run_options: Vec<String>,
    /// Give the container a `/dev/shm` of 30% of the machine's memory unless the options
    /// set one (Ray's shm-size detection).
    pub size_shm: bool,
}

/// One role's commands, by phase.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoleCommands {
    /// `initialization_commands`.
    pub initialization: Vec<String>,
    /// `setup_commands` then the role's setup commands.
    pub setup: Vec<String>,
    /// The role's start commands.
    pub start: Vec<String>,
}

impl ClusterConfig {
    /// Reads and checks a cluster file.
    pub fn load(path: &Path) -> Result<(Self, ClusterPlan), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and checks a cluster file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<(Self, ClusterPlan), ConfigError> {
        let config: ClusterConfig =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_string(),
                message: with_suggestion(e.to_string()),
            })?;
        let plan = config.plan(text, path)?;
        Ok((config, plan))
    }

    /// Checks what the parser cannot, and resolves the defaults.
    fn plan(&self, text: &str, path: &str) -> Result<ClusterPlan, ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            path: path.to_string(),
            line: line_of(text, field),
            field: field.to_string(),
            message,
        };
        if self.provider.kind != "local" {
            return Err(invalid(
                "provider.type",
                format!(
                    "provider type {:?} is not supported: rayish launches clusters on \
                     machines you name (type: local)",
                    self.provider.kind
                ),
            ));
        }
        let head = match self.provider.head_ip.as_deref().map(str::trim) {
            Some(h) if !h.is_empty() => h.to_string(),
            _ => {
                return Err(invalid(
                    "provider.head_ip",
                    "the local provider needs the head machine's address".into(),
                ))
            }
        };
        if self.provider.coordinator_address.is_some() {
            return Err(invalid(
                "provider.coordinator_address",
                "Ray's on-prem coordinator server is not supported; list the machines \
                 in worker_ips"
                    .into(),
            ));
        }
        if self.cluster_name.trim().is_empty()
            || !self
                .cluster_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(
                "cluster_name",
                "must be non-empty letters, digits, '-', '_' or '.'".into(),
            ));
        }
        if self.no_restart.is_some() {
            return Err(invalid(
                "no_restart",
                "is set by the --no-restart flag, not in the file".into(),
            ));
        }
        if self.file_mounts_sync_continuously {
            return Err(invalid(
                "file_mounts_sync_continuously",
                "continuous sync is not supported; file mounts are copied on `rayish up`".into(),
            ));
        }
        if self
            .docker
            .as_ref()
            .is_some_and(|d| d.use_podman == Some(true))
        {
            return Err(invalid(
                "use_podman",
                "podman is not supported; containers run with docker".into(),
            ));
        }
        if !self.head_node.is_empty() {
            return Err(invalid(
                "head_node",
                "must be empty for the local provider".into(),
            ));
        }
        if !self.worker_nodes.is_empty() {
            return Err(invalid(
                "worker_nodes",
                "must be empty for the local provider".into(),
            ));
        }
        if !(self.upscaling_speed > 0.0 && self.upscaling_speed.is_finite()) {
            return Err(invalid(
                "upscaling_speed",
                format!("must be a number above 0, not {}", self.upscaling_speed),
            ));
        }
        if !(self.idle_timeout_minutes >= 0.0 && self.idle_timeout_minutes.is_finite()) {
            return Err(invalid(
                "idle_timeout_minutes",
                format!("must be 0 or more, not {}", self.idle_timeout_minutes),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for ip in &self.provider.worker_ips {
            if ip.trim().is_empty() {
                return Err(invalid("provider.worker_ips", "an empty address".into()));
            }
            if *ip == head || !seen.insert(ip.as_str()) {
                return Err(invalid(
                    "provider.worker_ips",
                    format!("{ip} is listed twice (or is the head)"),
                ));
            }
        }

        // Node types: the head's and (at most) one worker type, as the local provider
        // has one pool of identical machines.
        let (head_type, worker_type) = self.node_types(&invalid)?;
        let pool = self.provider.worker_ips.len();
        let max_workers = self
            .max_workers
            .or(worker_type.and_then(|t| t.max_workers))
            .map(|m| m as usize)
            .unwrap_or(pool);
        if max_workers > pool {
            return Err(invalid(
                "max_workers",
                format!(
                    "{max_workers} workers, but provider.worker_ips lists only {pool} machines"
                ),
            ));
        }
        // Ray's manual default: with neither given, every listed machine runs a worker.
        let min_workers = worker_type
            .and_then(|t| t.min_workers)
            .or(self.min_workers)
            .map(|m| m as usize)
            .unwrap_or(if self.max_workers.is_none() { pool } else { 0 });
        if min_workers > max_workers {
            return Err(invalid(
                "min_workers",
                format!("{min_workers} is above max_workers ({max_workers})"),
            ));
        }

        let head_start = self
            .head_start_ray_commands
            .clone()
            .unwrap_or_else(|| DEFAULT_HEAD_START.map(String::from).to_vec());
        let worker_start = self
            .worker_start_ray_commands
            .clone()
            .unwrap_or_else(|| DEFAULT_WORKER_START.map(String::from).to_vec());
        for (field, commands) in [
            ("head_start_ray_commands", &head_start),
            ("worker_start_ray_commands", &worker_start),
        ] {
            if commands.iter().any(|c| starts_ray(c)) {
                return Err(invalid(
                    field,
                    "starts Ray (`ray start`): change it to `rayish start`".into(),
                ));
            }
        }
        let worker_init = worker_type
            .and_then(|t| t.initialization_commands.clone())
            .unwrap_or_else(|| self.initialization_commands.clone());
        let worker_setup = match worker_type.and_then(|t| t.worker_setup_commands.clone()) {
            Some(own) => own,
            None => [
                self.setup_commands.clone(),
                self.worker_setup_commands.clone(),
            ]
            .concat(),
        };
        let head_init = head_type
            .and_then(|t| t.initialization_commands.clone())
            .unwrap_or_else(|| self.initialization_commands.clone());
        Ok(ClusterPlan {
            name: self.cluster_name.clone(),
            head_external: self
                .provider
                .external_head_ip
                .clone()
                .unwrap_or_else(|| head.clone()),
            head,
            worker_pool: self.provider.worker_ips.clone(),
            min_workers,
            max_workers,
            upscaling_speed: self.upscaling_speed,
            idle_timeout: std::time::Duration::from_secs_f64(self.idle_timeout_minutes * 60.0),
            head_resources: head_type.map(|t| t.resources.clone()).unwrap_or_default(),
            worker_resources: worker_type.map(|t| t.resources.clone()).unwrap_or_default(),
            ssh_user: self.auth.ssh_user.clone(),
            ssh_key: self.auth.ssh_private_key.as_deref().map(expand_home),
            ssh_proxy_command: self.auth.ssh_proxy_command.clone(),
            file_mounts: self.file_mounts.clone(),
            rsync_exclude: self.rsync_exclude.clone(),
            rsync_filter: self.rsync_filter.clone(),
            cluster_synced_files: self.cluster_synced_files.clone(),
            head_container: self.container(false, None),
            worker_container: self.container(true, worker_type),
            head_commands: RoleCommands {
                initialization: head_init,
                setup: [
                    self.setup_commands.clone(),
                    self.head_setup_commands.clone(),
                ]
                .concat(),
                start: head_start,
            },
            worker_commands: RoleCommands {
                initialization: worker_init,
                setup: worker_setup,
                start: worker_start,
            },
        })
    }

    /// The container a role runs in (the worker's when `worker`, with its node type's
    /// own settings), if the `docker:` section names an image for it.
    fn container(
        &self,
        worker: bool,
        worker_type: Option<&NodeTypeConfig>,
    ) -> Option<ContainerPlan> {
        let d = self.docker.as_ref()?;
        let own = worker
            .then(|| worker_type.and_then(|t| t.docker.as_ref()))
            .flatten();
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.trim().is_empty());
        let image = if worker {
            own.and_then(|o| non_empty(&o.worker_image))
                .or_else(|| non_empty(&d.worker_image))
        } else {
            non_empty(&d.head_image)
        }
        .or_else(|| non_empty(&d.image))?;
        let words = |list: &[String]| -> Vec<String> {
            list.iter()
                .flat_map(|o| o.split_whitespace().map(str::to_string))
                .collect()
        };
        let mut run_options = words(&d.run_options);
        if worker {
            run_options.extend(words(&d.worker_run_options));
            if let Some(o) = own {
                run_options.extend(words(&o.worker_run_options));
            }
        } else {
            run_options.extend(words(&d.head_run_options));
        }
        Some(ContainerPlan {
            image,
            name: d
                .container_name
                .clone()
                .unwrap_or_else(|| "ray_docker".into()),
            pull: own
                .and_then(|o| o.pull_before_run)
                .or(d.pull_before_run)
                .unwrap_or(false),
            run_options,
            size_shm: d.disable_shm_size_detection != Some(true),
        })
    }

    /// The head's node type and the worker node type, checked.
    #[allow(clippy::type_complexity)]
    fn node_types(
        &self,
        invalid: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(Option<&NodeTypeConfig>, Option<&NodeTypeConfig>), ConfigError> {
        let types = &self.available_node_types;
        if types.is_empty() {
            if let Some(h) = &self.head_node_type {
                return Err(invalid(
                    "head_node_type",
                    format!("{h:?} names a type, but available_node_types is empty"),
                ));
            }
            return Ok((None, None));
        }
        let Some(head_name) = &self.head_node_type else {
            return Err(invalid(
                "head_node_type",
                "required when available_node_types is given".into(),
            ));
        };
        let Some(head) = types.get(head_name) else {
            return Err(invalid(
                "head_node_type",
                format!(
                    "{head_name:?} is not one of available_node_types ({})",
                    types.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        for (name, t) in types {
            if !t.node_config.is_empty() {
                return Err(invalid(
                    &format!("available_node_types.{name}.node_config"),
                    "must be empty for the local provider".into(),
                ));
            }
            for (resource, amount) in &t.resources {
                if !(*amount >= 0.0 && amount.is_finite()) {
                    return Err(invalid(
                        &format!("available_node_types.{name}.resources.{resource}"),
                        format!("must be 0 or more, not {amount}"),
                    ));
                }
            }
            if let (Some(min), Some(max)) = (t.min_workers, t.max_workers) {
                if min > max {
                    return Err(invalid(
                        &format!("available_node_types.{name}.min_workers"),
                        format!("{min} is above its max_workers ({max})"),
                    ));
                }
            }
        }
        let workers: Vec<_> = types.iter().filter(|(n, _)| *n != head_name).collect();
        match workers.as_slice() {
            [] => Ok((Some(head), None)),
            [(_, w)] => Ok((Some(head), Some(*w))),
            _ => Err(invalid(
                "available_node_types",
                format!(
                    "the local provider has one pool of machines, so one worker type; \
                     found {}",
                    workers
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
}

/// Adds "did you mean" to an unknown-field error when a known field is close:
/// "unknown field `idle_timout_minutes`, expected one of `cluster_name`, ... at line 9
/// column 1" gets "(did you mean `idle_timeout_minutes`?)".
fn with_suggestion(message: String) -> String {
    let Some(rest) = message.strip_prefix("unknown field `").or_else(|| {
        message
            .find(": unknown field `")
            .map(|i| &message[i + ": unknown field `".len()..])
    }) else {
        return message;
    };
    let Some((field, known)) = rest.split_once('`') else {
        return message;
    };
    let best = known
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (strsim::damerau_levenshtein(field, k), k))
        .min();
    match best {
        Some((distance, k)) if distance <= 3.max(field.len() / 4) => {
            format!("{message} (did you mean `{k}`?)")
        }
        _ => message,
    }
}

/// Whether a start command still starts Ray rather than rayish.
fn starts_ray(command: &str) -> bool {
    command
        .split(['&', ';', '|'])
        .any(|part| part.split_whitespace().take(2).eq(["ray", "start"]))
}

/// `~/x` → `$HOME/x`.
pub fn expand_home(path: &str) -> std::path::PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => std::path::PathBuf::from(path),
    }
}

/// The 1-based line where a dotted field's last key is written (0 if nowhere): good
/// enough to point a reader at it, since keys are unique within their section.
pub fn line_of(text: &str, field: &str) -> usize {
    let mut keys = field.split('.');
    let mut from = 0;
    let mut found = 0;
    let lines: Vec<&str> = text.lines().collect();
    for key in keys.by_ref() {
        let hit = lines.iter().enumerate().skip(from).find(|(_, l)| {
            let t = l.trim_start();
            !t.starts_with('#')
                && t.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with(':'))
        });
        match hit {
            Some((i, _)) => {
                found = i + 1;
                from = i + 1;
            }
            None => return found,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "cluster_name: t\nprovider:\n  type: local\n  head_ip: 10.0.0.1\n  worker_ips: [10.0.0.2, 10.0.0.3]\n";

    #[test]
    fn a_minimal_file_gets_ray_s_manual_defaults() {
        let (_, plan) = ClusterConfig::parse(MINIMAL, "c.yaml").expect("valid");
        assert_eq!(plan.head, "10.0.0.1");
        assert_eq!(plan.worker_pool, ["10.0.0.2", "10.0.0.3"]);
        assert_eq!((plan.min_workers, plan.max_workers), (2, 2));
        assert_eq!(
            plan.head_commands.start,
            DEFAULT_HEAD_START.map(String::from)
        );
        assert_eq!(
            plan.worker_commands.start,
            DEFAULT_WORKER_START.map(String::from)
        );
        assert_eq!(plan.idle_timeout, std::time::Duration::from_secs(300));
    }

    #[test]
    fn a_misspelled_field_is_named_with_its_line() {
        let text = format!("{MINIMAL}setup_comands: [ls]\n");
        let e = ClusterConfig::parse(&text, "c.yaml")
            .expect_err("unknown field")
            .to_string();
        assert!(e.contains("setup_comands") && e.contains("line 6"), "{e}");
        let text = MINIMAL.replace("worker_ips", "worker_ip");
        let e = ClusterConfig::parse(&text, "c.yaml")
            .expect_err("unknown field")
            .to_string();
        assert!(e.contains("worker_ip") && e.contains("line 5"), "{e}");
    }

    #[test]
    fn a_misspelled_field_gets_the_likely_one_suggested() {
        let text = format!("{MINIMAL}idle_timout_minutes: 5\n");
        let e = ClusterConfig::parse(&text, "c.yaml")
            .expect_err("unknown")
            .to_string();
        assert!(e.contains("(did you mean `idle_timeout_minutes`?)"), "{e}");
        let text = format!("{MINIMAL}colour: blue\n");
        let e = ClusterConfig::parse(&text, "c.yaml")
            .expect_err("unknown")
            .to_string();
        assert!(!e.contains("did you mean"), "{e}");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named_with_its_line() {
        let text = format!("{MINIMAL}max_workers: TYPICALLY_THE_NUMBER_OF_WORKER_IPS\n");
        let e = ClusterConfig::parse(&text, "c.yaml")
            .expect_err("bad type")
            .to_string();
        assert!(e.contains("max_workers") && e.contains("line 6"), "{e}");
    }

    #[test]
    fn impossible_settings_name_the_field_and_line() {
        let cases = [
            (MINIMAL.replace("local", "aws"), "provider.type", 3),
            (format!("{MINIMAL}max_workers: 5\n"), "max_workers", 6),
            (format!("{MINIMAL}max_workers: 1\nmin_workers: 2\n"), "min_workers", 7),
            (
                format!("{MINIMAL}worker_start_ray_commands:\n  - ray start --address=$RAY_HEAD_IP:6379\n"),
                "worker_start_ray_commands",
                6,
            ),
            (
                format!("{MINIMAL}docker:\n  image: rayproject/ray\n  use_podman: true\n"),
                "use_podman",
                8,
            ),
            (format!("{MINIMAL}head_node_type: nope\n"), "head_node_type", 6),
        ];
        for (text, field, line) in cases {
            match ClusterConfig::parse(&text, "c.yaml") {
                Err(ConfigError::Invalid {
                    field: f, line: l, ..
                }) => {
                    assert_eq!((f.as_str(), l), (field, line), "{text}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn node_types_set_resources_and_worker_counts() {
        let text = format!(
            "{MINIMAL}max_workers: 2\nhead_node_type: h\navailable_node_types:\n  h:\n    resources: {{CPU: 2}}\n    node_config: {{}}\n  w:\n    resources: {{CPU: 1, disk: 3}}\n    min_workers: 0\n    max_workers: 2\n    node_config: {{}}\n"
        );
        let (_, plan) = ClusterConfig::parse(&text, "c.yaml").expect("valid");
        assert_eq!((plan.min_workers, plan.max_workers), (0, 2));
        assert_eq!(plan.head_resources.get("CPU"), Some(&2.0));
        assert_eq!(plan.worker_resources.get("disk"), Some(&3.0));
    }

    #[test]
    fn empty_keys_read_as_empty_values() {
        let text = format!(
            "{MINIMAL}setup_commands:\nfile_mounts: {{\n#  \"/a\": \"/b\",\n}}\nhead_node: {{}}\n"
        );
        let (c, plan) = ClusterConfig::parse(&text, "c.yaml").expect("valid");
        assert!(c.setup_commands.is_empty() && plan.file_mounts.is_empty());
    }
}

#[cfg(test)]
mod container_tests {
    use super::*;

    #[test]
    fn the_docker_section_gives_each_role_its_image_and_options() {
        let text = "cluster_name: t\nprovider: {type: local, head_ip: h, worker_ips: [w]}\n\
            docker:\n  image: base:1\n  worker_image: work:2\n  container_name: c\n\
            \x20 pull_before_run: False\n  run_options: [--ulimit nofile=65536:65536]\n\
            \x20 head_run_options: [--cpus 2]\n";
        let (_, plan) = ClusterConfig::parse(text, "c.yaml").expect("valid");
        let head = plan.head_container.expect("head container");
        assert_eq!(
            (head.image.as_str(), head.name.as_str(), head.pull),
            ("base:1", "c", false)
        );
        assert_eq!(
            head.run_options,
            ["--ulimit", "nofile=65536:65536", "--cpus", "2"]
        );
        let worker = plan.worker_container.expect("worker container");
        assert_eq!(worker.image, "work:2");
        assert_eq!(worker.run_options, ["--ulimit", "nofile=65536:65536"]);
        let text = text.replace("  worker_image: work:2\n", "");
        let (_, plan) = ClusterConfig::parse(&text, "c.yaml").expect("valid");
        assert_eq!(plan.worker_container.expect("worker").image, "base:1");
        let off = "cluster_name: t\nprovider: {type: local, head_ip: h}\ndocker: {image: \"\"}\n";
        let (_, plan) = ClusterConfig::parse(off, "c.yaml").expect("valid");
        assert!(plan.head_container.is_none() && plan.worker_container.is_none());
    }
}
