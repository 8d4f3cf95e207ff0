//! The anti-replay window of SPEC.md §8.1 (RFC 6479 style): a counter is accepted once, if it
//! is above the highest accepted counter or within the 1024 below it and not seen before.

/// Counters below the highest that are still tracked.
pub const REPLAY_WINDOW: u64 = 1024;
const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// Highest accepted counter and a 1024-bit bitmap of the counters below it
/// (bit `i` stands for `highest - i`). 136 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayWindow {
    highest: u64,
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow::new()
    }
}

impl ReplayWindow {
    /// A window that has accepted nothing (counters start at 1).
    pub fn new() -> ReplayWindow {
        ReplayWindow {
            highest: 0,
            bits: [0; WORDS],
        }
    }

    /// The window after a restart (SPEC.md §8.2): every counter up to the persisted highest
    /// counts as seen.
    pub fn restored(highest: u64) -> ReplayWindow {
        ReplayWindow {
            highest,
            bits: [u64::MAX; WORDS],
        }
    }

    /// The highest accepted counter (what is persisted).
    pub fn highest(&self) -> u64 {
        self.highest
    }

    fn position(&self, counter: u64) -> Option<(usize, u64)> {
        let behind = self.highest.checked_sub(counter)?;
        if behind >= REPLAY_WINDOW {
            return None;
        }
        Some(((behind / 64) as usize, 1u64 << (behind % 64)))
    }

    /// Whether `counter` would be accepted. Call only after the AEAD tag verified.
    pub fn check(&self, counter: u64) -> bool {
        if counter == 0 {
            return false;
        }
        if counter > self.highest {
            return true;
        }
        match self.position(counter) {
            Some((word, bit)) => self.bits.get(word).is_some_and(|w| w & bit == 0),
            None => false,
        }
    }

    /// Accepts `counter` if [`check`](Self::check) allows it, marking it seen; returns
    /// whether it was accepted.
    pub fn accept(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        if counter > self.highest {
            self.shift(counter - self.highest);
            self.highest = counter;
        }
        if let Some((word, bit)) = self.position(counter) {
            if let Some(w) = self.bits.get_mut(word) {
                *w |= bit;
            }
        }
        true
    }

    /// Moves the window up by `delta`: bit `i` becomes bit `i + delta`.
    fn shift(&mut self, delta: u64) {
        if delta >= REPLAY_WINDOW {
            self.bits = [0; WORDS];
            return;
        }
        let words = (delta / 64) as usize;
        let bits = (delta % 64) as u32;
        let old = self.bits;
        for (i, slot) in self.bits.iter_mut().enumerate() {
            let lo = i
                .checked_sub(words)
                .and_then(|j| old.get(j))
                .copied()
                .unwrap_or(0);
            let carry = i
                .checked_sub(words + 1)
                .and_then(|j| old.get(j))
                .copied()
                .unwrap_or(0);
            *slot = if bits == 0 {
                lo
            } else {
                (lo << bits) | (carry >> (64 - bits))
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn basic_rules() {
        let mut w = ReplayWindow::new();
        assert!(!w.accept(0));
        assert!(w.accept(5));
        assert!(!w.accept(5));
        assert!(w.accept(3));
        assert!(!w.accept(3));
        assert!(w.accept(2000));
        assert!(!w.accept(2000 - 1024));
        assert!(w.accept(2000 - 1023));
        assert!(w.accept(1999));
        let r = ReplayWindow::restored(2000);
        assert!(!r.check(1999));
        assert!(!r.check(2000));
        assert!(r.check(2001));
    }

    proptest! {
        /// The window agrees with an exact model: a set of every accepted counter.
        #[test]
        fn matches_a_set_model(ops in proptest::collection::vec(1u64..4000, 1..400)) {
            let mut w = ReplayWindow::new();
            let mut seen = std::collections::BTreeSet::new();
            let mut highest = 0u64;
            for c in ops {
                let expect = !seen.contains(&c) && (c > highest || highest - c < REPLAY_WINDOW);
                prop_assert_eq!(w.accept(c), expect, "counter {}", c);
                if expect {
                    seen.insert(c);
                    highest = highest.max(c);
                }
            }
        }
    }
}
