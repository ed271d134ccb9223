//! AVX-512 (F, BW) + VNNI quantized dot products. Every function here is
//! `unsafe` because it must only be called after [`super::isa`] returned
//! [`super::Isa::Avx512`]; callers state that in a `SAFETY` comment.
//!
//! The kernel multiplies one weight row with up to eight activation rows and
//! takes two 32-element blocks per 512-bit register. `vpdpbusd` multiplies
//! unsigned by signed bytes: the weights go in unsigned (`Q4_0` and `Q4_1`:
//! the nibble `q` in `0..16`; `Q8_0`: `q + 128`) and the activations signed.
//! The offset (`8` for `Q4_0`, `128` for `Q8_0`) is taken back in integers:
//! each product starts from `-offset * (sums of 4 activations)`, stored with
//! the activations ([`WideActs`]), so every block's integer dot product is
//! exactly the one the AVX2 and scalar paths compute. Per activation row and
//! pair of blocks the loop does one `vpdpbusd`, one permute (the scales),
//! one conversion and one FMA.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use crate::quant::{QK, WeightType};

/// Activations laid out for this kernel, row after row: the `cols`
/// quantized values (`q`), `-8` and `-128` times each sum of 4 consecutive
/// values (`n8`, `n128`: the starting points of `Q4_0` and `Q8_0` products),
/// each block's scale (`d`) and `d * sum(q)` (`s`, for `Q4_1`'s minimum).
#[derive(Debug, Default, Clone)]
pub(crate) struct WideActs {
    pub(crate) q: Vec<i8>,
    pub(crate) n8: Vec<i32>,
    pub(crate) n128: Vec<i32>,
    pub(crate) d: Vec<f32>,
    pub(crate) s: Vec<f32>,
    pub(crate) nb: usize,
}

impl WideActs {
    /// Fills the layout from the blocks of `n` rows of `nb` blocks each.
    #[cfg(test)]
    pub(crate) fn fill(&mut self, blocks: &[crate::quant::BlockQ8], nb: usize) {
        let rows = blocks.len() / nb;
        let writer = self.resize(rows, nb);
        for t in 0..rows {
            // SAFETY: row `t` is below `rows`, written once.
            unsafe { writer.write(t, &blocks[t * nb..(t + 1) * nb]) };
        }
    }

    /// Sizes the buffers for `rows` rows of `nb` blocks and returns the
    /// writer that fills them row by row (possibly from several threads).
    pub(crate) fn resize(&mut self, rows: usize, nb: usize) -> RowWriter {
        self.nb = nb;
        self.q.resize(rows * nb * QK, 0);
        self.n8.resize(rows * nb * 8, 0);
        self.n128.resize(rows * nb * 8, 0);
        self.d.resize(rows * nb, 0.0);
        self.s.resize(rows * nb, 0.0);
        RowWriter {
            q: self.q.as_mut_ptr(),
            n8: self.n8.as_mut_ptr(),
            n128: self.n128.as_mut_ptr(),
            d: self.d.as_mut_ptr(),
            s: self.s.as_mut_ptr(),
            nb,
        }
    }
}

/// Writes rows of a [`WideActs`] sized by [`WideActs::resize`]; rows are
/// disjoint, so tasks may write different rows at once.
#[derive(Clone, Copy)]
pub(crate) struct RowWriter {
    q: *mut i8,
    n8: *mut i32,
    n128: *mut i32,
    d: *mut f32,
    s: *mut f32,
    nb: usize,
}

// SAFETY: each row is written by one task only (the callers' contract), and
// the buffers outlive the writes (the `WideActs` is borrowed mutably by the
// caller for the whole parallel section).
unsafe impl Sync for RowWriter {}
// SAFETY: as above.
unsafe impl Send for RowWriter {}

