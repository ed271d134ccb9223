//! The paged KV cache: one preallocated pool of fixed-size blocks shared by
//! every sequence, with reference counts, copy-on-write, and a prefix cache
//! of full blocks keyed by content.
//!
//! A block holds [`BLOCK_SIZE`] positions of every layer's keys and values
//! (f16, like llama.cpp's cache). A sequence owns a block table; nothing is
//! allocated or concatenated per token.
//!
//! Prefix caching: when a block fills, it is registered under a hash of its
//! tokens chained from the previous block's hash (sha256), so equal hashes
//! mean equal prefixes. A released block keeps its contents and its hash
//! while it sits in the free queue; a later request with the same prefix
//! takes it back ([`BlockPool::lookup`]). Allocation takes the free queue's
//! head, which is the least recently released block, so eviction is least
//! recently used.

use std::collections::HashMap;

use half::f16;
use sha2::{Digest, Sha256};

use crate::config::ModelConfig;

/// Positions per block.
pub const BLOCK_SIZE: usize = 16;

/// Content hash of a full block and everything before it.
pub type BlockHash = [u8; 32];

const NIL: u32 = u32::MAX;

/// The hash of a full block of `tokens` following the block hashed `parent`.
pub fn block_hash(parent: Option<&BlockHash>, tokens: &[u32]) -> BlockHash {
    let mut h = Sha256::new();
    h.update(parent.unwrap_or(&[0u8; 32]));
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    h.finalize().into()
}

/// Prefix-cache counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    /// Full prompt blocks looked up.
    pub queries: u64,
    /// Of those, found in the cache.
    pub hits: u64,
}

/// The block pool. See the module docs.
pub struct BlockPool {
    k: Vec<Vec<f16>>,
    v: Vec<Vec<f16>>,
    width: usize,
    refs: Vec<u32>,
    hashes: Vec<Option<BlockHash>>,
    by_hash: HashMap<BlockHash, u32>,
    // The free queue: a doubly linked list threaded through block ids,
    // least recently released first.
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
    free: usize,
    stats: PrefixStats,
}

impl std::fmt::Debug for BlockPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockPool")
            .field("blocks", &self.refs.len())
            .field("free", &self.free)
            .field("cached", &self.by_hash.len())
            .finish()
    }
}

impl BlockPool {
    /// Bytes one block takes for `config`'s model (keys and values of every
    /// layer).
    pub fn bytes_per_block(config: &ModelConfig) -> usize {
        2 * config.n_layers * BLOCK_SIZE * config.n_kv_heads * config.head_dim * 2
    }

    /// A pool of `blocks` blocks. The memory is reserved zeroed, so pages
    /// are only touched as blocks are first written.
    pub fn new(config: &ModelConfig, blocks: usize) -> Self {
        assert!(
            blocks > 0 && blocks < NIL as usize,
            "block count out of range"
        );
        let width = config.n_kv_heads * config.head_dim;
        let mk = || {
            (0..config.n_layers)
                .map(|_| {
                    // Zeroed allocations come from calloc: lazily mapped.
                    let bits = vec![0u16; blocks * BLOCK_SIZE * width];
                    half::vec::HalfBitsVecExt::reinterpret_into::<f16>(bits)
                })
                .collect()
        };
        let n = blocks as u32;
        BlockPool {
            k: mk(),
            v: mk(),
            width,
            refs: vec![0; blocks],
            hashes: vec![None; blocks],
            by_hash: HashMap::new(),
            prev: (0..n).map(|i| if i == 0 { NIL } else { i - 1 }).collect(),
            next: (0..n)
                .map(|i| if i + 1 == n { NIL } else { i + 1 })
                .collect(),
            head: 0,
            tail: n - 1,
            free: blocks,
            stats: PrefixStats::default(),
        }
    }

    /// Blocks in the pool.
    pub fn capacity(&self) -> usize {
        self.refs.len()
    }

    /// Blocks no sequence holds (cached ones included: they can be evicted).
    pub fn free_blocks(&self) -> usize {
        self.free
    }

    /// Blocks held by at least one sequence.
    pub fn used_blocks(&self) -> usize {
        self.capacity() - self.free
    }

    /// Full blocks registered in the prefix cache (held or free).
    pub fn cached_blocks(&self) -> usize {
        self.by_hash.len()
    }

    /// Prefix-cache counters.
    pub fn prefix_stats(&self) -> PrefixStats {
        self.stats
    }

    /// How many sequences hold `block`.
    pub fn refs(&self, block: u32) -> u32 {
        self.refs[block as usize]
    }

