//! Version vectors: for each origin (a node's yrs client id), the highest
//! change-log seq a node holds. A node's log is dense per origin below its
//! vector, so "what do you lack?" is "every entry above your vector".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(pub BTreeMap<u64, u64>);

impl VersionVector {
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// The highest seq held from `origin` (0: none).
    pub fn get(&self, origin: u64) -> u64 {
        self.0.get(&origin).copied().unwrap_or(0)
    }

    /// Records that `seq` of `origin` is held.
    pub fn observe(&mut self, origin: u64, seq: u64) {
        let entry = self.0.entry(origin).or_insert(0);
        *entry = (*entry).max(seq);
    }

    /// Pointwise maximum.
    pub fn merge(&mut self, other: &VersionVector) {
        for (&origin, &seq) in &other.0 {
            self.observe(origin, seq);
        }
    }

    /// Whether every entry of `other` is covered by `self`.
    pub fn covers(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(&o, &s)| self.get(o) >= s)
    }

    /// Origins where `self` holds entries that `other` lacks, with the
    /// range `(other's seq, self's seq]`.
    pub fn ahead_of<'a>(
        &'a self,
        other: &'a VersionVector,
    ) -> impl Iterator<Item = (u64, u64, u64)> + 'a {
        self.0
            .iter()
            .filter(move |(&o, &s)| s > other.get(o))
            .map(move |(&o, &s)| (o, other.get(o), s))
    }

    /// Entries held in all: the sum of the seqs.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Pointwise minimum over origins present in `self`.
    pub fn meet(&self, other: &VersionVector) -> VersionVector {
        VersionVector(
            self.0
                .iter()
                .map(|(&o, &s)| (o, s.min(other.get(o))))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ahead_of_lists_missing_ranges() {
        let mut a = VersionVector::new();
        a.observe(1, 5);
        a.observe(2, 3);
        let mut b = VersionVector::new();
        b.observe(1, 5);
        b.observe(2, 1);
        b.observe(3, 9);
        assert_eq!(a.ahead_of(&b).collect::<Vec<_>>(), vec![(2, 1, 3)]);
        assert!(!a.covers(&b));
        let mut c = a.clone();
        c.merge(&b);
        assert!(c.covers(&a) && c.covers(&b));
        assert_eq!(c.total(), 5 + 3 + 9);
    }
}
