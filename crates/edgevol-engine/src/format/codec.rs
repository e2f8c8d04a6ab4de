//! Bounds-checked little-endian encoding. Every decoder reads through
//! [`Reader`], so bytes from disk can never cause a panic, only a
//! [`DecodeError`].

use crate::error::DecodeError;

/// A cursor over bytes that fails with [`DecodeError::Truncated`] instead of panicking.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Read from the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Take the next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    /// Skip `n` bytes.
    pub fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        self.bytes(n).map(|_| ())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.bytes(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// A u8.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    /// A little-endian u16.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A little-endian u128.
    pub fn u128(&mut self) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.array()?))
    }
}

/// Appends little-endian values to a byte vector.
pub struct Writer<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    /// Append to `buf`.
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        Writer { buf }
    }
    /// Append bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    /// Append `n` zero bytes.
    pub fn zeros(&mut self, n: usize) {
        self.buf.resize(self.buf.len() + n, 0);
    }
    /// Append a u8.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// Append a u16.
    pub fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    /// Append a u32.
    pub fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    /// Append a u64.
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    /// Append a u128.
    pub fn u128(&mut self, v: u128) {
        self.bytes(&v.to_le_bytes());
    }
}

/// crc32c of `data` with the 4 bytes at `[field, field + 4)` treated as zero.
pub fn crc_with_hole(data: &[u8], field: usize) -> u32 {
    let (a, rest) = data.split_at(field.min(data.len()));
    let b = rest.get(4..).unwrap_or(&[]);
    let c = crc32c::crc32c_append(crc32c::crc32c(a), &[0u8; 4]);
    crc32c::crc32c_append(c, b)
}

/// Store `v` little-endian at `buf[at..at + 4]` (an encoder's own buffer).
pub fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_never_panics() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16().unwrap(), 0x0201);
        assert_eq!(r.u32(), Err(DecodeError::Truncated));
        assert_eq!(r.bytes(usize::MAX), Err(DecodeError::Truncated));
    }

    #[test]
    fn crc_hole_ignores_field() {
        let mut a = vec![7u8; 64];
        let c1 = crc_with_hole(&a, 8);
        put_u32(&mut a, 8, 0xdead_beef);
        assert_eq!(crc_with_hole(&a, 8), c1);
        a[0] = 0;
        assert_ne!(crc_with_hole(&a, 8), c1);
    }
}
