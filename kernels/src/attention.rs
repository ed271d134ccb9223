//! Causal self-attention over an `f16` KV cache, with grouped-query heads
//! read in place (no K/V copies per query head).
//!
//! The cache of one layer is laid out `[position][kv_head][head_dim]`. Each
//! (query token, head) pair is an independent task: scores against every
//! visible position, a softmax, then a weighted sum of the values.

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

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Attention for `n_tok` query tokens at positions `start..start + n_tok`.
///
/// `q` holds `n_tok x n_heads x head_dim` values (already rotated); `k` and
/// `v` hold the layer's cache, at least `start + n_tok` positions; `out`
/// receives `n_tok x n_heads x head_dim` values.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &ThreadPool,
    s: &AttnShape,
    q: &[f32],
    k: &[f16],
    v: &[f16],
    start: usize,
    n_tok: usize,
    out: &mut [f32],
) {
    let (nh, nkv, hd) = (s.n_heads, s.n_kv_heads, s.head_dim);
    assert_eq!(q.len(), n_tok * nh * hd);
    assert_eq!(out.len(), q.len());
    assert!(k.len() >= (start + n_tok) * nkv * hd && v.len() >= (start + n_tok) * nkv * hd);
    assert!(nh % nkv == 0);
    let group = nh / nkv;
    let isa = isa();
    let outp = SyncPtr(out.as_mut_ptr());
    pool.run(n_tok * nh, &|task| {
        let (t, h) = (task / nh, task % nh);
        let g = h / group;
        let len = start + t + 1;
        // Round the query through f16 as llama.cpp does before its K dot.
        let mut qh = [0f32; 256];
        let qh = &mut qh[..hd.min(256)];
        for (d, x) in qh.iter_mut().zip(&q[(t * nh + h) * hd..]) {
            *d = f16::from_f32(*x).to_f32();
        }
        // SAFETY: task (t, h) owns exactly this head's slice of `out`.
        let o = unsafe { std::slice::from_raw_parts_mut(outp.get().add((t * nh + h) * hd), hd) };
        o.fill(0.0);
        SCORES.with_borrow_mut(|sc| {
            sc.clear();
            sc.resize(len, 0.0);
            for (j, sj) in sc.iter_mut().enumerate() {
                let kj = &k[(j * nkv + g) * hd..(j * nkv + g + 1) * hd];
                *sj = dot_f16(isa, kj, qh) * s.scale;
            }
            crate::ops::softmax(sc);
            for (j, &p) in sc.iter().enumerate() {
                let vj = &v[(j * nkv + g) * hd..(j * nkv + g + 1) * hd];
                // llama.cpp multiplies V by the probabilities rounded to f16.
                axpy_f16(isa, o, f16::from_f32(p).to_f32(), vj);
            }
        });
    });
}

#[inline]
fn dot_f16(isa: Isa, k: &[f16], q: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: AVX2/FMA/F16C present (isa).
        return unsafe { crate::cpu::avx2::dot_f16_f32(k, q) };
    }
    let _ = isa;
    k.iter().zip(q).map(|(a, b)| a.to_f32() * b).sum()
}

#[inline]
fn axpy_f16(isa: Isa, out: &mut [f32], w: f32, v: &[f16]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: AVX2/FMA/F16C present (isa).
        return unsafe { crate::cpu::avx2::axpy_f16(out, w, v) };
    }
    let _ = isa;
    for (o, x) in out.iter_mut().zip(v) {
        *o += w * x.to_f32();
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
    #[test]
    fn attention_matches_reference_with_gqa() {
        let mut rng = StdRng::seed_from_u64(3);
        let s = AttnShape {
            n_heads: 6,
            n_kv_heads: 2,
            head_dim: 64,
            scale: 0.125,
        };
        let pool = ThreadPool::new(2);
        for (start, n_tok) in [(0, 1), (0, 7), (5, 1), (9, 3)] {
            let total = start + n_tok;
            let q: Vec<f32> = (0..n_tok * 6 * 64)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let k: Vec<f16> = (0..total * 2 * 64)
                .map(|_| f16::from_f32(rng.random_range(-1.0..1.0)))
                .collect();
            let v: Vec<f16> = (0..total * 2 * 64)
                .map(|_| f16::from_f32(rng.random_range(-1.0..1.0)))
                .collect();
            let mut out = vec![0f32; q.len()];
            attention(&pool, &s, &q, &k, &v, start, n_tok, &mut out);
            let r = attention_reference(&s, &q, &k, &v, start, n_tok);
            for (a, b) in out.iter().zip(&r) {
                assert!(
                    (a - b).abs() < 2e-3,
                    "{a} vs {b} at start={start} n={n_tok}"
                );
            }
        }
    }
}
