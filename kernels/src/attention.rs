//! Causal self-attention over a paged `f16` KV cache, for a batch of
//! query rows from sequences of different lengths, with grouped-query heads
//! read in place (no K/V copies per query head).
//!
//! The cache of one layer is a pool of fixed-size blocks laid out
//! `[block][position in block][kv_head][head_dim]`; a sequence's block
//! table lists its blocks in order, so position `p` lives in block
//! `table[p / block_size]` at offset `p % block_size`. Each (query row,
//! head) pair is an independent task: scores against every visible
//! position, a softmax, then a weighted sum of the values. A row's result
//! does not depend on which other rows share the batch.

use std::cell::RefCell;

use half::f16;

use crate::cpu::{Isa, isa};
use crate::pool::{SyncPtr, ThreadPool};

/// Shape of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (divides `n_heads`).
    pub n_kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Score scale, usually `1 / sqrt(head_dim)`.
    pub scale: f32,
}

/// One layer's paged cache.
#[derive(Debug, Clone, Copy)]
pub struct PagedKv<'a> {
    /// Keys: `blocks x block_size x n_kv_heads x head_dim`.
    pub k: &'a [f16],
    /// Values, laid out like `k`.
    pub v: &'a [f16],
    /// Positions per block.
    pub block_size: usize,
}

/// One query row of a batch: the row attends to positions `0..=pos` of the
/// sequence whose block table starts at `tables[table]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryRow {
    /// Offset of the sequence's block table in the flat `tables` slice.
    pub table: u32,
    /// The row's position in its sequence.
    pub pos: u32,
}

/// Per-thread scratch of one task: the scores of a group's heads, their
/// queries, and one block of keys or values converted to f32.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    q: Vec<f32>,
    rows: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Attention for a batch of query rows.
///
/// `q` holds `rows.len() x n_heads x head_dim` values (already rotated);
/// `tables` holds the block tables of the batch's sequences back to back
/// (each row names the offset of its own); `out` receives
/// `rows.len() x n_heads x head_dim` values. Every block a row reads must
/// already hold that row's keys and values.
pub fn paged_attention(
    pool: &ThreadPool,
    s: &AttnShape,
    q: &[f32],
    kv: PagedKv<'_>,
    tables: &[u32],
    rows: &[QueryRow],
    out: &mut [f32],
) {
    let (nh, nkv, hd) = (s.n_heads, s.n_kv_heads, s.head_dim);
    let n_tok = rows.len();
    assert_eq!(q.len(), n_tok * nh * hd);
    assert_eq!(out.len(), q.len());
    assert!(nh % nkv == 0 && hd <= 256 && kv.block_size > 0);
    assert_eq!(kv.k.len(), kv.v.len());
    let width = nkv * hd;
    let bs = kv.block_size;
    let blocks_in_pool = kv.k.len() / (bs * width);
    for r in rows {
        let last = r.table as usize + r.pos as usize / bs;
        assert!(
            last < tables.len(),
            "block table too short for position {}",
            r.pos
        );
    }
    assert!(
        tables.iter().all(|&b| (b as usize) < blocks_in_pool),
        "block id outside the pool"
    );
    let group = nh / nkv;
    let isa = isa();
    let outp = SyncPtr(out.as_mut_ptr());
    // One task per (row, KV head): the heads sharing a KV head read each
    // block of keys and values once, converted to f32 once.
    pool.run(n_tok * nkv, &|task| {
        let (t, g) = (task / nkv, task % nkv);
        let row = rows[t];
        let table = &tables[row.table as usize..];
        let len = row.pos as usize + 1;
        // Visible positions block by block: `(first index, count)` runs
        // that are contiguous in the pool.
        let runs = table
            .iter()
            .take(len.div_ceil(bs))
            .enumerate()
            .map(|(i, &b)| (b as usize * bs * width + g * hd, bs.min(len - i * bs)));
        let first = t * nh + g * group;
        // SAFETY: task (t, g) owns exactly the slices of `out` of row `t`'s
        // heads `g * group..(g + 1) * group`, which are contiguous.
        let o = unsafe { std::slice::from_raw_parts_mut(outp.get().add(first * hd), group * hd) };
        o.fill(0.0);
        SCRATCH.with_borrow_mut(|sc| {
            let Scratch {
                scores,
                q: qh,
                rows: buf,
            } = sc;
            // Round the queries through f16 as llama.cpp does before its K dot.
            qh.clear();
            qh.extend(
                q[first * hd..(first + group) * hd]
                    .iter()
                    .map(|x| f16::from_f32(*x).to_f32()),
            );
            scores.clear();
            scores.resize(group * len, 0.0);
            buf.resize(bs * hd, 0.0);
            let mut at = 0;
            for (base, n) in runs.clone() {
                to_f32_rows(
                    isa,
                    &kv.k[base..base + (n - 1) * width + hd],
                    width,
                    n,
                    hd,
                    buf,
                );
                for h in 0..group {
                    let out = &mut scores[h * len + at..h * len + at + n];
                    dots(isa, &buf[..n * hd], &qh[h * hd..(h + 1) * hd], out);
                }
                at += n;
            }
            for h in 0..group {
                let sh = &mut scores[h * len..(h + 1) * len];
                for x in sh.iter_mut() {
                    *x *= s.scale;
                }
                crate::ops::softmax(sh);
                // llama.cpp multiplies V by the probabilities rounded to f16.
                for p in sh.iter_mut() {
                    *p = f16::from_f32(*p).to_f32();
                }
            }
            let mut at = 0;
            for (base, n) in runs {
                to_f32_rows(
                    isa,
                    &kv.v[base..base + (n - 1) * width + hd],
                    width,
                    n,
                    hd,
                    buf,
                );
                for h in 0..group {
                    let w = &scores[h * len + at..h * len + at + n];
                    weighted_rows(isa, &mut o[h * hd..(h + 1) * hd], w, &buf[..n * hd]);
                }
                at += n;
            }
        });
    });
}

