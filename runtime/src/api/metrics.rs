//! A process's own metrics, as Ray's `ray.util.metrics`: [`Counter`], [`Gauge`] and
//! [`Histogram`], each with declared tag keys, recorded in drivers and in tasks and
//! actors alike.
//!
//! Values are kept in the process and reported, as Ray's metrics agents collect them
//! per node: a worker sends its values to its node with the end of each task that
//! recorded any (over their local socket, so nothing is lost when the job ends and
//! the worker with it), a driver sends them to the head every [`REPORT_EVERY`] and
//! once more as it exits. Every node exports them on its metrics endpoint with Ray's
//! `ray_` prefix (a counter also gets `_total`), so a counter `faces_images` is
//! scraped as `ray_faces_images_total`. Counters and histograms are summed over the
//! processes that record them and outlive them; a gauge shows the latest value a
//! process set. A name a rayish metric has is not exported.
//!
//! ```
//! use rayish::metrics::Counter;
//!
//! let done = Counter::new("images_done", "Images finished, by outcome.", &["status"]);
//! done.inc(1.0, &[("status", "ok")]).expect("declared tags");
//! assert!(done.inc(1.0, &[("colour", "red")]).is_err());
//! ```

use rayish_core::protocol::{UserMetric, UserMetricKind};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Set in worker processes: they report to their node, at the end of each task.
static IN_WORKER: AtomicBool = AtomicBool::new(false);
/// Some value changed since the last report.
static RECORDED: AtomicBool = AtomicBool::new(false);

/// How often a process reports its metrics.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);

/// Why a metric was not created or recorded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MetricError {
    /// Not a Prometheus name: letters, digits and `_`, not starting with a digit.
    #[error("{0:?} is not a valid metric or tag name (letters, digits, _; no leading digit)")]
    BadName(String),
    /// The tags given are not the ones the metric declared.
    #[error("metric {metric} declares tags {declared:?}; got {given:?}")]
    WrongTags {
        /// The metric.
        metric: String,
        /// Its declared tag keys.
        declared: Vec<String>,
        /// The keys given.
        given: Vec<String>,
    },
    /// Histogram bucket bounds must be finite and increasing.
    #[error("metric {metric}: bucket bounds {bounds:?} are not finite and increasing")]
    BadBounds {
        /// The metric.
        metric: String,
        /// The bounds given.
        bounds: Vec<f64>,
    },
    /// A counter only goes up, by a finite amount; a gauge or histogram takes finite
    /// values.
    #[error("metric {metric}: {value} is not a valid amount")]
    BadValue {
        /// The metric.
        metric: String,
        /// The amount.
        value: f64,
    },
}

type Tags = Vec<(String, String)>;

/// One tag set's value.
#[derive(Clone, Default)]
struct Series {
    /// A counter's total, a gauge's last value, a histogram's sum.
    value: f64,
    /// A histogram's count per bucket (one more than its bounds); empty otherwise.
    counts: Vec<u64>,
}

struct Definition {
    name: String,
    description: String,
    kind: UserMetricKind,
    tag_keys: Vec<String>,
    /// A histogram's bucket upper bounds.
    bounds: Vec<f64>,
    series: Mutex<BTreeMap<Tags, Series>>,
}

