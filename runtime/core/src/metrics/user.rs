//! The user metric table: the metrics processes keep of their own
//! (`rayish::metrics`), as they last reported them, for a scrape. A node keeps its
//! workers' (reported with each task's end, over their socket), the head its
//! drivers' (over their control stream), as Ray's per-node metrics agents do.
//!
//! Invariant: a counter's exported value never goes down while the cluster lives: it
//! is the sum of the live processes' latest totals and of the final totals of the
//! processes that ended. A gauge is its latest report, from whichever process. Every
//! name and tag key is a valid Prometheus name, and the table holds at most
//! [`MAX_SERIES`] series: a report that breaks either rule is refused whole.

use super::{Kind, MetricSet};
use crate::protocol::{UserMetric, UserMetricKind};
use rustc_hash::FxHashMap as HashMap;
use std::hash::Hash;

/// Series the table holds at most (live, ended and gauges together).
pub const MAX_SERIES: usize = 20_000;

type SeriesKey = (String, Vec<(String, String)>);

/// Why a report was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// A name or tag key Prometheus would not take.
    BadName(String),
    /// A value that is not a finite number (or a counter below zero), or histogram
    /// buckets that do not fit their bounds.
    BadValue(String),
    /// The table would hold more than [`MAX_SERIES`].
    TooMany,
}

/// A series that only grows: a counter's total, or a histogram's sum and buckets.
#[derive(Debug, Clone, PartialEq)]
struct Cumulative {
    description: String,
    /// The counter's total; the histogram's sum of observations.
    total: f64,
    /// A histogram's bucket upper bounds and the count in each bucket (one more
    /// than the bounds: the last is +Inf).
    buckets: Option<(Vec<f64>, Vec<u64>)>,
}

impl Cumulative {
    /// Adds `other` in; a histogram with other bounds is left out.
    fn add(&mut self, other: &Cumulative) {
        match (&mut self.buckets, &other.buckets) {
            (None, None) => self.total += other.total,
            (Some((bounds, counts)), Some((other_bounds, other_counts)))
                if bounds == other_bounds =>
            {
                self.total += other.total;
                counts
                    .iter_mut()
                    .zip(other_counts)
                    .for_each(|(c, o)| *c += o);
            }
            _ => {}
        }
    }
}

/// Every process's own metrics, by process (`P`: the head's peer id, a node's
/// worker pid).
pub struct UserMetricTable<P> {
    /// Each live process's latest counters and histograms.
    live: HashMap<P, HashMap<SeriesKey, Cumulative>>,
    /// The final counters and histograms of processes that ended, summed.
    ended: HashMap<SeriesKey, Cumulative>,
    /// Each gauge's latest value.
    gauges: HashMap<SeriesKey, (String, f64)>,
}

impl<P> Default for UserMetricTable<P> {
    fn default() -> Self {
        UserMetricTable {
            live: HashMap::default(),
            ended: HashMap::default(),
            gauges: HashMap::default(),
        }
    }
}

impl<P: Hash + Eq> UserMetricTable<P> {
    fn series(&self) -> usize {
        self.live.values().map(HashMap::len).sum::<usize>() + self.ended.len() + self.gauges.len()
    }

    /// `peer`'s report replaces its last one.
    pub fn report(&mut self, peer: P, metrics: Vec<UserMetric>) -> Result<(), Refused> {
        for m in &metrics {
            check(m)?;
        }
        let mut cumulative = HashMap::default();
        let mut gauges = Vec::new();
        for m in metrics {
            let key = |mut tags: Vec<(String, String)>| {
                tags.sort();
                (m.name.clone(), tags)
            };
            for (tags, value) in m.series {
                match m.kind {
                    UserMetricKind::Counter => {
                        let c = Cumulative {
                            description: m.description.clone(),
                            total: value,
                            buckets: None,
                        };
                        cumulative.insert(key(tags), c);
                    }
                    UserMetricKind::Gauge | UserMetricKind::Histogram => {
                        gauges.push((key(tags), (m.description.clone(), value)))
                    }
                }
            }
            for (tags, counts, sum) in m.histograms {
                let h = Cumulative {
                    description: m.description.clone(),
                    total: sum,
                    buckets: Some((m.boundaries.clone(), counts)),
                };
                cumulative.insert(key(tags), h);
            }
        }
        let before = self.live.get(&peer).map_or(0, HashMap::len);
        let new_gauges = gauges
            .iter()
            .filter(|(k, _)| !self.gauges.contains_key(k))
            .count();
        if self.series() - before + cumulative.len() + new_gauges > MAX_SERIES {
            return Err(Refused::TooMany);
        }
        self.live.insert(peer, cumulative);
        self.gauges.extend(gauges);
        Ok(())
    }

    /// `peer` ended: its counters' and histograms' totals are kept.
    pub fn ended(&mut self, peer: &P) {
        for (key, c) in self.live.remove(peer).unwrap_or_default() {
            match self.ended.get_mut(&key) {
                Some(kept) => kept.add(&c),
                None => {
                    self.ended.insert(key, c);
                }
            }
        }
    }

