//! What a submitted job is, in Ray's shapes: the request (`JobSubmitRequest`), its
//! status (`JobStatus`) and its record (`JobInfo`), as Ray's Jobs API and its
//! `JobSubmissionClient` read and write them.

use crate::resources::ResourceSet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use thiserror::Error;

/// A job's status, in Ray's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum JobStatus {
    /// Submitted, waiting for room for its entrypoint.
    Pending,
    /// Its entrypoint runs.
    Running,
    /// Stopped by a user.
    Stopped,
    /// Its entrypoint exited with 0.
    Succeeded,
    /// Its entrypoint failed (or could not start).
    Failed,
}

impl JobStatus {
    /// Whether the job can change no more (Ray's `is_terminal`).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Stopped | Self::Succeeded | Self::Failed)
    }

    /// Ray's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Stopped => "STOPPED",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
        }
    }
}

/// Ray's `JobErrorType`, the ones rayish can report.
pub mod error_type {
    /// The working dir could not be unpacked, or the job directory made.
    pub const RUNTIME_ENV_SETUP_FAILURE: &str = "RUNTIME_ENV_SETUP_FAILURE";
    /// The entrypoint could not be started.
    pub const ENTRYPOINT_START_ERROR: &str = "JOB_ENTRYPOINT_COMMAND_START_ERROR";
    /// The entrypoint exited with a non-zero code or a signal.
    pub const ENTRYPOINT_ERROR: &str = "JOB_ENTRYPOINT_COMMAND_ERROR";
    /// Nothing supervises the entrypoint any more (the head that ran it went away).
    pub const SUPERVISOR_DIED: &str = "JOB_SUPERVISOR_ACTOR_DIED";
    /// The entrypoint's resources can never fit where entrypoints run.
    pub const UNSCHEDULABLE: &str = "JOB_SUPERVISOR_ACTOR_UNSCHEDULABLE";
}

/// A job's record: Ray's `JobInfo`, plus its submission id. This is what the job
/// table keeps on disk and what `GET /api/jobs/{id}` answers (with the driver's
/// fields added).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    /// The id it was submitted under.
    pub submission_id: String,
    /// Where it is.
    pub status: JobStatus,
    /// The shell command it runs.
    pub entrypoint: String,
    /// Its status in words.
    pub message: Option<String>,
    /// What kind of failure, if it failed (Ray's `JobErrorType`).
    pub error_type: Option<String>,
    /// When it was submitted, in ms since the Unix epoch (Ray's `start_time`).
    pub start_time: Option<u64>,
    /// When it reached a terminal status.
    pub end_time: Option<u64>,
    /// The submitter's labels.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Its runtime environment (`working_dir`, `env_vars`).
    pub runtime_env: Option<Map<String, Value>>,
    /// CPUs its entrypoint holds while it runs.
    pub entrypoint_num_cpus: Option<f64>,
    /// GPUs its entrypoint holds.
    pub entrypoint_num_gpus: Option<f64>,
    /// Memory (bytes) its entrypoint holds.
    pub entrypoint_memory: Option<u64>,
    /// Other resources its entrypoint holds.
    pub entrypoint_resources: Option<BTreeMap<String, f64>>,
    /// The dashboard address of the node its entrypoint runs on.
    pub driver_agent_http_address: Option<String>,
    /// The node its entrypoint runs on.
    pub driver_node_id: Option<String>,
    /// Its entrypoint's exit code, once it exited.
    pub driver_exit_code: Option<i32>,
    /// The entrypoint's process (group) id while it runs: how a stop finds it, and
    /// how a restarted head takes it back.
    #[serde(default)]
    pub entrypoint_pid: Option<u32>,
}

impl JobInfo {
    /// What its entrypoint holds while it runs.
    pub fn entrypoint_demand(&self) -> ResourceSet {
        let mut demand = ResourceSet::new();
        if let Some(c) = self.entrypoint_num_cpus {
            demand.set("CPU", c);
        }
        if let Some(g) = self.entrypoint_num_gpus {
            demand.set("GPU", g);
        }
        if let Some(m) = self.entrypoint_memory {
            demand.set("memory", m as f64);
        }
        for (k, v) in self.entrypoint_resources.iter().flatten() {
            demand.set(k, *v);
        }
        demand
    }