impl RowWriter {
    /// Writes row `t` from its `nb` blocks.
    ///
    /// # Safety
    /// `t` is below the row count of the last `resize`, whose buffers are
    /// still alive and not otherwise accessed; no other thread writes `t`.
    pub(crate) unsafe fn write(&self, t: usize, blocks: &[crate::quant::BlockQ8]) {
        let nb = self.nb;
        assert_eq!(blocks.len(), nb);
        // SAFETY: the caller guarantees row `t` is in bounds and exclusive.
        let (q, n8, n128, d, s) = unsafe {
            (
                std::slice::from_raw_parts_mut(self.q.add(t * nb * QK), nb * QK),
                std::slice::from_raw_parts_mut(self.n8.add(t * nb * 8), nb * 8),
                std::slice::from_raw_parts_mut(self.n128.add(t * nb * 8), nb * 8),
                std::slice::from_raw_parts_mut(self.d.add(t * nb), nb),
                std::slice::from_raw_parts_mut(self.s.add(t * nb), nb),
            )
        };
        for (i, b) in blocks.iter().enumerate() {
            q[i * QK..(i + 1) * QK].copy_from_slice(&b.qs);
            for (k, four) in b.qs.chunks_exact(4).enumerate() {
                let sum: i32 = four.iter().map(|&v| v as i32).sum();
                n8[i * 8 + k] = -8 * sum;
                n128[i * 8 + k] = -128 * sum;
            }
            d[i] = b.d;
            s[i] = b.s;
        }
    }
}

/// Weight block formats as const parameters, so the kernel's inner loop
/// has no type dispatch.
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;

const fn block_bytes(t: u8) -> usize {
    match t {
        Q4_0 => 18,
        Q4_1 => 20,
        _ => 34,
    }
}

/// The unsigned weights of blocks `i` and `i + 1` (or of block `i` alone
/// in the low half when `pair` is false) in element order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn load_weights<const T: u8>(b0: *const u8, pair: bool) -> __m512i {
    let bb = block_bytes(T);
    // SAFETY: the caller guarantees block `i` (and `i + 1` when `pair`) lie
    // within the row; the offsets below are inside a block of `T`.
    unsafe {
        if T == Q8_0 {
            let lo = _mm256_loadu_si256(b0.add(2) as *const __m256i);
            let hi = if pair {
                _mm256_loadu_si256(b0.add(bb + 2) as *const __m256i)
            } else {
                _mm256_setzero_si256()
            };
            let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            return _mm512_xor_si512(v, _mm512_set1_epi8(-128));
        }
        let off = if T == Q4_1 { 4 } else { 2 };
        let r0 = _mm_loadu_si128(b0.add(off) as *const __m128i);
        let r1 = if pair {
            _mm_loadu_si128(b0.add(bb + off) as *const __m128i)
        } else {
            _mm_setzero_si128()
        };
        // 128-bit lanes: r0, r0, r1, r1; the odd lanes take the high
        // nibbles (elements 16..32 of each block).
        let v = _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_set_m128i(r0, r0)),
            _mm256_set_m128i(r1, r1),
        );
        let m = _mm512_set1_epi8(0x0f);
        let lo = _mm512_and_si512(v, m);
        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m);
        _mm512_mask_blend_epi64(0b1100_1100, lo, hi)
    }
}

/// Dot products of one quantized weight row (`ty`, as many blocks as the
/// activations have) with the `N` activation rows `t0..t0 + N` of `a`.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VNNI and AVX2/FMA/F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn dot_q8<const N: usize>(
    ty: WeightType,
    w: &[u8],
    a: &WideActs,
    t0: usize,
) -> [f32; N] {
    let nb = a.nb;
    let n_rows = a.d.len() / nb.max(1);
    assert!(w.len() >= ty.row_bytes(nb * QK));
    assert!(t0 + N <= n_rows && a.q.len() == a.d.len() * QK && a.s.len() == a.d.len());
    assert!(a.n8.len() == a.d.len() * 8 && a.n128.len() == a.d.len() * 8);
    let init = if ty == WeightType::Q8_0 {
        &a.n128
    } else {
        &a.n8
    };
    let rows = Rows {
        q: a.q[t0 * nb * QK..].as_ptr(),
        init: init[t0 * nb * 8..].as_ptr(),
        d: a.d[t0 * nb..].as_ptr(),
        s: a.s[t0 * nb..].as_ptr(),
    };
    // SAFETY: extents asserted above; the caller guarantees the features.
    unsafe {
        match ty {
            WeightType::Q4_0 => dot::<Q4_0, N>(w.as_ptr(), nb, rows),
            WeightType::Q4_1 => dot::<Q4_1, N>(w.as_ptr(), nb, rows),
            WeightType::Q8_0 => dot::<Q8_0, N>(w.as_ptr(), nb, rows),
            _ => unreachable!("dot_q8 called with a float type"),
        }
    }
}

