//! An array of atomics that takes memory only where it was written: chunks of
//! [`CHUNK`] entries, each allocated on its first write. A read of an entry in a
//! chunk never written is the default (zero) and allocates nothing, so an empty
//! 1 TiB store costs a few KiB of chunk slots, not 4 bytes for every page it could
//! hold; the store's allocator fills pages from the bottom up, so the chunks in use
//! follow the pages in use.

use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::OnceLock;

/// Entries per chunk (a power of two).
pub const CHUNK: u64 = 1 << 16;

pub struct Sparse<A> {
    len: u64,
    chunks: Box<[OnceLock<Box<[A]>>]>,
}

impl<A: Default> Sparse<A> {
    pub fn new(len: u64) -> Sparse<A> {
        Sparse {
            len,
            chunks: (0..len.div_ceil(CHUNK)).map(|_| OnceLock::new()).collect(),
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entry `i` if its chunk was ever written (else it holds the default).
    /// Panics if `i` is out of bounds, as a slice index would.
    pub fn get(&self, i: u64) -> Option<&A> {
        assert!(i < self.len, "index {i} beyond {} entries", self.len);
        self.chunks[(i / CHUNK) as usize]
            .get()
            .map(|c| &c[(i % CHUNK) as usize])
    }

    /// Entry `i`, allocating its chunk if this is its first write.
    pub fn entry(&self, i: u64) -> &A {
        assert!(i < self.len, "index {i} beyond {} entries", self.len);
        let chunk = self.chunks[(i / CHUNK) as usize]
            .get_or_init(|| (0..CHUNK).map(|_| A::default()).collect());
        &chunk[(i % CHUNK) as usize]
    }

    /// The chunk holding entries `[k * CHUNK, (k + 1) * CHUNK)`, if ever written.
    pub fn chunk(&self, k: u64) -> Option<&[A]> {
        self.chunks[k as usize].get().map(|c| &c[..])
    }

    pub fn chunk_count(&self) -> u64 {
        self.chunks.len() as u64
    }
}

/// Reference counts, one per page.
pub type Counts = Sparse<AtomicU32>;
/// A bitmap in words of 64 bits.
pub type Bits = Sparse<AtomicU64>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn reads_allocate_nothing_and_writes_allocate_one_chunk() {
        let s: Counts = Sparse::new(10 * CHUNK + 5);
        assert_eq!(s.chunk_count(), 11);
        assert!(s.get(3 * CHUNK + 7).is_none());
        s.entry(3 * CHUNK + 7).store(9, Ordering::Relaxed);
        assert_eq!(s.get(3 * CHUNK + 7).unwrap().load(Ordering::Relaxed), 9);
        assert_eq!(s.get(3 * CHUNK).unwrap().load(Ordering::Relaxed), 0);
        let written = (0..s.chunk_count()).filter(|&k| s.chunk(k).is_some());
        assert_eq!(written.collect::<Vec<_>>(), vec![3]);
        s.entry(10 * CHUNK + 4).store(1, Ordering::Relaxed);
        assert_eq!(s.chunk(10).unwrap().len() as u64, CHUNK);
    }

    #[test]
    #[should_panic(expected = "beyond")]
    fn an_index_past_the_end_panics() {
        let s: Bits = Sparse::new(5);
        s.get(5);
    }
}