/// `n` rows of `hd` f16 values, `stride` apart, into `dst` as f32.
#[inline]
fn to_f32_rows(isa: Isa, src: &[f16], stride: usize, n: usize, hd: usize, dst: &mut [f32]) {
    assert!(n == 0 || (src.len() >= (n - 1) * stride + hd && dst.len() >= n * hd));
    #[cfg(target_arch = "x86_64")]
    if isa.avx2() {
        // SAFETY: AVX2/FMA/F16C present (isa); extents asserted above.
        return unsafe { crate::cpu::avx2::rows_f16_to_f32(src, stride, n, hd, dst) };
    }
    let _ = isa;
    for p in 0..n {
        for d in 0..hd {
            dst[p * hd + d] = src[p * stride + d].to_f32();
        }
    }
}

/// `out[p] = k[p * hd..][..hd] . q` with `hd = q.len()`.
#[inline]
fn dots(isa: Isa, k: &[f32], q: &[f32], out: &mut [f32]) {
    let hd = q.len();
    assert!(k.len() >= out.len() * hd);
    #[cfg(target_arch = "x86_64")]
    if isa.avx2() {
        // SAFETY: AVX2/FMA/F16C present (isa); extent asserted above.
        return unsafe { crate::cpu::avx2::dots_f32(k, q, out) };
    }
    let _ = isa;
    for (p, o) in out.iter_mut().enumerate() {
        *o = k[p * hd..(p + 1) * hd]
            .iter()
            .zip(q)
            .map(|(a, b)| a * b)
            .sum();
    }
}

/// `out[d] += sum_p w[p] * v[p * hd + d]` with `hd = out.len()`.
#[inline]
fn weighted_rows(isa: Isa, out: &mut [f32], w: &[f32], v: &[f32]) {
    let hd = out.len();
    assert!(v.len() >= w.len() * hd);
    #[cfg(target_arch = "x86_64")]
    if isa.avx2() {
        // SAFETY: AVX2/FMA/F16C present (isa); extent asserted above.
        return unsafe { crate::cpu::avx2::weighted_rows_f32(out, w, v) };
    }
    let _ = isa;
    for (p, &wp) in w.iter().enumerate() {
        for (o, x) in out.iter_mut().zip(&v[p * hd..(p + 1) * hd]) {
            *o += wp * x;
        }
    }
}

