//! The anti-replay window of SPEC.md §8.1 (RFC 6479 style): a counter is accepted once, if it
//! is above the highest accepted counter or within the 1024 below it and not seen before.
//!
//! Two representations with the same acceptance rule: [`ReplayWindow`] (the whole 1024-bit
//! bitmap, 136 bytes) and the *compact* form (the highest counter and a 32-bit bitmap of the
//! counters just below it, everything further below seen: [`compact_check`],
//! [`compact_accept`]), which a server can keep inline per token. The compact form holds
//! every window whose unseen counters are all within 32 of its highest (a token's counters
//! arriving in order, with small gaps); [`compact_accept`] says when a counter would leave
//! that form, and [`ReplayWindow::from_compact`] / [`ReplayWindow::to_compact`] convert.

/// Counters below the highest that are still tracked.
pub const REPLAY_WINDOW: u64 = 1024;
const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// Counters below the highest that the compact form tracks (bit `i` of its bitmap stands for
/// `highest - 1 - i`).
pub const COMPACT_WINDOW: u64 = 32;

/// Whether `counter` would be accepted by the compact window (`highest`, `recent`). Call only
/// after the AEAD tag verified.
pub fn compact_check(highest: u64, recent: u32, counter: u64) -> bool {
    if counter == 0 {
        return false;
    }
    if counter > highest {
        return true;
    }
    match highest - counter {
        0 => false,
        behind if behind <= COMPACT_WINDOW => recent & (1u32 << (behind - 1)) == 0,
        _ => false,
    }
}

