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
    /// A value that is not a finite number (or a counter below zero).
    BadValue(String),
    /// The table would hold more than [`MAX_SERIES`].
    TooMany,
}

/// Every process's own metrics, by process (`P`: the head's peer id, a node's
/// worker pid).
pub struct UserMetricTable<P> {
    /// Each live process's latest counter totals.
    live: HashMap<P, HashMap<SeriesKey, (String, f64)>>,
    /// The final counter totals of processes that ended, summed.
    ended: HashMap<SeriesKey, (String, f64)>,
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
            check_name(&m.name)?;
            for (tags, value) in &m.series {
                for (key, _) in tags {
                    check_name(key)?;
                }
                let bad = !value.is_finite() || (m.kind == UserMetricKind::Counter && *value < 0.0);
                if bad {
                    return Err(Refused::BadValue(format!("{} = {value}", m.name)));
                }
            }
        }
        let mut counters = HashMap::default();
        let mut gauges = Vec::new();
        for m in metrics {
            for (mut tags, value) in m.series {
                tags.sort();
                let key = (m.name.clone(), tags);
                match m.kind {
                    UserMetricKind::Counter => {
                        counters.insert(key, (m.description.clone(), value));
                    }
                    UserMetricKind::Gauge => gauges.push((key, (m.description.clone(), value))),
                }
            }
        }
        let before = self.live.get(&peer).map_or(0, HashMap::len);
        let new_gauges = gauges
            .iter()
            .filter(|(k, _)| !self.gauges.contains_key(k))
            .count();
        if self.series() - before + counters.len() + new_gauges > MAX_SERIES {
            return Err(Refused::TooMany);
        }
        self.live.insert(peer, counters);
        self.gauges.extend(gauges);
        Ok(())
    }

    /// `peer` ended: its counters' totals are kept.
    pub fn ended(&mut self, peer: &P) {
        for (key, (description, value)) in self.live.remove(peer).unwrap_or_default() {
            self.ended.entry(key).or_insert((description, 0.0)).1 += value;
        }
    }

    /// Every counter series, summed over processes: (name, tags, description, total).
    fn counters(&self) -> HashMap<&SeriesKey, (&str, f64)> {
        let mut out: HashMap<&SeriesKey, (&str, f64)> = HashMap::default();
        for (key, (description, value)) in self.live.values().flatten().chain(&self.ended) {
            out.entry(key).or_insert((description.as_str(), 0.0)).1 += value;
        }
        out
    }

    /// Every gauge series and its latest value.
    fn gauges(&self) -> impl Iterator<Item = (&SeriesKey, &(String, f64))> {
        self.gauges.iter()
    }
}

impl<P: Hash + Eq> UserMetricTable<P> {
    /// Adds the table's series to `out`, named with Ray's `ray_` prefix; one with
    /// the name of a system metric already in `out` is left out (so add the system
    /// ones first).
    pub fn add_to(&self, out: &mut MetricSet) {
        let mut counters: Vec<_> = self.counters().into_iter().collect();
        counters.sort_by(|a, b| a.0.cmp(b.0));
        for ((name, tags), (description, total)) in counters {
            let name = format!("ray_{name}");
            out.user_sample(Kind::Counter, &name, description, &borrowed(tags), total);
        }
        for ((name, tags), (description, value)) in self.gauges() {
            let name = format!("ray_{name}");
            out.user_sample(Kind::Gauge, &name, description, &borrowed(tags), *value);
        }
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
        let total = |t: &UserMetricTable<u32>| t.counters().values().map(|(_, v)| *v).sum::<f64>();
        assert_eq!(total(&t), 6.0);
        t.ended(&a);
        assert_eq!(total(&t), 6.0, "an ended process's total stays");
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
        };
        assert_eq!(t.report(p, vec![flood]), Err(Refused::TooMany));
        assert_eq!(t.series(), 0);
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
