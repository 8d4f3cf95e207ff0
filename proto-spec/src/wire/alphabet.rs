//! The one-time-code alphabets (SPEC.md §10.2): the byte that names one in PAIR_INIT's reply,
//! and its symbols. The codes module draws and reads codes in them.

/// The 32 symbols of the unambiguous alphabet: `0-9A-Z` without `I L O U`.
pub const BASE32_SYMBOLS: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// One-time-code alphabets (SPEC.md §10.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Alphabet {
    /// `0-9`.
    Digits = 0,
    /// The unambiguous 32-symbol alphabet `0-9A-Z` without `I L O U`.
    Base32 = 1,
}

impl Alphabet {
    /// The alphabet for a byte, or `None` when unknown.
    pub fn from_byte(byte: u8) -> Option<Alphabet> {
        match byte {
            0 => Some(Alphabet::Digits),
            1 => Some(Alphabet::Base32),
            _ => None,
        }
    }

    /// The symbols, in order.
    pub fn symbols(self) -> &'static [u8] {
        match self {
            Alphabet::Digits => b"0123456789",
            Alphabet::Base32 => BASE32_SYMBOLS,
        }
    }
}