/// The plain reference: f64 attention on the same inputs.
pub fn attention_reference(
    s: &AttnShape,
    q: &[f32],
    k: &[f16],
    v: &[f16],
    start: usize,
    n_tok: usize,
) -> Vec<f32> {
    let (nh, nkv, hd) = (s.n_heads, s.n_kv_heads, s.head_dim);
    let mut out = vec![0f32; q.len()];
    for t in 0..n_tok {
        for h in 0..nh {
            let g = h / (nh / nkv);
            let qh = &q[(t * nh + h) * hd..(t * nh + h + 1) * hd];
            let len = start + t + 1;
            let scores: Vec<f64> = (0..len)
                .map(|j| {
                    let kj = &k[(j * nkv + g) * hd..(j * nkv + g + 1) * hd];
                    kj.iter()
                        .zip(qh)
                        .map(|(a, b)| a.to_f64() * *b as f64)
                        .sum::<f64>()
                        * s.scale as f64
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..hd {
                let acc: f64 = (0..len)
                    .map(|j| e[j] / z * v[(j * nkv + g) * hd + d].to_f64())
                    .sum();
                out[(t * nh + h) * hd + d] = acc as f32;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// Tolerance 2e-3 absolute: the query and the probabilities are rounded
    /// to f16 (relative 5e-4) as llama.cpp does; everything else is f32.
    /// Three sequences of different lengths share one batch; their blocks
    /// are scattered through the pool in shuffled order.
    /// Head sizes 64 (the register-tiled path) and 40 (its scalar tail).
    #[test]
    fn paged_attention_matches_reference_with_gqa() {
        for hd in [64, 40] {
            check_paged_attention(hd);
        }
    }

    fn check_paged_attention(hd: usize) {
        let mut rng = StdRng::seed_from_u64(3);
        let s = AttnShape {
            n_heads: 6,
            n_kv_heads: 2,
            head_dim: hd,
            scale: 0.125,
        };
        let (bs, width) = (4, 2 * hd);
        let pool = ThreadPool::new(2);
        // (cached positions before the batch, query rows in the batch)
        let seqs = [(0usize, 7usize), (5, 1), (9, 3), (0, 1)];
        let n_blocks: usize = seqs
            .iter()
            .map(|&(s, n)| (s + n).div_ceil(bs))
            .sum::<usize>()
            + 3;
        let mut ids: Vec<u32> = (0..n_blocks as u32).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, rng.random_range(0..=i));
        }
        let mut k = vec![f16::ZERO; n_blocks * bs * width];
        let mut v = k.clone();
        let (mut tables, mut rows, mut q, mut expect) = (vec![], vec![], vec![], vec![]);
        let mut next = ids.into_iter();
        for &(start, n_tok) in &seqs {
            let total = start + n_tok;
            let table: Vec<u32> = (0..total.div_ceil(bs))
                .map(|_| next.next().unwrap())
                .collect();
            let rnd = |rng: &mut StdRng| -> Vec<f16> {
                (0..total * width)
                    .map(|_| f16::from_f32(rng.random_range(-1.0..1.0)))
                    .collect()
            };
            let (kc, vc) = (rnd(&mut rng), rnd(&mut rng));
            for p in 0..total {
                let at = (table[p / bs] as usize * bs + p % bs) * width;
                k[at..at + width].copy_from_slice(&kc[p * width..(p + 1) * width]);
                v[at..at + width].copy_from_slice(&vc[p * width..(p + 1) * width]);
            }
            let qs: Vec<f32> = (0..n_tok * 6 * hd)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            expect.extend(attention_reference(&s, &qs, &kc, &vc, start, n_tok));
            for t in 0..n_tok {
                rows.push(QueryRow {
                    table: tables.len() as u32,
                    pos: (start + t) as u32,
                });
            }
            tables.extend(table);
            q.extend(qs);
        }
        let mut out = vec![0f32; q.len()];
        let kv = PagedKv {
            k: &k,
            v: &v,
            block_size: bs,
        };
        paged_attention(&pool, &s, &q, kv, &tables, &rows, &mut out);
        for (i, (a, b)) in out.iter().zip(&expect).enumerate() {
            assert!((a - b).abs() < 2e-3, "{a} vs {b} at {i}");
        }
        // A row's result does not depend on its batch: each row alone.
        let row_len = 6 * hd;
        for (t, r) in rows.iter().enumerate() {
            let mut one = vec![0f32; row_len];
            let qr = &q[t * row_len..(t + 1) * row_len];
            paged_attention(&pool, &s, qr, kv, &tables, &[*r], &mut one);
            assert_eq!(one, out[t * row_len..(t + 1) * row_len], "row {t}");
        }
    }
}
