//! A cursor that turns fuzz bytes into values: every read succeeds (zeroes
//! once the bytes run out), so a target never has to give up on short input.

/// Fuzz bytes, consumed front to back.
pub struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    /// Read from the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { rest: data }
    }

    /// The bytes not consumed yet.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// Up to `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = tail;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    /// A byte.
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
    /// A little-endian u128.
    pub fn u128(&mut self) -> u128 {
        u128::from_le_bytes(self.array())
    }
    /// A bool (low bit of a byte).
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    /// A short string: a length byte (at most `max`), then that many bytes
    /// (lossily UTF-8).
    pub fn string(&mut self, max: usize) -> String {
        let n = usize::from(self.u8()).min(max);
        String::from_utf8_lossy(self.bytes(n)).into_owned()
    }
}