/// Pointers to the first of `N` consecutive activation rows of a
/// [`WideActs`]; rows are `nb` blocks apart.
#[derive(Clone, Copy)]
struct Rows {
    q: *const i8,
    init: *const i32,
    d: *const f32,
    s: *const f32,
}

/// The kernel of [`dot_q8`] for block format `T`, on raw pointers to `N`
/// consecutive activation rows of `nb` blocks whose extents the caller
/// checked.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn dot<const T: u8, const N: usize>(w: *const u8, nb: usize, r: Rows) -> [f32; N] {
    let bb = block_bytes(T);
    let zero = _mm512_setzero_si512();
    // Byte offsets of 16 consecutive blocks, for gathering their scales
    // (and, for Q4_1, minimums: the dword at a block's start is `d | m << 16`).
    let offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(bb as i32),
    );
    // Lanes are summed only at the end, so every term (block products and
    // Q4_1's minimums) goes into one accumulator per row.
    let mut acc = [_mm512_setzero_ps(); N];
    let mut c = 0;
    while c < nb {
        let len = (nb - c).min(16);
        let gmask: __mmask16 = if len == 16 { !0 } else { (1u16 << len) - 1 };
        // SAFETY: the mask limits the gather to the blocks `c..c + len` of
        // the row; each reads the first 4 bytes of its block.
        let g = unsafe {
            _mm512_mask_i32gather_epi32::<1>(zero, gmask, offsets, w.add(c * bb) as *const _)
        };
        let dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g));
        // The 16 scale products `dw[i] * da[i]` of each row, one multiply.
        let mut sc = [_mm512_setzero_ps(); N];
        for n in 0..N {
            // SAFETY: the mask keeps the loads within row `n`'s blocks
            // `c..c + len`.
            let da = unsafe { _mm512_maskz_loadu_ps(gmask, r.d.add(n * nb + c)) };
            sc[n] = _mm512_mul_ps(dw, da);
        }
        if T == Q4_1 {
            let mv = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(g)));
            for n in 0..N {
                // SAFETY: as above.
                let sv = unsafe { _mm512_maskz_loadu_ps(gmask, r.s.add(n * nb + c)) };
                acc[n] = _mm512_fmadd_ps(mv, sv, acc[n]);
            }
        }
        for p in 0..8 {
            if 2 * p >= len {
                break;
            }
            let i = c + 2 * p;
            let pair = 2 * p + 1 < len;
            // SAFETY: block `i` (and `i + 1` when `pair`) is within the row.
            let wq = unsafe { load_weights::<T>(w.add(i * bb), pair) };
            // Lanes 0..8 take block 2p's scale, lanes 8..16 block 2p+1's.
            let idx = _mm512_mask_blend_epi32(
                0xff00,
                _mm512_set1_epi32(2 * p as i32),
                _mm512_set1_epi32(2 * p as i32 + 1),
            );
            let (bmask, lmask): (__mmask64, __mmask16) = if pair {
                (!0, !0)
            } else {
                (0xffff_ffff, 0x00ff)
            };
            for n in 0..N {
                // SAFETY: the masks keep both loads inside row `n`'s blocks
                // `i` and `i + 1` (or block `i` alone).
                let (aq, start) = unsafe {
                    (
                        _mm512_maskz_loadu_epi8(bmask, r.q.add((n * nb + i) * QK)),
                        if T == Q4_1 {
                            zero
                        } else {
                            _mm512_maskz_loadu_epi32(lmask, r.init.add((n * nb + i) * 8))
                        },
                    )
                };
                let prod = _mm512_dpbusd_epi32(start, wq, aq);
                let scale = _mm512_permutexvar_ps(idx, sc[n]);
                acc[n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(prod), scale, acc[n]);
            }
        }
        c += 16;
    }
    let mut out = [0f32; N];
    for n in 0..N {
        out[n] = _mm512_reduce_add_ps(acc[n]);
    }
    out
}