    fn unlink(&mut self, b: u32) {
        let (p, n) = (self.prev[b as usize], self.next[b as usize]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[b as usize] = NIL;
        self.next[b as usize] = NIL;
        self.free -= 1;
    }

    fn push_back(&mut self, b: u32) {
        self.prev[b as usize] = self.tail;
        self.next[b as usize] = NIL;
        if self.tail == NIL {
            self.head = b;
        } else {
            self.next[self.tail as usize] = b;
        }
        self.tail = b;
        self.free += 1;
    }

    /// Takes a free block (evicting the least recently released cached
    /// block if it comes to that); `None` when every block is held.
    pub fn allocate(&mut self) -> Option<u32> {
        let b = self.head;
        if b == NIL {
            return None;
        }
        self.unlink(b);
        if let Some(h) = self.hashes[b as usize].take() {
            self.by_hash.remove(&h);
        }
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// Drops one holder of `block`; the last one returns it to the free
    /// queue (its contents stay findable by hash until it is reused).
    pub fn release(&mut self, block: u32) {
        let r = &mut self.refs[block as usize];
        assert!(*r > 0, "releasing a free block");
        *r -= 1;
        if *r == 0 {
            self.push_back(block);
        }
    }

    /// Adds a holder to a held block (a forked sequence sharing it).
    pub fn share(&mut self, block: u32) {
        assert!(self.refs[block as usize] > 0, "sharing a free block");
        self.refs[block as usize] += 1;
    }

    /// Finds a cached block by hash and takes a hold on it.
    pub fn lookup(&mut self, hash: &BlockHash) -> Option<u32> {
        self.stats.queries += 1;
        let b = *self.by_hash.get(hash)?;
        self.stats.hits += 1;
        if self.refs[b as usize] == 0 {
            self.unlink(b);
        }
        self.refs[b as usize] += 1;
        Some(b)
    }

    /// Registers a full block under its hash. When another block already
    /// holds the same content, this one stays unregistered.
    pub fn register(&mut self, block: u32, hash: BlockHash) {
        if self.hashes[block as usize].is_some() {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.by_hash.entry(hash) {
            e.insert(block);
            self.hashes[block as usize] = Some(hash);
        }
    }

    /// Makes `block` writable by one holder: returns it when it is held
    /// once, else a fresh copy of its first `positions` positions (the
    /// caller's hold on the original is dropped). `None` when no block is
    /// free for the copy.
    pub fn make_unique(&mut self, block: u32, positions: usize) -> Option<u32> {
        if self.refs[block as usize] == 1 && self.hashes[block as usize].is_none() {
            return Some(block);
        }
        let copy = self.allocate()?;
        let n = positions.min(BLOCK_SIZE) * self.width;
        let (src, dst) = (
            block as usize * BLOCK_SIZE * self.width,
            copy as usize * BLOCK_SIZE * self.width,
        );
        for layer in self.k.iter_mut().chain(self.v.iter_mut()) {
            layer.copy_within(src..src + n, dst);
        }
        self.release(block);
        Some(copy)
    }

    /// Writes rows of keys and values (`width` values each) of layer
    /// `layer`: row `i` goes to position `slots[i]` (block * BLOCK_SIZE +
    /// offset).
    pub(crate) fn write(&mut self, layer: usize, slots: &[u32], k: &[f32], v: &[f32]) {
        let w = self.width;
        for (i, &slot) in slots.iter().enumerate() {
            let at = slot as usize * w;
            for (dst, src) in self.k[layer][at..at + w].iter_mut().zip(&k[i * w..]) {
                *dst = f16::from_f32(*src);
            }
            for (dst, src) in self.v[layer][at..at + w].iter_mut().zip(&v[i * w..]) {
                *dst = f16::from_f32(*src);
            }
        }
    }

    /// One layer's keys and values, for the attention kernel.
    pub(crate) fn layer(&self, layer: usize) -> (&[f16], &[f16]) {
        (&self.k[layer], &self.v[layer])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_config;

    #[test]
    fn allocation_release_and_lru_eviction() {
        let mut p = BlockPool::new(&tiny_config(), 3);
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        let c = p.allocate().unwrap();
        assert_eq!(p.allocate(), None);
        assert_eq!((p.used_blocks(), p.free_blocks()), (3, 0));
        let (ha, hb) = (block_hash(None, &[1; 16]), block_hash(None, &[2; 16]));
        p.register(a, ha);
        p.register(b, hb);
        // Released in order b, a: b is the least recently released.
        p.release(b);
        p.release(a);
        assert_eq!(p.cached_blocks(), 2);
        // A hit takes a cached block out of the free queue.
        assert_eq!(p.lookup(&ha), Some(a));
        assert_eq!(p.free_blocks(), 1);
        // The next allocation evicts b (the only free block).
        assert_eq!(p.allocate(), Some(b));
        assert_eq!(p.lookup(&hb), None);
        assert_eq!(
            p.prefix_stats(),
            PrefixStats {
                queries: 2,
                hits: 1
            }
        );
        p.release(c);
        assert_eq!(p.allocate(), Some(c));
    }

    #[test]
    fn chained_hashes_differ_by_prefix() {
        let t = [7u32; 16];
        let h1 = block_hash(None, &t);
        assert_ne!(block_hash(Some(&h1), &t), h1);
        assert_eq!(block_hash(Some(&h1), &t), block_hash(Some(&h1), &t));
    }

    #[test]
    fn copy_on_write_copies_shared_blocks() {
        let cfg = tiny_config();
        let mut p = BlockPool::new(&cfg, 4);
        let w = cfg.n_kv_heads * cfg.head_dim;
        let a = p.allocate().unwrap();
        let k: Vec<f32> = (0..w).map(|i| i as f32).collect();
        p.write(0, &[a * BLOCK_SIZE as u32], &k, &k);
        // Held once and unregistered: written in place.
        assert_eq!(p.make_unique(a, 1), Some(a));
        p.share(a);
        let b = p.make_unique(a, 1).unwrap();
        assert_ne!(a, b);
        assert_eq!((p.refs(a), p.refs(b)), (1, 1));
        let (kl, _) = p.layer(0);
        let at = b as usize * BLOCK_SIZE * w;
        assert_eq!(kl[at + 5].to_f32(), 5.0);
    }
}