    /// The `working_dir` of its runtime environment: a package URI.
    pub fn working_dir(&self) -> Option<&str> {
        self.runtime_env.as_ref()?.get("working_dir")?.as_str()
    }

    /// The environment variables its runtime environment sets.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let Some(Value::Object(vars)) = self.runtime_env.as_ref().and_then(|r| r.get("env_vars"))
        else {
            return Vec::new();
        };
        vars.iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect()
    }
}

/// Why a submission is refused (a 400).
#[derive(Debug, Error, PartialEq)]
#[error("{0}")]
pub struct InvalidRequest(pub String);

/// Ray's `JobSubmitRequest`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SubmitRequest {
    /// The shell command to run.
    pub entrypoint: String,
    /// The id to submit under (one is made if `None`).
    pub submission_id: Option<String>,
    /// `working_dir` and `env_vars`.
    pub runtime_env: Option<Map<String, Value>>,
    /// Labels.
    pub metadata: Option<BTreeMap<String, String>>,
    /// See [`JobInfo::entrypoint_num_cpus`].
    pub entrypoint_num_cpus: Option<f64>,
    /// See [`JobInfo::entrypoint_num_gpus`].
    pub entrypoint_num_gpus: Option<f64>,
    /// See [`JobInfo::entrypoint_memory`].
    pub entrypoint_memory: Option<u64>,
    /// See [`JobInfo::entrypoint_resources`].
    pub entrypoint_resources: Option<BTreeMap<String, f64>>,
}

/// The runtime environment fields rayish honours; `config` (setup timeouts) is
/// accepted and has nothing to do here.
const RUNTIME_ENV_FIELDS: [&str; 3] = ["working_dir", "env_vars", "config"];

/// The `working_dir` forms rayish takes: a package uploaded to this cluster.
pub const PACKAGE_URI_PREFIX: &str = "gcs://";

/// The stored package a `working_dir` URI names (`gcs://NAME` → `NAME`).
pub fn package_name(uri: &str) -> &str {
    uri.strip_prefix(PACKAGE_URI_PREFIX).unwrap_or(uri)
}

