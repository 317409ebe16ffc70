//! A set of metric samples gathered for one scrape, and its text exposition.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Label names and values of one sample.
pub type Labels = Vec<(String, String)>;

/// What a family's samples measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value now (may go down).
    Gauge,
    /// A total since the process started (never goes down); exposed with `_total`.
    Counter,
}

#[derive(Debug)]
struct FamilyData {
    name: String,
    help: String,
    kind: Kind,
    /// A process's own metric (`rayish::metrics`), not rayish's.
    user: bool,
    samples: Vec<(Labels, f64)>,
}

/// Samples of many families, each sample with the set's common labels added.
#[derive(Debug, Default)]
pub struct MetricSet {
    common: Labels,
    families: Vec<FamilyData>,
    /// Histograms kept by their owner (observed as things happen), shared here.
    histograms: Vec<(String, String, Histogram)>,
    /// Processes' own histograms, as counted buckets.
    user_histograms: Vec<CountedHistogram>,
}

/// A histogram given as its bucket counts (prometheus-client's histograms can only
/// be observed, not set), exposed by [`MetricSet::encode`] in the same format.
#[derive(Debug)]
struct CountedHistogram {
    name: String,
    help: String,
    labels: Labels,
    bounds: Vec<f64>,
    /// Per bucket, not cumulative; one more than `bounds` (the last is +Inf).
    counts: Vec<u64>,
    sum: f64,
}

impl MetricSet {
    /// An empty set whose every sample carries `common` labels too.
    pub fn new(common: &[(&str, &str)]) -> Self {
        MetricSet {
            common: to_labels(common),
            ..MetricSet::default()
        }
    }

    /// Adds a gauge sample.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(name, help, Kind::Gauge, false, labels, value);
    }

    /// Adds a counter sample (`name` without `_total`).
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(name, help, Kind::Counter, false, labels, value);
    }

    /// Adds a sample of a process's own metric, unless `name` is a family of
    /// rayish's (a user metric never shadows a system one).
    pub fn user_sample(
        &mut self,
        kind: Kind,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let system = self.families.iter().any(|f| f.name == name && !f.user);
        let histogram = self.user_histograms.iter().any(|h| h.name == name);
        if !system && !histogram {
            self.add(name, help, kind, true, labels, value);
        }
    }

    /// Adds a process's own histogram series, given as the count in each bucket (one
    /// more than `bounds`), unless `name` is a family of rayish's.
    pub fn user_histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) {
        let taken = self.families.iter().any(|f| f.name == name)
            || self.histograms.iter().any(|(n, _, _)| n == name);
        if taken || counts.len() != bounds.len() + 1 {
            return;
        }
        let mut all = self.common.clone();
        all.extend(to_labels(labels));
        // The same series from another table (a node's workers and the head's
        // drivers, in the head process) is one series: summed, if its bounds agree.
        let same = |h: &&mut CountedHistogram| h.name == name && h.labels == all;
        if let Some(h) = self.user_histograms.iter_mut().find(same) {
            if h.bounds == bounds {
                h.counts.iter_mut().zip(counts).for_each(|(c, n)| *c += n);
                h.sum += sum;
            }
            return;
        }
        self.user_histograms.push(CountedHistogram {
            name: name.to_string(),
            help: help.to_string(),
            labels: all,
            bounds: bounds.to_vec(),
            counts: counts.to_vec(),
            sum,
        });
    }

    /// Adds a histogram its owner keeps (a clone shares its buckets).
    pub fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) {
        self.histograms
            .push((name.to_string(), help.to_string(), histogram.clone()));
    }

    fn family(&mut self, name: &str, help: &str, kind: Kind, user: bool) -> &mut FamilyData {
        let at = match self.families.iter().position(|f| f.name == name) {
            Some(at) => at,
            None => {
                self.families.push(FamilyData {
                    name: name.to_string(),
                    help: help.to_string(),
                    kind,
                    user,
                    samples: Vec::new(),
                });
                self.families.len() - 1
            }
        };
        &mut self.families[at]
    }

    fn add(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        user: bool,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let mut all = self.common.clone();
        all.extend(to_labels(labels));
        self.family(name, help, kind, user)
            .samples
            .push((all, value));
    }

    /// The sum of the samples of `name` with exactly these labels (besides the
    /// common ones), as exposed; `None` if there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut want = self.common.clone();
        want.extend(to_labels(labels));
        want.sort();
        let family = self.families.iter().find(|f| f.name == name)?;
        let matching: Vec<f64> = family
            .samples
            .iter()
            .filter(|(l, _)| {
                let mut have = l.clone();
                have.sort();
                have == want
            })
            .map(|(_, v)| *v)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// The OpenMetrics text exposition (which Prometheus scrapes), with samples of
    /// the same family and labels summed.
    pub fn encode(&self) -> String {
        let mut registry = Registry::default();
        for f in &self.families {
            match f.kind {
                Kind::Gauge => {
                    let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
                    for (labels, v) in &f.samples {
                        family.get_or_create(labels).inc_by(*v);
                    }
                    registry.register(&f.name, f.help.trim_end_matches('.'), family);
                }
                Kind::Counter => {
                    let family = Family::<Labels, Counter<f64, AtomicU64>>::default();
                    for (labels, v) in &f.samples {
                        family.get_or_create(labels).inc_by(v.max(0.0));
                    }
                    registry.register(&f.name, f.help.trim_end_matches('.'), family);
                }
            }
        }
        if !self.histograms.is_empty() {
            let common = self
                .common
                .iter()
                .map(|(k, v)| (k.clone().into(), v.clone().into()));
            let with_common = registry.sub_registry_with_labels(common);
            for (name, help, h) in &self.histograms {
                with_common.register(name, help.trim_end_matches('.'), h.clone());
            }
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        if !self.user_histograms.is_empty() {
            let end = text.rfind("# EOF").unwrap_or(text.len());
            text.truncate(end);
            self.encode_user_histograms(&mut text);
            text.push_str("# EOF\n");
        }
        text
    }

    /// The counted histograms, in the exposition format prometheus-client gives its
    /// own: `_sum`, `_count`, then cumulative `_bucket{le}` lines.
    fn encode_user_histograms(&self, text: &mut String) {
        use std::fmt::Write;
        // Each family once, in the order first seen.
        let mut names: Vec<&str> = Vec::new();
        for h in &self.user_histograms {
            if !names.contains(&h.name.as_str()) {
                names.push(&h.name);
            }
        }
        for name in names {
            let mut series = self
                .user_histograms
                .iter()
                .filter(|h| h.name == name)
                .peekable();
            let Some(first) = series.peek() else { continue };
            let help = first.help.trim_end_matches('.');
            let _ = writeln!(text, "# HELP {name} {}.", escape_help(help));
            let _ = writeln!(text, "# TYPE {name} histogram");
            for h in series {
                let labels = |extra: Option<String>| {
                    let mut parts: Vec<String> = h
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{k}=\"{}\"", escape_value(v)))
                        .collect();
                    parts.extend(extra);
                    if parts.is_empty() {
                        String::new()
                    } else {
                        format!("{{{}}}", parts.join(","))
                    }
                };
                let count: u64 = h.counts.iter().sum();
                let _ = writeln!(text, "{name}_sum{} {:?}", labels(None), h.sum);
                let _ = writeln!(text, "{name}_count{} {count}", labels(None));
                let mut cumulative = 0;
                for (i, c) in h.counts.iter().enumerate() {
                    cumulative += c;
                    let le = h
                        .bounds
                        .get(i)
                        .map_or("+Inf".to_string(), |b| format!("{b:?}"));
                    let _ = writeln!(
                        text,
                        "{name}_bucket{} {cumulative}",
                        labels(Some(format!("le=\"{le}\"")))
                    );
                }
            }
        }
    }
}