impl Definition {
    fn new(
        name: &str,
        description: &str,
        kind: UserMetricKind,
        tag_keys: &[&str],
        bounds: &[f64],
    ) -> Arc<Definition> {
        let def = Arc::new(Definition {
            name: name.to_string(),
            description: description.to_string(),
            kind,
            tag_keys: tag_keys.iter().map(|k| k.to_string()).collect(),
            bounds: bounds.to_vec(),
            series: Mutex::new(BTreeMap::new()),
        });
        let valid = std::iter::once(name)
            .chain(tag_keys.iter().copied())
            .all(is_prometheus_name)
            && def.bounds_ok();
        // An invalid metric records nothing and is never reported; its calls say why.
        if valid {
            registry()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arc::clone(&def));
            start_reporter();
        }
        def
    }

    fn bounds_ok(&self) -> bool {
        self.kind != UserMetricKind::Histogram
            || (!self.bounds.is_empty()
                && self.bounds.iter().all(|b| b.is_finite())
                && self.bounds.windows(2).all(|w| w[0] < w[1]))
    }

    fn record(
        &self,
        tags: &[(&str, &str)],
        apply: impl FnOnce(&mut Series),
    ) -> Result<(), MetricError> {
        if let Some(bad) = std::iter::once(self.name.as_str())
            .chain(self.tag_keys.iter().map(String::as_str))
            .find(|n| !is_prometheus_name(n))
        {
            return Err(MetricError::BadName(bad.to_string()));
        }
        if !self.bounds_ok() {
            return Err(MetricError::BadBounds {
                metric: self.name.clone(),
                bounds: self.bounds.clone(),
            });
        }
        let mut given: Tags = tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        given.sort();
        let mut keys: Vec<&str> = given.iter().map(|(k, _)| k.as_str()).collect();
        keys.dedup();
        let mut declared: Vec<&str> = self.tag_keys.iter().map(String::as_str).collect();
        declared.sort();
        if keys != declared || keys.len() != given.len() {
            return Err(MetricError::WrongTags {
                metric: self.name.clone(),
                declared: self.tag_keys.clone(),
                given: tags.iter().map(|(k, _)| k.to_string()).collect(),
            });
        }
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let buckets = if self.kind == UserMetricKind::Histogram {
            self.bounds.len() + 1
        } else {
            0
        };
        apply(series.entry(given).or_insert_with(|| Series {
            value: 0.0,
            counts: vec![0; buckets],
        }));
        RECORDED.store(true, Ordering::Release);
        Ok(())
    }

    fn snapshot(&self) -> UserMetric {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let histogram = self.kind == UserMetricKind::Histogram;
        UserMetric {
            name: self.name.clone(),
            description: self.description.clone(),
            kind: self.kind,
            series: if histogram {
                Vec::new()
            } else {
                series.iter().map(|(t, s)| (t.clone(), s.value)).collect()
            },
            boundaries: if histogram {
                self.bounds.clone()
            } else {
                Vec::new()
            },
            histograms: if histogram {
                series
                    .iter()
                    .map(|(t, s)| (t.clone(), s.counts.clone(), s.value))
                    .collect()
            } else {
                Vec::new()
            },
        }
    }
}

fn is_prometheus_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 200
}

/// A value that only goes up (Ray's `Counter`).
#[derive(Clone)]
pub struct Counter(Arc<Definition>);

impl Counter {
    /// A counter `name` with these tag keys; every `inc` gives a value for each.
    pub fn new(name: &str, description: &str, tag_keys: &[&str]) -> Counter {
        Counter(Definition::new(
            name,
            description,
            UserMetricKind::Counter,
            tag_keys,
            &[],
        ))
    }

    /// Adds `value` (finite, not negative) to the series of `tags`.
    pub fn inc(&self, value: f64, tags: &[(&str, &str)]) -> Result<(), MetricError> {
        if !(value.is_finite() && value >= 0.0) {
            return Err(MetricError::BadValue {
                metric: self.0.name.clone(),
                value,
            });
        }
        self.0.record(tags, |s| s.value += value)
    }
}

/// A value that goes up and down (Ray's `Gauge`).
#[derive(Clone)]
pub struct Gauge(Arc<Definition>);

impl Gauge {
    /// A gauge `name` with these tag keys; every `set` gives a value for each.
    pub fn new(name: &str, description: &str, tag_keys: &[&str]) -> Gauge {
        Gauge(Definition::new(
            name,
            description,
            UserMetricKind::Gauge,
            tag_keys,
            &[],
        ))
    }

    /// Sets the series of `tags` to `value` (finite).
    pub fn set(&self, value: f64, tags: &[(&str, &str)]) -> Result<(), MetricError> {
        if !value.is_finite() {
            return Err(MetricError::BadValue {
                metric: self.0.name.clone(),
                value,
            });
        }
        self.0.record(tags, |s| s.value = value)
    }
}

/// Observations counted in buckets (Ray's `Histogram`): each bucket counts the
/// values up to its bound, the last one everything above.
#[derive(Clone)]
pub struct Histogram(Arc<Definition>);

impl Histogram {
    /// A histogram `name` with these bucket upper bounds (finite, increasing) and tag
    /// keys; every `observe` gives a value for each.
    pub fn new(name: &str, description: &str, boundaries: &[f64], tag_keys: &[&str]) -> Histogram {
        Histogram(Definition::new(
            name,
            description,
            UserMetricKind::Histogram,
            tag_keys,
            boundaries,
        ))
    }