    /// Every counter and histogram series, summed over processes.
    fn cumulative(&self) -> HashMap<&SeriesKey, Cumulative> {
        let mut out: HashMap<&SeriesKey, Cumulative> = HashMap::default();
        for (key, c) in self.live.values().flatten().chain(&self.ended) {
            match out.get_mut(key) {
                Some(sum) => sum.add(c),
                None => {
                    out.insert(key, c.clone());
                }
            }
        }
        out
    }
}

/// A report's names, values and histogram buckets are all well-formed.
fn check(m: &UserMetric) -> Result<(), Refused> {
    check_name(&m.name)?;
    let bad = |what: String| Err(Refused::BadValue(format!("{}: {what}", m.name)));
    let tags = m
        .series
        .iter()
        .map(|(t, _)| t)
        .chain(m.histograms.iter().map(|(t, _, _)| t));
    for tag_set in tags {
        for (key, _) in tag_set {
            check_name(key)?;
        }
    }
    for (_, value) in &m.series {
        if !value.is_finite() || (m.kind == UserMetricKind::Counter && *value < 0.0) {
            return bad(value.to_string());
        }
    }
    if !m.histograms.is_empty() {
        let increasing = m.boundaries.windows(2).all(|w| w[0] < w[1]);
        if m.boundaries.is_empty() || !increasing || m.boundaries.iter().any(|b| !b.is_finite()) {
            return bad(format!("bucket bounds {:?}", m.boundaries));
        }
        for (_, counts, sum) in &m.histograms {
            if counts.len() != m.boundaries.len() + 1 || !sum.is_finite() {
                return bad(format!("{} buckets, sum {sum}", counts.len()));
            }
        }
    }
    Ok(())
}

impl<P: Hash + Eq> UserMetricTable<P> {
    /// Adds the table's series to `out`, named with Ray's `ray_` prefix; one with
    /// the name of a system metric already in `out` is left out (so add the system
    /// ones first).
    pub fn add_to(&self, out: &mut MetricSet) {
        let mut cumulative: Vec<_> = self.cumulative().into_iter().collect();
        cumulative.sort_by(|a, b| a.0.cmp(b.0));
        for ((name, tags), c) in cumulative {
            let name = format!("ray_{name}");
            match &c.buckets {
                None => out.user_sample(
                    Kind::Counter,
                    &name,
                    &c.description,
                    &borrowed(tags),
                    c.total,
                ),
                Some((bounds, counts)) => out.user_histogram(
                    &name,
                    &c.description,
                    &borrowed(tags),
                    bounds,
                    counts,
                    c.total,
                ),
            }
        }
        for ((name, tags), (description, value)) in &self.gauges {
            let name = format!("ray_{name}");
            out.user_sample(Kind::Gauge, &name, description, &borrowed(tags), *value);
        }
    }
}

/// One series of the table, as the dashboard lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct UserSeries {
    /// Its exported name (with Ray's `ray_` prefix; a counter's with `_total`).
    pub name: String,
    /// Its description.
    pub description: String,
    /// `counter`, `gauge` or `histogram`.
    pub kind: &'static str,
    /// Its tags, sorted.
    pub tags: Vec<(String, String)>,
    /// A counter's total, a gauge's value, a histogram's sum of observations.
    pub value: f64,
    /// A histogram's count of observations.
    pub count: Option<u64>,
}

impl<P: Hash + Eq> UserMetricTable<P> {
    /// Every series, by name and tags: what processes count, as the metrics
    /// endpoint would export it.
    pub fn series_list(&self) -> Vec<UserSeries> {
        let mut out: Vec<UserSeries> = self
            .cumulative()
            .into_iter()
            .map(|((name, tags), c)| UserSeries {
                // A counter's samples are exported with Prometheus' `_total`.
                name: if c.buckets.is_some() {
                    format!("ray_{name}")
                } else {
                    format!("ray_{name}_total")
                },
                description: c.description.clone(),
                kind: if c.buckets.is_some() {
                    "histogram"
                } else {
                    "counter"
                },
                tags: tags.clone(),
                value: c.total,
                count: c.buckets.as_ref().map(|(_, counts)| counts.iter().sum()),
            })
            .chain(
                self.gauges
                    .iter()
                    .map(|((name, tags), (description, value))| UserSeries {
                        name: format!("ray_{name}"),
                        description: description.clone(),
                        kind: "gauge",
                        tags: tags.clone(),
                        value: *value,
                        count: None,
                    }),
            )
            .collect();
        out.sort_by(|a, b| (&a.name, &a.tags).cmp(&(&b.name, &b.tags)));
        out
    }
}

