//! Token states, the compact in-memory entry of a paired token, and the events made from it.

use zoftoken_proto::wire::WireState;
use zoftoken_proto::TokenId;

use crate::event::{Actor, Event, EventKind};

/// A token's state (`docs/product.md`, "Tokens").
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

/// Which kind of token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// Our phone app (UDP protocol).
    App,
    /// A standard RFC 6238 authenticator (SPEC.md §10.5): no app of ours, no PIN, no packets.
    Totp,
}

impl TokenKind {
    /// The name used by the API: `app` or `totp`.
    pub fn name(self) -> &'static str {
        match self {
            TokenKind::App => "app",
            TokenKind::Totp => "totp",
        }
    }

    /// The kind for a name (`app`, `totp`).
    pub fn from_name(name: &str) -> Option<TokenKind> {
        match name {
            "app" => Some(TokenKind::App),
            "totp" => Some(TokenKind::Totp),
            _ => None,
        }
    }
}

/// Failed authentications that block a token.
pub const MAX_FAILURES: u8 = 3;

pub(crate) const FLAG_HAS_DURESS: u8 = 0x01;
pub(crate) const FLAG_OPEN_DURESS: u8 = 0x02;
/// The token's replay window is in its shard's window map (it has an unseen counter more
/// than 32 below its highest); otherwise it is the entry's `highest` and `recent`.
pub(crate) const FLAG_HAS_WINDOW: u8 = 0x04;
/// The token has an entry in its shard's expiry heap (at most one per token).
pub(crate) const FLAG_TIMER: u8 = 0x08;
/// A standard authenticator token ([`TokenKind::Totp`]): `secret` holds its TOTP parameters
/// (see [`TotpSecret`]); `pin`, `duress` are zero and its packet keys are random (its device
/// packets are dropped before any key is used).
pub(crate) const FLAG_TOTP: u8 = 0x10;

/// Length of a TOTP token's HMAC key (RFC 4226 §4: at least 128 bits, 160 recommended).
pub const TOTP_KEY_LEN: usize = 20;

/// The longest TOTP period the engine hands to authenticator apps (as
/// `zoftoken_proto::totp::TotpParams::validate` allows).
pub const TOTP_MAX_PERIOD_S: u16 = 300;

/// The TOTP digits and period for a service's one-time-code settings: its length and period
/// when a standard authenticator app can follow them (alphabet digits, length 6 or 8, period
/// 1–300 s), otherwise RFC 6238's usual 6 digits every 30 s.
pub fn totp_params(otp: zoftoken_proto::codes::OtpParams) -> (u8, u16) {
    let digits_ok =
        otp.alphabet == zoftoken_proto::wire::Alphabet::Digits && matches!(otp.length, 6 | 8);
    if digits_ok && (1..=TOTP_MAX_PERIOD_S).contains(&otp.period_s) {
        (otp.length, otp.period_s)
    } else {
        (6, 30)
    }
}

/// How a TOTP token uses the 32-byte `secret` field of its entry (and of its persisted record):
/// bytes 0..20 the HMAC-SHA-1 key, byte 20 the digits, bytes 21..23 the period in seconds
/// (big-endian), the rest zero. The parameters are fixed at enrollment, since the
/// authenticator app learnt them from the `otpauth://` URI and cannot follow a later change of
/// the service's settings.
pub(crate) struct TotpSecret;

impl TotpSecret {
    /// Lays out a key and its parameters.
    pub(crate) fn pack(key: &[u8; TOTP_KEY_LEN], digits: u8, period_s: u16) -> [u8; 32] {
        let mut s = [0u8; 32];
        let (k, rest) = s.split_at_mut(TOTP_KEY_LEN);
        k.copy_from_slice(key);
        if let [d, p0, p1, ..] = rest {
            *d = digits;
            [*p0, *p1] = period_s.to_be_bytes();
        }
        s
    }

    /// The key of a packed secret.
    pub(crate) fn key(s: &[u8; 32]) -> &[u8] {
        s.split_at(TOTP_KEY_LEN).0
    }

    /// `(digits, period_s)` of a packed secret; 6 digits / 30 s if they are not ones an
    /// authenticator app can follow (never the case for what [`TotpSecret::pack`] was given
    /// by the engine).
    pub(crate) fn params(s: &[u8; 32]) -> (u8, u16) {
        match s.split_at(TOTP_KEY_LEN).1 {
            [d @ (6 | 8), p0, p1, ..] => {
                let period = u16::from_be_bytes([*p0, *p1]);
                if (1..=TOTP_MAX_PERIOD_S).contains(&period) {
                    (*d, period)
                } else {
                    (6, 30)
                }
            }
            _ => (6, 30),
        }
    }
}

/// Expiry timers of one shard: a min-heap of `(open_until_ms, slot)` holding at most one
/// entry per token (memory is bounded by the number of tokens, however often they reopen).
pub(crate) type Timers = std::collections::BinaryHeap<std::cmp::Reverse<(u64, u32)>>;

/// Schedules the token's expiry if it is open and has no timer yet.
pub(crate) fn schedule_expiry(timers: &mut Timers, e: &mut TokenEntry, slot: u32) {
    if e.state == TokenState::Open && e.flags & FLAG_TIMER == 0 {
        timers.push(std::cmp::Reverse((e.open_until_ms, slot)));
        e.flags |= FLAG_TIMER;
    }
}

