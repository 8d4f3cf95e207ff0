//! Byte-level helpers shared by every layout of the crate (write batches, records, webhook
//! records): a bounds-checked [`Reader`] that never panics, and the short-string writer.
//! Nothing here knows a record or a column family.

/// A bounds-checked reader over a value: every read returns `None` past the end.
pub(crate) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// A reader at the start of `b`.
    pub fn new(b: &'a [u8]) -> Reader<'a> {
        Reader(b)
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }

    /// The next byte.
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    /// The next big-endian `u16`.
    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.array()?))
    }

    /// The next big-endian `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.array()?))
    }

    /// A string written by [`put_short_str`]: a length byte, then UTF-8.
    pub fn short_str(&mut self) -> Option<&'a str> {
        let n = usize::from(self.u8()?);
        std::str::from_utf8(self.bytes(n)?).ok()
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    /// The next byte, which must be `expected` (a format or tag byte).
    pub fn tag(&mut self, expected: u8) -> Option<()> {
        (self.u8()? == expected).then_some(())
    }

    /// Whether everything was read.
    pub fn end(&self) -> Option<()> {
        self.0.is_empty().then_some(())
    }
}

/// Appends a length byte and at most 255 bytes of `s`. Service names are at most 255 bytes
/// (validated); longer input is cut, never panics.
pub(crate) fn put_short_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes().get(..255).unwrap_or(s.as_bytes());
    out.push(b.len() as u8);
    out.extend_from_slice(b);
}
