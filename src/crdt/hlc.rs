//! Hybrid logical clock: wall-clock milliseconds in the high 48 bits, a
//! counter in the low 16. It never goes backwards, and it moves past every
//! stamp the node has seen, so a write made after seeing another one always
//! wins over it, even when the other node's wall clock runs ahead.

/// How far ahead of this node's wall clock a stamp from elsewhere may be.
/// A remote entry further ahead is refused (`clock`), and the clock never
/// follows a stamp beyond it: one node with a wild clock (or a crafted
/// stamp) must not drag every node's clock into the future, or to the end
/// of its range, where local writes would lose every conflict.
pub const MAX_AHEAD_MS: u64 = 60 * 60 * 1000;

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
        self.last = physical.max(self.last.saturating_add(1));
        self.last
    }

    /// Takes note of a stamp from elsewhere, up to [`MAX_AHEAD_MS`] ahead
    /// of the wall clock.
    pub fn observe(&mut self, seen: u64) {
        self.last = self.last.max(seen.min(Self::ceiling(Self::now_ms())));
    }

    /// The highest stamp accepted from elsewhere at wall time `now_ms`.
    pub fn ceiling(now_ms: u64) -> u64 {
        (now_ms + MAX_AHEAD_MS) << 16 | 0xffff
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    /// The wall-clock milliseconds of a stamp (its high 48 bits).
    pub fn wall_ms(stamp: u64) -> u64 {
        stamp >> 16
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

    #[test]
    fn a_stamp_from_the_far_future_is_not_followed() {
        let mut clock = Hlc::default();
        clock.observe(u64::MAX);
        let now = Hlc::now_ms();
        assert!(clock.last() <= Hlc::ceiling(Hlc::now_ms()));
        let next = clock.tick(now);
        assert!(next > clock.last() - 1 && next < u64::MAX);
        let mut end = Hlc::starting_after(u64::MAX);
        assert_eq!(end.tick(now), u64::MAX, "saturates, never wraps to 0");
    }
}