/// A paired token in memory: 232 bytes. Keys and verifiers are zeroized when the entry is
/// overwritten or dropped (see `Drop`). Cold data (username) lives in storage only.
///
/// Field order is the memory layout (`repr(C)`): what every packet touches (id, counters,
/// times, flags, the compact replay window, both packet keys: the first 128 bytes) comes
/// first, so that STATUS and CLOSE read two cache lines of the entry rather than all four.
/// The last duress use's time (written only by a duress authentication) comes last.
#[derive(Clone)]
#[repr(C)]
pub(crate) struct TokenEntry {
    pub id: [u8; 16],
    pub highest: u64,
    pub offset_ms: i64,
    pub open_until_ms: u64,
    pub last_seen_s: u32,
    pub otp_last_step: u32,
    pub service: u16,
    pub state: TokenState,
    pub failures: u8,
    pub flags: u8,
    pub otp_drift: i8,
    /// The operation of the last duress use ([`crate::DuressOp::byte`]), 0 if none (in
    /// what was padding before `version`).
    pub duress_op: u8,
    /// Bumped at every persisted change: storage keeps the newest version of a token's state
    /// even when two threads' group commits land in the other order.
    pub version: u32,
    /// The replay window's counters just below `highest` (`zoftoken_proto::replay`'s compact
    /// form; all seen after a restart). Meaningless while [`FLAG_HAS_WINDOW`] is set: the
    /// shard's window map then holds the whole window.
    pub recent: u32,
    pub d2s: zoftoken_proto::aead::PacketKey,
    pub s2d: zoftoken_proto::aead::PacketKey,
    pub pin: [u8; 32],
    pub duress: [u8; 32],
    pub secret: [u8; 32],
    /// When the last duress use was (Unix ms); meaningful when `duress_op` is not 0.
    pub duress_ms: u64,
}

impl Drop for TokenEntry {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.secret.zeroize();
        self.pin.zeroize();
        self.duress.zeroize();
    }
}

impl TokenEntry {
    /// The state as seen at `now`: an open token whose window ended reads closed.
    pub(crate) fn effective_state(&self, now_ms: u64) -> TokenState {
        if self.state == TokenState::Open && self.open_until_ms <= now_ms {
            TokenState::Closed
        } else {
            self.state
        }
    }

    pub(crate) fn has_duress(&self) -> bool {
        self.flags & FLAG_HAS_DURESS != 0
    }

    /// The last duress use, if any.
    pub(crate) fn last_duress(&self) -> Option<crate::DuressUse> {
        crate::DuressOp::from_byte(self.duress_op).map(|operation| crate::DuressUse {
            time_ms: self.duress_ms,
            operation,
        })
    }

    /// Records a duress use (kept until the token is deleted).
    pub(crate) fn set_last_duress(&mut self, d: Option<crate::DuressUse>) {
        self.duress_op = d.map_or(0, |d| d.operation.byte());
        self.duress_ms = d.map_or(0, |d| d.time_ms);
    }

    pub(crate) fn kind(&self) -> TokenKind {
        if self.flags & FLAG_TOTP != 0 {
            TokenKind::Totp
        } else {
            TokenKind::App
        }
    }

    /// Failed authentications left before the token blocks: `3 − failures`, and 0 while it
    /// is blocked, whether by failures or by an administrator (whose block leaves the
    /// failure count as it was).
    pub(crate) fn attempts_left(&self) -> u8 {
        if self.state == TokenState::Blocked {
            0
        } else {
            MAX_FAILURES.saturating_sub(self.failures)
        }
    }
}

/// An event of `kind` about the token in `e` at `now_ms`, numbered for its token (the caller
/// holds the lock that orders the token's changes).
pub(crate) fn event(kind: EventKind, e: &TokenEntry, now_ms: u64, actor: Actor) -> Event {
    Event {
        kind,
        token_id: TokenId(e.id),
        service: e.service,
        time_ms: now_ms,
        actor,
        open_until_ms: (e.effective_state(now_ms) == TokenState::Open).then_some(e.open_until_ms),
        duress: false,
        tx_id: None,
        operation: None,
        sequence: crate::event::next_sequence(&TokenId(e.id)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn entry_is_compact() {
        assert_eq!(size_of::<super::TokenEntry>(), 232);
    }

    #[test]
    fn totp_secrets_keep_key_and_parameters() {
        use super::TotpSecret;
        let key = [0xA5; super::TOTP_KEY_LEN];
        let s = TotpSecret::pack(&key, 8, 60);
        assert_eq!(TotpSecret::key(&s), &key);
        assert_eq!(TotpSecret::params(&s), (8, 60));
        assert_eq!(&s[23..], &[0; 9]);
        // Parameters no authenticator app follows read as the defaults.
        assert_eq!(TotpSecret::params(&TotpSecret::pack(&key, 7, 30)), (6, 30));
        assert_eq!(TotpSecret::params(&TotpSecret::pack(&key, 8, 0)), (6, 30));
        assert_eq!(TotpSecret::params(&TotpSecret::pack(&key, 8, 301)), (6, 30));
    }

    #[test]
    fn totp_parameters_follow_the_service_where_an_app_can() {
        use zoftoken_proto::codes::OtpParams;
        use zoftoken_proto::wire::Alphabet::{Base32, Digits};
        let p = |length, period_s, alphabet| {
            super::totp_params(OtpParams {
                length,
                period_s,
                alphabet,
            })
        };
        assert_eq!(p(6, 30, Digits), (6, 30));
        assert_eq!(p(8, 60, Digits), (8, 60));
        assert_eq!(p(8, 300, Digits), (8, 300));
        assert_eq!(p(8, 301, Digits), (6, 30));
        assert_eq!(p(7, 30, Digits), (6, 30));
        assert_eq!(p(4, 15, Digits), (6, 30));
        assert_eq!(p(8, 60, Base32), (6, 30));
    }
}