fn borrowed(tags: &[(String, String)]) -> Vec<(&str, &str)> {
    tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Prometheus' rule for metric and label names (without colons, which are for
/// recording rules).
fn check_name(name: &str) -> Result<(), Refused> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && name.len() <= 200 {
        Ok(())
    } else {
        Err(Refused::BadName(name.chars().take(200).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(name: &str, tag: &str, value: f64) -> UserMetric {
        UserMetric {
            name: name.into(),
            description: "d".into(),
            kind: UserMetricKind::Counter,
            series: vec![(vec![("status".into(), tag.into())], value)],
            boundaries: Vec::new(),
            histograms: Vec::new(),
        }
    }

    #[test]
    fn counters_sum_over_processes_and_outlive_them() {
        let mut t = UserMetricTable::default();
        let (a, b) = (1u32, 2u32);
        t.report(a, vec![counter("images", "ok", 3.0)]).expect("ok");
        t.report(b, vec![counter("images", "ok", 2.0)]).expect("ok");
        // A later report replaces the process's earlier totals.
        t.report(a, vec![counter("images", "ok", 4.0)]).expect("ok");
        let total =
            |t: &UserMetricTable<u32>| t.cumulative().values().map(|c| c.total).sum::<f64>();
        assert_eq!(total(&t), 6.0);
        t.ended(&a);
        assert_eq!(total(&t), 6.0, "an ended process's total stays");
        // The dashboard's list: one series, named as the endpoint exports it.
        let listed = t.series_list();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(
            (listed[0].name.as_str(), listed[0].kind, listed[0].value),
            ("ray_images_total", "counter", 6.0)
        );
        t.ended(&b);
        assert_eq!(total(&t), 6.0);
    }

    #[test]
    fn bad_names_values_and_floods_are_refused_whole() {
        let mut t = UserMetricTable::default();
        let p = 1u32;
        assert!(matches!(
            t.report(p, vec![counter("bad-name", "x", 1.0)]),
            Err(Refused::BadName(_))
        ));
        assert!(matches!(
            t.report(p, vec![counter("n", "x", f64::NAN)]),
            Err(Refused::BadValue(_))
        ));
        assert!(matches!(
            t.report(p, vec![counter("n", "x", -1.0)]),
            Err(Refused::BadValue(_))
        ));
        let flood = UserMetric {
            name: "n".into(),
            description: "d".into(),
            kind: UserMetricKind::Gauge,
            series: (0..=MAX_SERIES)
                .map(|i| (vec![("i".into(), i.to_string())], 1.0))
                .collect(),
            boundaries: Vec::new(),
            histograms: Vec::new(),
        };
        assert_eq!(t.report(p, vec![flood]), Err(Refused::TooMany));
        assert_eq!(t.series(), 0);
    }

    fn histogram(counts: Vec<u64>, sum: f64) -> UserMetric {
        UserMetric {
            name: "latency".into(),
            description: "d".into(),
            kind: UserMetricKind::Histogram,
            series: Vec::new(),
            boundaries: vec![0.1, 1.0],
            histograms: vec![(Vec::new(), counts, sum)],
        }
    }

    #[test]
    fn histograms_sum_over_processes_and_bad_buckets_are_refused() {
        let mut t = UserMetricTable::default();
        t.report(1u32, vec![histogram(vec![1, 2, 0], 1.5)])
            .expect("ok");
        t.report(2u32, vec![histogram(vec![0, 1, 1], 2.5)])
            .expect("ok");
        t.ended(&1);
        let mut out = MetricSet::new(&[]);
        t.add_to(&mut out);
        let text = out.encode();
        assert!(text.contains(r#"ray_latency_bucket{le="0.1"} 1"#), "{text}");
        assert!(text.contains(r#"ray_latency_bucket{le="1.0"} 4"#), "{text}");
        assert!(
            text.contains(r#"ray_latency_bucket{le="+Inf"} 5"#),
            "{text}"
        );
        assert!(text.contains("ray_latency_sum 4.0"), "{text}");
        assert!(text.contains("ray_latency_count 5"), "{text}");
        assert!(matches!(
            t.report(3u32, vec![histogram(vec![1, 1], 1.0)]),
            Err(Refused::BadValue(_))
        ));
        let mut unordered = histogram(vec![1, 1, 1], 1.0);
        unordered.boundaries = vec![1.0, 0.1];
        assert!(matches!(
            t.report(3u32, vec![unordered]),
            Err(Refused::BadValue(_))
        ));
    }

    #[test]
    fn user_series_are_exposed_with_rays_prefix_and_never_shadow_system_ones() {
        let mut t = UserMetricTable::default();
        t.report(
            1u32,
            vec![counter("images", "ok", 2.0), counter("tasks", "x", 1.0)],
        )
        .expect("ok");
        let mut out = MetricSet::new(&[]);
        out.gauge("ray_tasks", "system", &[("State", "RUNNING")], 1.0);
        t.add_to(&mut out);
        assert_eq!(out.value("ray_images", &[("status", "ok")]), Some(2.0));
        assert_eq!(out.value("ray_tasks", &[("status", "x")]), None);
    }
}
