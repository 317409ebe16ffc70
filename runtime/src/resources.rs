//! Resource quantities (CPU, GPU and custom resources) as the scheduler counts them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The name Ray and rayish use for CPU slots.
pub const CPU: &str = "CPU";
/// The name Ray and rayish use for GPUs.
pub const GPU: &str = "GPU";

/// Quantities are kept in thousandths so that sums never drift as floats would.
const SCALE: f64 = 1000.0;

/// A set of named resource quantities, e.g. `{CPU: 2, GPU: 0.5, disk: 1}`.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceSet(BTreeMap<String, u64>);

impl ResourceSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `amount` (negative amounts count as zero).
    pub fn set(&mut self, name: &str, amount: f64) {
        let units = (amount.max(0.0) * SCALE).round() as u64;
        if units == 0 {
            self.0.remove(name);
        } else {
            self.0.insert(name.to_string(), units);
        }
    }

    /// Builder form of [`ResourceSet::set`].
    pub fn with(mut self, name: &str, amount: f64) -> Self {
        self.set(name, amount);
        self
    }

    /// The amount of `name`, zero when absent.
    pub fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0) as f64 / SCALE
    }

    /// Whether every quantity in `demand` is available here.
    pub fn contains(&self, demand: &ResourceSet) -> bool {
        demand
            .0
            .iter()
            .all(|(k, v)| self.0.get(k).copied().unwrap_or(0) >= *v)
    }

    /// Takes `demand` away, saturating at zero.
    pub fn subtract(&mut self, demand: &ResourceSet) {
        for (k, v) in &demand.0 {
            if let Some(have) = self.0.get_mut(k) {
                *have = have.saturating_sub(*v);
            }
        }
    }

    /// Whether `demand` fits in `total` once `used` is taken (over-use fits nothing).
    pub fn fits(total: &ResourceSet, used: &ResourceSet, demand: &ResourceSet) -> bool {
        demand.0.iter().all(|(k, v)| {
            let have = total.0.get(k).copied().unwrap_or(0);
            let taken = used.0.get(k).copied().unwrap_or(0);
            taken + v <= have
        })
    }

    /// `self` less `used`, saturating at zero: what is still free.
    pub fn minus(&self, used: &ResourceSet) -> ResourceSet {
        let mut free = self.clone();
        free.subtract(used);
        free
    }

    /// Every quantity multiplied by `factor`.
    pub fn scaled(&self, factor: f64) -> ResourceSet {
        let mut out = ResourceSet::new();
        for (k, v) in self.iter() {
            out.set(k, v * factor);
        }
        out
    }

    /// Adds `amount` back, never above `cap` (the node's total).
    pub fn add_capped(&mut self, amount: &ResourceSet, cap: &ResourceSet) {
        for (k, v) in &amount.0 {
            let limit = cap.0.get(k).copied().unwrap_or(0);
            let have = self.0.entry(k.clone()).or_insert(0);
            *have = (*have + v).min(limit);
        }
    }

    /// Adds `amount`, unbounded.
    pub fn add(&mut self, amount: &ResourceSet) {
        for (k, v) in &amount.0 {
            *self.0.entry(k.clone()).or_insert(0) += v;
        }
    }

    /// Named quantities as floats, for display and JSON.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v as f64 / SCALE))
    }

    /// Whether the set holds nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses Ray's `--resources` JSON form, e.g. `{"disk": 2, "accel": 0.5}`.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let map: BTreeMap<String, f64> = serde_json::from_str(text)
            .map_err(|e| format!("--resources must be a JSON object of numbers: {e}"))?;
        let mut set = ResourceSet::new();
        for (k, v) in map {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("resource {k:?} has a bad quantity {v}"));
            }
            set.set(&k, v);
        }
        Ok(set)
    }
}

impl fmt::Debug for ResourceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ResourceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}: {v}")?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractional_amounts_do_not_drift() {
        let total = ResourceSet::new().with(CPU, 1.0);
        let mut free = total.clone();
        let tenth = ResourceSet::new().with(CPU, 0.1);
        for _ in 0..10 {
            assert!(free.contains(&tenth));
            free.subtract(&tenth);
        }
        assert!(!free.contains(&tenth));
        for _ in 0..10 {
            free.add_capped(&tenth, &total);
        }
        assert_eq!(free, total);
    }

    #[test]
    fn json_resources_parse_and_reject_bad_values() {
        let set = ResourceSet::from_json(r#"{"disk": 2, "accel": 0.5}"#).unwrap();
        assert_eq!(set.get("disk"), 2.0);
        assert_eq!(set.get("accel"), 0.5);
        assert!(ResourceSet::from_json(r#"{"disk": -1}"#).is_err());
        assert!(ResourceSet::from_json("[1]").is_err());
    }
}