/// Accepts `counter` (which [`compact_check`] allowed) into the compact window (`highest`,
/// `recent`): the new compact window, or `None` when the result has an unseen counter more
/// than [`COMPACT_WINDOW`] below its highest and so needs the whole window
/// (`ReplayWindow::from_compact(highest, recent)` then [`ReplayWindow::accept`]).
pub fn compact_accept(highest: u64, recent: u32, counter: u64) -> Option<(u64, u32)> {
    // Bits for counters below 1 (never accepted) count as seen.
    let recent = match highest {
        0 => u32::MAX,
        1..=COMPACT_WINDOW => recent | u32::MAX << (highest - 1),
        _ => recent,
    };
    if counter > highest {
        // Bit i of the new bitmap is `counter - 1 - i`: the old highest lands on bit
        // `delta - 1`, old bit j on `delta + j`, the counters in between are unseen.
        match counter - highest {
            delta if delta < COMPACT_WINDOW => {
                let kept = recent << delta;
                // The bits shifted out must all be seen (they become "everything below").
                let shifted_out = recent >> (COMPACT_WINDOW - delta);
                (shifted_out == (1u32 << delta) - 1)
                    .then_some((counter, kept | 1u32 << (delta - 1)))
            }
            COMPACT_WINDOW => (recent == u32::MAX).then_some((counter, 1u32 << 31)),
            // The old highest falls just below the bitmap (seen); the 32 between are unseen.
            33 => (recent == u32::MAX).then_some((counter, 0)),
            _ => None,
        }
    } else {
        let behind = highest - counter;
        (1..=COMPACT_WINDOW)
            .contains(&behind)
            .then(|| (highest, recent | 1u32 << (behind - 1)))
    }
}

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

    /// The whole window of the compact window (`highest`, `recent`): the same acceptance.
    pub fn from_compact(highest: u64, recent: u32) -> ReplayWindow {
        let mut w = ReplayWindow::restored(highest);
        if let Some(first) = w.bits.first_mut() {
            // Bit 0 is `highest` itself (seen); bits 1..=32 are `recent`.
            *first = !(u64::from(!recent) << 1);
        }
        w
    }

    /// The compact form's bitmap (see [`compact_check`]) when every counter this window
    /// tracks more than [`COMPACT_WINDOW`] below its highest is seen, so that
    /// `from_compact(self.highest(), bits)` accepts exactly what `self` accepts. Counters
    /// below 1, which are never accepted, count as seen.
    pub fn to_compact(&self) -> Option<u32> {
        let first = *self.bits.first()?;
        // Positions at or above `highest` stand for counters of 0 and below.
        let invalid = |word: u64| -> u64 {
            let from = self.highest.saturating_sub(word * 64);
            match from {
                0 => u64::MAX,
                1..=63 => u64::MAX << from,
                _ => 0,
            }
        };
        let tracked_seen = |word: usize, bits: u64| (bits | invalid(word as u64)) == u64::MAX;
        // Bits 0 (the highest, seen) to 32 (`recent`) are kept; all others must be seen.
        let beyond_compact = first | (u64::MAX >> (63 - COMPACT_WINDOW));
        if !tracked_seen(0, beyond_compact) || (self.highest > 0 && first & 1 == 0) {
            return None;
        }
        if !self
            .bits
            .iter()
            .enumerate()
            .skip(1)
            .all(|(i, b)| tracked_seen(i, *b))
        {
            return None;
        }
        Some(((first | invalid(0)) >> 1) as u32)
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

    #[test]
    fn compact_round_trips() {
        for (highest, recent) in [(5000, 0), (5000, u32::MAX), (5000, 0xA5A5_0F0F), (40, 7)] {
            let w = ReplayWindow::from_compact(highest, recent);
            assert_eq!(w.to_compact(), Some(recent));
            for c in highest.saturating_sub(40)..highest + 3 {
                assert_eq!(w.check(c), compact_check(highest, recent, c), "counter {c}");
            }
        }
        // A new window and a restored one are compact: nothing below them is acceptable.
        assert_eq!(ReplayWindow::new().to_compact(), Some(u32::MAX));
        assert_eq!(ReplayWindow::restored(9).to_compact(), Some(u32::MAX));
        // Counters below 1 count as seen.
        assert_eq!(ReplayWindow::from_compact(3, 0).to_compact(), Some(!0b11));
        // An unseen counter 33 below the highest is not compact.
        let mut w = ReplayWindow::restored(100);
        assert!(w.accept(134));
        assert_eq!(w.to_compact(), None);
        assert!(w.accept(101));
        // 102..=133 are still unseen: the 32 just below 134.
        assert_eq!(w.to_compact(), Some(0));
        assert_eq!(compact_accept(100, u32::MAX, 134), None);
        assert_eq!(compact_accept(100, u32::MAX, 133), Some((133, 0)));
        assert_eq!(compact_accept(100, u32::MAX, 132), Some((132, 1 << 31)));
        assert_eq!(compact_accept(100, !(1 << 30), 102), None);
        assert_eq!(compact_accept(100, !1, 102), Some((102, !0b101)));
        assert_eq!(compact_accept(100, !(1 << 31), 101), None);
        assert_eq!(
            compact_accept(100, !(1 << 30), 101),
            Some((101, !(1 << 31)))
        );
    }

    /// Every compact window of a set of bitmaps (all seen, none seen, each single counter
    /// unseen or seen) and every counter from 40 below to 70 above its highest: the compact
    /// check and accept agree with the whole window made of it.
    #[test]
    fn compact_agrees_with_the_whole_window_at_every_offset() {
        let mut bitmaps = vec![0, u32::MAX, 0xA5A5_0F0F];
        for i in 0..32 {
            bitmaps.push(1 << i);
            bitmaps.push(!(1 << i));
        }
        for highest in [1000, 35, 20] {
            for &recent in &bitmaps {
                let whole = ReplayWindow::from_compact(highest, recent);
                for c in highest.saturating_sub(40)..=highest + 70 {
                    let ok = compact_check(highest, recent, c);
                    assert_eq!(ok, whole.check(c), "{highest} {recent:#x} {c}");
                    if !ok {
                        continue;
                    }
                    let mut after = whole.clone();
                    assert!(after.accept(c));
                    match compact_accept(highest, recent, c) {
                        Some((h, r)) => {
                            assert_eq!(h, after.highest());
                            assert!(after.to_compact().is_some());
                            for probe in h.saturating_sub(1100)..h + 3 {
                                assert_eq!(
                                    compact_check(h, r, probe),
                                    after.check(probe),
                                    "{highest} {recent:#x} {c} → {probe}"
                                );
                            }
                        }
                        None => assert_eq!(after.to_compact(), None, "{highest} {recent:#x} {c}"),
                    }
                }
            }
        }
    }

    proptest! {
        /// The compact form, spilled to the whole window when [`compact_accept`] says so and
        /// returned to it whenever [`ReplayWindow::to_compact`] allows (as a server keeps
        /// them), accepts exactly what the whole window accepts.
        #[test]
        fn compact_with_spills_matches_the_window(
            start in 0u64..3000,
            steps in proptest::collection::vec((0u8..5, 0u64..40), 1..400),
        ) {
            let mut whole = ReplayWindow::restored(start);
            let mut compact = Some((start, u32::MAX));
            let mut spilled = ReplayWindow::restored(start);
            let mut next = start;
            for (kind, n) in steps {
                // The next counter, jumps ahead (around the compact form's 32 and beyond
                // the whole window's 1024) and late arrivals.
                let c = match kind {
                    0 => next + 1,
                    1 => next + n,
                    2 => next + n * 30,
                    _ => next.saturating_sub(n),
                };
                next = next.max(c);
                let expect = whole.accept(c);
                let got = match compact {
                    Some((h, r)) => {
                        let ok = compact_check(h, r, c);
                        if ok {
                            compact = compact_accept(h, r, c);
                            if compact.is_none() {
                                spilled = ReplayWindow::from_compact(h, r);
                                prop_assert!(spilled.accept(c));
                            }
                        }
                        ok
                    }
                    None => {
                        let ok = spilled.accept(c);
                        if let Some(r) = spilled.to_compact() {
                            compact = Some((spilled.highest(), r));
                        }
                        ok
                    }
                };
                prop_assert_eq!(got, expect, "counter {}", c);
                prop_assert_eq!(compact.map_or(spilled.highest(), |(h, _)| h), whole.highest());
            }
        }

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