impl SubmitRequest {
    /// Parses a request body as Ray's server does: fields set to `null` are dropped
    /// (newer clients send optional fields a server may not know), any other field
    /// Ray's `JobSubmitRequest` does not have is refused, and each field must have
    /// its type.
    pub fn parse(body: &[u8]) -> Result<Self, InvalidRequest> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| InvalidRequest(format!("the request body is not JSON: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(InvalidRequest(
                "the request body must be a JSON object".into(),
            ));
        };
        let mut req = SubmitRequest {
            entrypoint: String::new(),
            submission_id: None,
            runtime_env: None,
            metadata: None,
            entrypoint_num_cpus: None,
            entrypoint_num_gpus: None,
            entrypoint_memory: None,
            entrypoint_resources: None,
        };
        let mut entrypoint = None;
        let mut job_id = None;
        for (key, value) in fields {
            if value.is_null() {
                continue;
            }
            match key.as_str() {
                "entrypoint" => entrypoint = Some(string(&key, value)?),
                "submission_id" => req.submission_id = Some(string(&key, value)?),
                // Ray's older name for the submission id.
                "job_id" => job_id = Some(string(&key, value)?),
                "runtime_env" => req.runtime_env = Some(runtime_env(value)?),
                "metadata" => req.metadata = Some(string_map(&key, value)?),
                "entrypoint_num_cpus" => req.entrypoint_num_cpus = Some(amount(&key, &value)?),
                "entrypoint_num_gpus" => req.entrypoint_num_gpus = Some(amount(&key, &value)?),
                "entrypoint_memory" => {
                    req.entrypoint_memory = Some(value.as_u64().ok_or_else(|| {
                        InvalidRequest(format!(
                            "entrypoint_memory must be a non-negative integer, got {value}"
                        ))
                    })?)
                }
                "entrypoint_resources" => {
                    let Value::Object(map) = value else {
                        return Err(InvalidRequest(format!(
                            "entrypoint_resources must be a dict, got {value}"
                        )));
                    };
                    let mut out = BTreeMap::new();
                    for (k, v) in map {
                        if matches!(k.as_str(), "CPU" | "GPU" | "memory") {
                            return Err(InvalidRequest(format!(
                                "entrypoint_resources cannot name {k:?}: use entrypoint_num_cpus, \
                                 entrypoint_num_gpus or entrypoint_memory"
                            )));
                        }
                        let a = amount(&format!("entrypoint_resources[{k:?}]"), &v)?;
                        out.insert(k, a);
                    }
                    req.entrypoint_resources = Some(out);
                }
                "entrypoint_label_selector" => {
                    // Node labels come with placement (issue 24); entrypoints run on
                    // the head node, so a selector cannot be honoured yet.
                    return Err(InvalidRequest(
                        "entrypoint_label_selector is not supported: rayish runs entrypoints \
                         on the head node"
                            .into(),
                    ));
                }
                other => {
                    return Err(InvalidRequest(format!(
                        "unexpected field {other:?} in the job submission (Ray's \
                         JobSubmitRequest has entrypoint, submission_id, runtime_env, metadata, \
                         entrypoint_num_cpus, entrypoint_num_gpus, entrypoint_memory, \
                         entrypoint_resources)"
                    )))
                }
            }
        }
        req.entrypoint = entrypoint
            .ok_or_else(|| InvalidRequest("the job submission has no entrypoint".into()))?;
        if req.entrypoint.trim().is_empty() {
            return Err(InvalidRequest("the entrypoint is empty".into()));
        }
        if req.submission_id.is_none() {
            req.submission_id = job_id;
        }
        if let Some(id) = &req.submission_id {
            check_submission_id(id)?;
        }
        Ok(req)
    }

    /// The record of this request submitted as `submission_id` at `now_ms`.
    pub fn into_info(self, submission_id: String, now_ms: u64) -> JobInfo {
        JobInfo {
            submission_id,
            status: JobStatus::Pending,
            entrypoint: self.entrypoint,
            message: Some("Job has not started yet.".into()),
            error_type: None,
            start_time: Some(now_ms),
            end_time: None,
            metadata: self.metadata,
            runtime_env: self.runtime_env,
            entrypoint_num_cpus: self.entrypoint_num_cpus,
            entrypoint_num_gpus: self.entrypoint_num_gpus,
            entrypoint_memory: self.entrypoint_memory,
            entrypoint_resources: self.entrypoint_resources,
            driver_agent_http_address: None,
            driver_node_id: None,
            driver_exit_code: None,
            entrypoint_pid: None,
        }
    }
}

/// A submission id names a directory and a log file: letters, digits, `_`, `-` and
/// `.`, not starting with a dot, at most 128 characters.
pub fn check_submission_id(id: &str) -> Result<(), InvalidRequest> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(InvalidRequest(format!(
            "submission_id {id:?} must be 1 to 128 letters, digits, '_', '-' or '.', not \
             starting with '.'"
        )))
    }
}

fn string(key: &str, value: Value) -> Result<String, InvalidRequest> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(InvalidRequest(format!(
            "{key} must be a string, got {other}"
        ))),
    }
}

fn amount(key: &str, value: &Value) -> Result<f64, InvalidRequest> {
    match value.as_f64() {
        Some(a) if a.is_finite() && a >= 0.0 => Ok(a),
        _ => Err(InvalidRequest(format!(
            "{key} must be a non-negative number, got {value}"
        ))),
    }
}

fn string_map(key: &str, value: Value) -> Result<BTreeMap<String, String>, InvalidRequest> {
    let Value::Object(map) = value else {
        return Err(InvalidRequest(format!("{key} must be a dict, got {value}")));
    };
    map.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            other => Err(InvalidRequest(format!(
                "{key} values must be strings, got {other} for {k:?}"
            ))),
        })
        .collect()
}

