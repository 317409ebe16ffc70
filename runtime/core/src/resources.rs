//! Resource quantities (CPU, GPU and custom resources) as the scheduler counts them.

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

/// The name Ray and rayish use for CPU slots.
pub const CPU: &str = "CPU";
/// The name Ray and rayish use for GPUs.
pub const GPU: &str = "GPU";

/// Quantities are kept in thousandths so that sums never drift as floats would.
const SCALE: f64 = 1000.0;

/// A resource's name. CPU and GPU, the names nearly every set holds, take no
/// allocation: a million queued tasks each carry a set.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Name {
    Cpu,
    Gpu,
    Other(Box<str>),
}

impl Name {
    fn new(name: &str) -> Self {
        match name {
            CPU => Name::Cpu,
            GPU => Name::Gpu,
            other => Name::Other(other.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Name::Cpu => CPU,
            Name::Gpu => GPU,
            Name::Other(name) => name,
        }
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A set of named resource quantities, e.g. `{CPU: 2, GPU: 0.5, disk: 1}`.
///
/// Entries are kept sorted by name (so equal sets compare, hash and order alike, as
/// the map this replaced did), inline while there is one: a task's usual `{CPU: 1}`
/// costs no allocation. On the wire it is a map of name to thousandths.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceSet(SmallVec<[(Name, u64); 1]>);

impl ResourceSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(name))
    }

    fn units(&self, name: &str) -> u64 {
        self.position(name).map_or(0, |i| self.0[i].1)
    }

    /// The entry of `name`, added with zero units if absent.
    fn units_mut(&mut self, name: &Name) -> &mut u64 {
        let i = match self.position(name.as_str()) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (name.clone(), 0));
                i
            }
        };
        &mut self.0[i].1
    }

    /// Sets `name` to `amount` (negative amounts count as zero).
    pub fn set(&mut self, name: &str, amount: f64) {
        let units = (amount.max(0.0) * SCALE).round() as u64;
        match (self.position(name), units) {
            (Ok(i), 0) => {
                self.0.remove(i);
            }
            (Ok(i), units) => self.0[i].1 = units,
            (Err(_), 0) => {}
            (Err(i), units) => self.0.insert(i, (Name::new(name), units)),
        }
    }

    /// Builder form of [`ResourceSet::set`].
    pub fn with(mut self, name: &str, amount: f64) -> Self {
        self.set(name, amount);
        self
    }

    /// The amount of `name`, zero when absent.
    pub fn get(&self, name: &str) -> f64 {
        self.units(name) as f64 / SCALE
    }

    /// The part of this set that is `name` (what a task waiting in `get` lends is
    /// `part(CPU)`).
    pub fn part(&self, name: &str) -> ResourceSet {
        ResourceSet::new().with(name, self.get(name))
    }

    /// Whether every quantity in `demand` is available here.
    pub fn contains(&self, demand: &ResourceSet) -> bool {
        demand.0.iter().all(|(k, v)| self.units(k.as_str()) >= *v)
    }

    /// Takes `demand` away, saturating at zero.
    pub fn subtract(&mut self, demand: &ResourceSet) {
        for (k, v) in &demand.0 {
            if let Ok(i) = self.position(k.as_str()) {
                let have = &mut self.0[i].1;
                *have = have.saturating_sub(*v);
            }
        }
    }

    /// Whether `demand` fits in `total` once `used` is taken (over-use fits nothing).
    pub fn fits(total: &ResourceSet, used: &ResourceSet, demand: &ResourceSet) -> bool {
        demand.0.iter().all(|(k, v)| {
            let have = total.units(k.as_str());
            let taken = used.units(k.as_str());
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
            let limit = cap.units(k.as_str());
            let have = self.units_mut(k);
            *have = (*have + v).min(limit);
        }
    }

    /// Adds `amount`, unbounded.
    pub fn add(&mut self, amount: &ResourceSet) {
        for (k, v) in &amount.0 {
            *self.units_mut(k) += v;
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

impl Serialize for ResourceSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k.as_str(), v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for ResourceSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SetVisitor;
        impl<'de> Visitor<'de> for SetVisitor {
            type Value = ResourceSet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of resource names to thousandths")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ResourceSet, A::Error> {
                let mut set = ResourceSet::new();
                while let Some((name, units)) =
                    map.next_entry::<std::borrow::Cow<'de, str>, u64>()?
                {
                    *set.units_mut(&Name::new(&name)) = units;
                }
                Ok(set)
            }
        }
        deserializer.deserialize_map(SetVisitor)
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

    #[test]
    fn sets_stay_sorted_and_keep_the_maps_wire_form() {
        let set = ResourceSet::new()
            .with("disk", 2.0)
            .with(CPU, 1.5)
            .with("accel", 0.5)
            .with(GPU, 1.0);
        let names: Vec<&str> = set.iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["CPU", "GPU", "accel", "disk"]);
        // Same bytes as the `BTreeMap<String, u64>` it replaced, so peers agree.
        let map: BTreeMap<String, u64> =
            [("CPU", 1500), ("GPU", 1000), ("accel", 500), ("disk", 2000)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        let bytes = bincode::serialize(&set).unwrap();
        assert_eq!(bytes, bincode::serialize(&map).unwrap());
        let back: ResourceSet = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back, set);
        // Built in another order, the set is the same value.
        let other = ResourceSet::new()
            .with(GPU, 1.0)
            .with("accel", 0.5)
            .with("disk", 2.0)
            .with(CPU, 1.5);
        assert_eq!(other, set);
        assert_eq!(other.cmp(&set), Ordering::Equal);
        let mut removed = set.clone();
        removed.set("accel", 0.0);
        assert_eq!(removed.get("accel"), 0.0);
        assert_eq!(removed.iter().count(), 3);
    }
}
