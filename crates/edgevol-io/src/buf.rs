//! 4 KiB-aligned buffers for O_DIRECT I/O, in safe code: over-allocate and
//! expose the aligned window.

/// Alignment (and size granularity) of direct I/O: 4 KiB.
pub const BLOCK: usize = 4096;

/// A zero-initialised byte buffer whose start is aligned to [`BLOCK`].
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn zeroed(len: usize) -> Self {
        let storage = vec![0u8; len + BLOCK];
        let start = storage.as_ptr().align_offset(BLOCK);
        // align_offset on u8 pointers always succeeds and is < BLOCK.
        debug_assert!(start < BLOCK);
        AlignedBuf {
            storage,
            start,
            len,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The aligned bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// The aligned bytes, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }

    /// Shrink or grow (zero-filling) to `len` bytes, reallocating only when
    /// the capacity is too small.
    pub fn resize(&mut self, len: usize) {
        if self.start + len > self.storage.len() {
            let mut bigger = AlignedBuf::zeroed(len);
            bigger.as_mut_slice()[..self.len].copy_from_slice(self.as_slice());
            *self = bigger;
        } else {
            if len > self.len {
                self.storage[self.start + self.len..self.start + len].fill(0);
            }
            self.len = len;
        }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_resizable() {
        let mut b = AlignedBuf::zeroed(8192);
        assert_eq!(b.as_slice().as_ptr() as usize % BLOCK, 0);
        b.as_mut_slice()[0] = 7;
        b.resize(100_000);
        assert_eq!(b.as_slice()[0], 7);
        assert_eq!(b.as_slice().as_ptr() as usize % BLOCK, 0);
        assert!(b.as_slice()[8192..].iter().all(|&x| x == 0));
        b.resize(10);
        assert_eq!(b.len(), 10);
    }
}
