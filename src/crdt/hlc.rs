//! Hybrid logical clock: wall-clock milliseconds in the high 48 bits, a
//! counter in the low 16. It never goes backwards, and it moves past every
//! stamp the node has seen, so a write made after seeing another one always
//! wins over it, even when the other node's wall clock runs ahead.

#[derive(Debug, Default, Clone)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    pub fn starting_after(last: u64) -> Hlc {
        Hlc { last }
    }

    /// The next stamp, given the wall clock in milliseconds since the epoch.
    pub fn tick(&mut self, wall_ms: u64) -> u64 {
        let physical = wall_ms << 16;
        self.last = physical.max(self.last + 1);
        self.last
    }

    /// Takes note of a stamp from elsewhere.
    pub fn observe(&mut self, seen: u64) {
        self.last = self.last.max(seen);
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    pub fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_ahead_of_what_it_saw() {
        let mut clock = Hlc::default();
        let a = clock.tick(1000);
        let b = clock.tick(999);
        assert!(b > a);
        clock.observe(5000 << 16);
        assert!(clock.tick(1001) > 5000 << 16);
    }
}
