//! Prometheus metrics in Ray's names and labels, so that Ray's Grafana dashboards
//! work unchanged against a rayish cluster.
//!
//! Every node serves `GET /metrics` (text exposition) on its `--metrics-export-port`;
//! the head process adds the cluster-wide counts (tasks, actors) to its node's, and
//! writes the targets of every live node to [`SERVICE_DISCOVERY_FILE`] in the session
//! directory, in Prometheus' file service discovery format, as Ray does.
//!
//! Metrics are gathered when scraped, not kept up to date as things happen: a scrape
//! every few seconds costs one snapshot of the tables, and the task path does no
//! metrics work beyond the head's per-function end counts.
//!
//! The endpoint answers only requests with the cluster token as a bearer token
//! (`Authorization: Bearer <token>`, Prometheus' `authorization` scrape setting):
//! function names and the cluster's shape are not for anyone on the network.

mod host;
mod set;
mod user;

pub use host::HostSampler;
pub use set::{Kind, Labels, MetricSet};
pub use user::{Refused, UserMetricTable, UserSeries, MAX_SERIES};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

/// The file service discovery list's name in the session directory (Ray's
/// `prom_metrics_service_discovery.json`).
pub const SERVICE_DISCOVERY_FILE: &str = "prom_metrics_service_discovery.json";

/// Gathers the samples of one scrape.
pub type Gather = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = MetricSet> + Send>> + Send + Sync>;

/// Who may scrape: the holder of the cluster token.
#[derive(Clone)]
pub struct BearerToken {
    digest: [u8; 32],
}

impl BearerToken {
    /// Accepts requests bearing `token`.
    pub fn new(token: &str) -> Self {
        BearerToken {
            digest: digest(token.as_bytes()),
        }
    }

    /// Whether `headers` bear the token. Digests are compared, so the time taken
    /// says nothing about the token.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| self.admits_token(t))
    }

    /// Whether `token` is the token (digests compared, as in [`Self::admits`]).
    pub fn admits_token(&self, token: &str) -> bool {
        digest(token.trim().as_bytes()) == self.digest
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).into()
}

#[derive(Clone)]
struct Endpoint {
    auth: BearerToken,
    gather: Gather,
}

/// The content type of OpenMetrics text, which Prometheus scrapes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics(State(ep): State<Endpoint>, headers: HeaderMap) -> Response {
    if !ep.auth.admits(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "the cluster token is required: Authorization: Bearer <token>\n",
        )
            .into_response();
    }
    let set = (ep.gather)().await;
    ([(header::CONTENT_TYPE, OPENMETRICS)], set.encode()).into_response()
}

/// Binds the metrics endpoint's socket (port 0: any free port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub fn serve(listener: tokio::net::TcpListener, auth: BearerToken, gather: Gather) {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .with_state(Endpoint { auth, gather });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("the metrics endpoint stopped: {e}");
        }
    });
}

/// Writes `targets` to `path` in Prometheus' file service discovery format,
/// atomically (a scraper never reads half a file), readable by its owner only.
pub fn write_service_discovery(path: &Path, targets: &[SocketAddr]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let list = serde_json::json!([{
        "labels": { "job": "ray" },
        "targets": targets.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
    }]);
    let staged = path.with_extension("json.new");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staged)?;
    file.write_all(list.to_string().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&staged, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_cluster_token_is_admitted() {
        let auth = BearerToken::new("s3cret");
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().expect("header"));
            h
        };
        assert!(auth.admits(&with("Bearer s3cret")));
        assert!(!auth.admits(&with("Bearer s3cre")));
        assert!(!auth.admits(&with("Basic s3cret")));
        assert!(!auth.admits(&HeaderMap::new()));
    }

    #[test]
    fn the_targets_file_is_prometheus_file_service_discovery() {
        let dir = std::env::temp_dir().join(format!("rayish-sd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(SERVICE_DISCOVERY_FILE);
        let targets: Vec<SocketAddr> = vec![
            "127.0.0.2:8080".parse().expect("addr"),
            "127.0.0.3:8081".parse().expect("addr"),
        ];
        write_service_discovery(&path, &targets).expect("write");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        assert_eq!(v[0]["targets"][1], "127.0.0.3:8081");
        assert_eq!(v[0]["labels"]["job"], "ray");
        std::fs::remove_dir_all(&dir).ok();
    }
}
