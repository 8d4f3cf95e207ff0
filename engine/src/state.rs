//! Token states and the compact in-memory entry of a paired token.

use zoftoken_proto::wire::WireState;

/// A token's state (PRODUCT.md "Tokens").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TokenState {
    /// Enrolled, waiting for the app to pair (or re-enrolled: the old app gets NOT_PAIRED).
    Pending = 0,
    /// Closed.
    Closed = 1,
    /// Opened; open while `open_until_ms > now`, then it reads as closed (and expires).
    Open = 2,
    /// Blocked; only an administrator can unblock it.
    Blocked = 3,
}

impl TokenState {
    /// The name used by the API.
    pub fn name(self) -> &'static str {
        match self {
            TokenState::Pending => "pending",
            TokenState::Closed => "closed",
            TokenState::Open => "open",
            TokenState::Blocked => "blocked",
        }
    }

    pub(crate) fn wire(self) -> WireState {
        match self {
            TokenState::Pending => WireState::Pending,
            TokenState::Closed => WireState::Closed,
            TokenState::Open => WireState::Open,
            TokenState::Blocked => WireState::Blocked,
        }
    }
}

/// Failed authentications that block a token.
pub const MAX_FAILURES: u8 = 3;

pub(crate) const FLAG_HAS_DURESS: u8 = 0x01;
pub(crate) const FLAG_OPEN_DURESS: u8 = 0x02;
/// The token has an entry in its shard's replay-window map.
pub(crate) const FLAG_HAS_WINDOW: u8 = 0x04;

/// A paired token in memory: 216 bytes. Keys and verifiers are zeroized when the entry is
/// overwritten or dropped (see `Drop`). Cold data (username) lives in storage only.
#[derive(Clone)]
pub(crate) struct TokenEntry {
    pub id: [u8; 16],
    pub secret: [u8; 32],
    pub d2s: [u8; 32],
    pub s2d: [u8; 32],
    pub pin: [u8; 32],
    pub duress: [u8; 32],
    pub highest: u64,
    pub open_until_ms: u64,
    pub offset_ms: i64,
    pub last_seen_s: u32,
    pub otp_last_step: u32,
    pub service: u16,
    pub state: TokenState,
    pub failures: u8,
    pub flags: u8,
    pub otp_drift: i8,
}

impl Drop for TokenEntry {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.secret.zeroize();
        self.d2s.zeroize();
        self.s2d.zeroize();
        self.pin.zeroize();
        self.duress.zeroize();
    }
}

impl TokenEntry {
    /// The state as seen at `now`: an open token whose window ended reads closed.
    pub fn effective_state(&self, now_ms: u64) -> TokenState {
        if self.state == TokenState::Open && self.open_until_ms <= now_ms {
            TokenState::Closed
        } else {
            self.state
        }
    }

    pub fn has_duress(&self) -> bool {
        self.flags & FLAG_HAS_DURESS != 0
    }

    pub fn attempts_left(&self) -> u8 {
        MAX_FAILURES.saturating_sub(self.failures)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn entry_is_compact() {
        assert_eq!(size_of::<super::TokenEntry>(), 216);
    }
}