    /// Counts `value` (finite) in its bucket of the series of `tags`.
    pub fn observe(&self, value: f64, tags: &[(&str, &str)]) -> Result<(), MetricError> {
        if !value.is_finite() {
            return Err(MetricError::BadValue {
                metric: self.0.name.clone(),
                value,
            });
        }
        let bucket = self.0.bounds.iter().take_while(|b| value > **b).count();
        self.0.record(tags, |s| {
            s.value += value;
            if let Some(c) = s.counts.get_mut(bucket) {
                *c += 1;
            }
        })
    }
}

fn registry() -> &'static Mutex<Vec<Arc<Definition>>> {
    static REGISTRY: OnceLock<Mutex<Vec<Arc<Definition>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Every valid metric of this process, with its values now.
fn snapshot() -> Vec<UserMetric> {
    let defs = registry().lock().unwrap_or_else(|p| p.into_inner()).clone();
    defs.iter().map(|d| d.snapshot()).collect()
}

/// Reports a driver's metrics to the head now, if it has any and has joined a
/// cluster. Called every [`REPORT_EVERY`] and when a driver exits; workers report
/// to their node instead ([`take_if_recorded`]).
pub(crate) fn report() {
    if IN_WORKER.load(Ordering::Acquire) {
        return;
    }
    let metrics = snapshot();
    if metrics.is_empty() {
        return;
    }
    if let Some(cw) = super::context::try_current() {
        cw.report_metrics(metrics);
    }
}

/// Marks this process as a worker (see [`report`]).
pub(crate) fn running_in_worker() {
    IN_WORKER.store(true, Ordering::Release);
}

/// This process's metrics, if any value changed since the last call.
pub(crate) fn take_if_recorded() -> Option<Vec<UserMetric>> {
    RECORDED
        .swap(false, Ordering::AcqRel)
        .then(snapshot)
        .filter(|m| !m.is_empty())
}

/// Starts the thread that reports every [`REPORT_EVERY`], once per process.
fn start_reporter() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("rayish-metrics".into())
            .spawn(|| loop {
                std::thread::sleep(REPORT_EVERY);
                report();
            });
        if let Err(e) = spawned {
            tracing::warn!("metrics will not be reported: no thread for it: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_must_be_the_declared_ones() {
        let c = Counter::new("t_counter", "d", &["a", "b"]);
        c.inc(1.0, &[("b", "2"), ("a", "1")]).expect("any order");
        c.inc(2.0, &[("a", "1"), ("b", "2")]).expect("same series");
        assert!(matches!(
            c.inc(1.0, &[("a", "1")]),
            Err(MetricError::WrongTags { .. })
        ));
        assert!(matches!(
            c.inc(1.0, &[("a", "1"), ("a", "2")]),
            Err(MetricError::WrongTags { .. })
        ));
        assert!(matches!(
            c.inc(-1.0, &[("a", "1"), ("b", "2")]),
            Err(MetricError::BadValue { .. })
        ));
        let snap = c.0.snapshot();
        assert_eq!(snap.series.len(), 1);
        assert_eq!(snap.series[0].1, 3.0);

        let h = Histogram::new("t_hist", "d", &[1.0, 10.0], &["k"]);
        for v in [0.5, 1.0, 5.0, 50.0] {
            h.observe(v, &[("k", "x")]).expect("observe");
        }
        let snap = h.0.snapshot();
        assert_eq!(snap.boundaries, vec![1.0, 10.0]);
        assert_eq!(
            snap.histograms[0].1,
            vec![2, 1, 1],
            "a value equal to a bound is in its bucket"
        );
        assert_eq!(snap.histograms[0].2, 56.5);
        let unordered = Histogram::new("t_hist_bad", "d", &[10.0, 1.0], &[]);
        assert!(matches!(
            unordered.observe(1.0, &[]),
            Err(MetricError::BadBounds { .. })
        ));

        let g = Gauge::new("t_gauge", "d", &[]);
        g.set(5.0, &[]).expect("set");
        g.set(2.0, &[]).expect("set");
        assert_eq!(g.0.snapshot().series[0].1, 2.0);

        let bad = Counter::new("bad-name", "d", &[]);
        assert!(matches!(bad.inc(1.0, &[]), Err(MetricError::BadName(_))));
        assert!(snapshot().iter().all(|m| m.name != "bad-name"));
    }
}