fn runtime_env(value: Value) -> Result<Map<String, Value>, InvalidRequest> {
    let Value::Object(env) = value else {
        return Err(InvalidRequest(format!(
            "runtime_env must be a dict, got {value}"
        )));
    };
    for (k, v) in &env {
        if !RUNTIME_ENV_FIELDS.contains(&k.as_str()) {
            return Err(InvalidRequest(format!(
                "runtime_env field {k:?} is not supported by rayish (it runs Rust binaries; \
                 it takes working_dir and env_vars)"
            )));
        }
        match (k.as_str(), v) {
            ("working_dir", Value::String(uri)) => {
                let name = uri.strip_prefix(PACKAGE_URI_PREFIX).ok_or_else(|| {
                    InvalidRequest(format!(
                        "working_dir {uri:?} must be a package uploaded to this cluster \
                         ({PACKAGE_URI_PREFIX}_ray_pkg_<hash>.zip): `ray job submit` and \
                         `rayish job submit` upload a local directory for you"
                    ))
                })?;
                super::packages::check_package_name(name).map_err(InvalidRequest::from)?;
            }
            ("working_dir", other) => {
                return Err(InvalidRequest(format!(
                    "runtime_env.working_dir must be a string, got {other}"
                )))
            }
            ("env_vars", v) => {
                string_map("runtime_env.env_vars", v.clone())?;
            }
            _ => {}
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<SubmitRequest, InvalidRequest> {
        SubmitRequest::parse(s.as_bytes())
    }

    #[test]
    fn a_full_request_parses() {
        let r = parse(
            r#"{"entrypoint": "./driver", "submission_id": "s1", "runtime_env":
               {"working_dir": "gcs://_ray_pkg_0123456789abcdef.zip", "env_vars": {"A": "1"}},
               "metadata": {"k": "v"}, "entrypoint_num_cpus": 1, "entrypoint_num_gpus": 0.5,
               "entrypoint_memory": 1000, "entrypoint_resources": {"disk": 2}}"#,
        )
        .expect("valid");
        assert_eq!(r.submission_id.as_deref(), Some("s1"));
        let info = r.into_info("s1".into(), 5);
        assert_eq!(
            info.working_dir(),
            Some("gcs://_ray_pkg_0123456789abcdef.zip")
        );
        assert_eq!(info.env_vars(), vec![("A".to_string(), "1".to_string())]);
        let d = info.entrypoint_demand();
        assert_eq!(
            (d.get("CPU"), d.get("GPU"), d.get("memory"), d.get("disk")),
            (1.0, 0.5, 1000.0, 2.0)
        );
    }

    #[test]
    fn nulls_are_dropped_and_unknown_fields_refused_as_ray_does() {
        assert!(parse(
            r#"{"entrypoint": "x", "submission_id": null, "entrypoint_label_selector": null}"#
        )
        .is_ok());
        let e = parse(r#"{"entrypoint": "x", "colour": "red"}"#).unwrap_err();
        assert!(e.0.contains("colour"), "{e}");
        assert!(parse(r#"{"entrypoint": 3}"#).is_err());
        assert!(parse(r#"{"submission_id": "a"}"#).is_err());
        assert!(parse(r#"[1]"#).is_err());
        assert!(parse("{not json").is_err());
        assert!(parse(r#"{"entrypoint": "x", "entrypoint_num_cpus": -1}"#).is_err());
        assert!(parse(r#"{"entrypoint": "x", "metadata": {"a": 1}}"#).is_err());
        assert!(parse(r#"{"entrypoint": "x", "runtime_env": {"pip": ["numpy"]}}"#).is_err());
        assert!(parse(r#"{"entrypoint": "x", "runtime_env": {"working_dir": "/etc"}}"#).is_err());
        assert!(
            parse(r#"{"entrypoint": "x", "runtime_env": {"working_dir": "gcs://../x.zip"}}"#)
                .is_err()
        );
    }

    #[test]
    fn submission_ids_are_safe_file_names() {
        for bad in ["", "../x", "a/b", ".hidden", "a b", &"x".repeat(129)] {
            assert!(check_submission_id(bad).is_err(), "{bad:?}");
        }
        for good in ["raysubmit_abc123", "job-1.2", "A_b"] {
            assert!(check_submission_id(good).is_ok(), "{good:?}");
        }
        // Ray's old `job_id` field names the submission when `submission_id` does not.
        let r = parse(r#"{"entrypoint": "x", "job_id": "old"}"#).expect("valid");
        assert_eq!(r.submission_id.as_deref(), Some("old"));
    }
}