/// A label value as the exposition format writes it.
fn escape_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A help text as the exposition format writes it.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn to_labels(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_exposed_with_their_type_labels_and_common_labels() {
        let mut m = MetricSet::new(&[("SessionName", "s1")]);
        m.gauge(
            "ray_tasks",
            "Tasks by state.",
            &[("State", "RUNNING"), ("Name", "f")],
            2.0,
        );
        m.gauge(
            "ray_tasks",
            "Tasks by state.",
            &[("State", "RUNNING"), ("Name", "f")],
            1.0,
        );
        m.counter("rayish_transfer_bytes", "Bytes moved.", &[], 10.0);
        let text = m.encode();
        assert!(text.contains("# TYPE ray_tasks gauge"), "{text}");
        assert!(
            text.contains(r#"ray_tasks{SessionName="s1",State="RUNNING",Name="f"} 3.0"#),
            "{text}"
        );
        assert!(
            text.contains("# TYPE rayish_transfer_bytes counter"),
            "{text}"
        );
        assert!(
            text.contains(r#"rayish_transfer_bytes_total{SessionName="s1"} 10.0"#),
            "{text}"
        );
        assert_eq!(
            m.value("ray_tasks", &[("Name", "f"), ("State", "RUNNING")]),
            Some(3.0)
        );
    }

    #[test]
    fn a_kept_histogram_is_exposed_with_the_common_labels() {
        let h = Histogram::new([0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        let mut m = MetricSet::new(&[("SessionName", "s1")]);
        m.histogram("rayish_task_run_seconds", "Run times.", &h);
        let text = m.encode();
        assert!(
            text.contains(r#"rayish_task_run_seconds_bucket{le="0.1",SessionName="s1"} 1"#)
                || text.contains(r#"rayish_task_run_seconds_bucket{SessionName="s1",le="0.1"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"rayish_task_run_seconds_count{SessionName="s1"} 2"#),
            "{text}"
        );
    }

    #[test]
    fn a_user_histogram_from_two_tables_is_one_family_and_one_series() {
        let mut m = MetricSet::new(&[]);
        m.user_histogram("ray_h", "d", &[("k", "a")], &[1.0], &[1, 2], 3.0);
        m.user_histogram("ray_other", "d", &[], &[1.0], &[1, 0], 0.5);
        m.user_histogram("ray_h", "d", &[("k", "a")], &[1.0], &[2, 0], 1.0);
        m.user_histogram("ray_h", "d", &[("k", "b")], &[1.0], &[0, 1], 2.0);
        // Other bounds for the same series, and a counter of the same name: left out.
        m.user_histogram("ray_h", "d", &[("k", "a")], &[2.0], &[5, 5], 9.0);
        m.user_sample(Kind::Counter, "ray_h", "d", &[], 1.0);
        let text = m.encode();
        assert_eq!(text.matches("# TYPE ray_h histogram").count(), 1, "{text}");
        assert!(text.contains(r#"ray_h_bucket{k="a",le="1.0"} 3"#), "{text}");
        assert!(text.contains(r#"ray_h_count{k="a"} 5"#), "{text}");
        assert!(text.contains(r#"ray_h_sum{k="a"} 4.0"#), "{text}");
        assert!(text.contains(r#"ray_h_count{k="b"} 1"#), "{text}");
        assert!(!text.contains("ray_h_total"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut m = MetricSet::new(&[]);
        m.gauge("g", "h", &[("Name", "a\"b\\c\nd")], 1.0);
        let text = m.encode();
        assert!(text.contains(r#"g{Name="a\"b\\c\nd"} 1.0"#), "{text}");
    }
}
