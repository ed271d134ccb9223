//! AVX2 + FMA + F16C implementations. Every function here is `unsafe`
//! because it must only be called after [`super::isa`] returned
//! [`super::Isa::Avx2`]; callers state that in a `SAFETY` comment.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use crate::quant::{BlockQ8, QK, f16_at};

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Quantizes `x` to 8-bit blocks (same results as `quantize_q8_scalar`).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `x.len() == out.len() * 32`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    assert_eq!(x.len(), out.len() * QK);
    let sign = _mm256_set1_ps(-0.0);
    for (chunk, block) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let p = chunk.as_ptr();
        // SAFETY: `chunk` has exactly 32 floats, read as four unaligned loads.
        let (v0, v1, v2, v3) = unsafe {
            (
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            )
        };
        let m = _mm256_max_ps(
            _mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
            _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)),
        );
        let m = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_movehdup_ps(m));
        let amax = _mm_cvtss_f32(m);
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        const R: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        let i0 = _mm256_cvtps_epi32(_mm256_round_ps::<R>(_mm256_mul_ps(v0, id)));
        let i1 = _mm256_cvtps_epi32(_mm256_round_ps::<R>(_mm256_mul_ps(v1, id)));
        let i2 = _mm256_cvtps_epi32(_mm256_round_ps::<R>(_mm256_mul_ps(v2, id)));
        let i3 = _mm256_cvtps_epi32(_mm256_round_ps::<R>(_mm256_mul_ps(v3, id)));
        let s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        let s = _mm_hadd_epi32(s, s);
        let s = _mm_hadd_epi32(s, s);
        let sum = _mm_cvtsi128_si32(s);
        let a = _mm256_packs_epi32(i0, i1);
        let b = _mm256_packs_epi32(i2, i3);
        let q = _mm256_packs_epi16(a, b);
        let q = _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: `qs` is 32 bytes.
        unsafe { _mm256_storeu_si256(block.qs.as_mut_ptr() as *mut __m256i, q) };
        block.d = half::f16::from_f32(d).to_f32();
        block.s = half::f16::from_f32(sum as f32 * d).to_f32();
    }
}

/// Loads the 32 nibbles of a 4-bit block as 32 bytes in element order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_nibbles(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 16 readable bytes at `p`.
    let raw = unsafe { _mm_loadu_si128(p as *const __m128i) };
    let mask = _mm_set1_epi8(0x0f);
    let lo = _mm_and_si128(raw, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
    _mm256_set_m128i(hi, lo)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sum_i16_pairs(v: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_madd_epi16(v, _mm256_set1_epi16(1)))
}

/// Dot products of one quantized weight row with `N` activation rows.
///
/// # Safety
/// The CPU must support AVX2/FMA/F16C; `w` holds `nb` blocks of `ty` and each
/// `acts[n]` holds at least `nb` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q8<const N: usize>(
    ty: crate::quant::WeightType,
    w: &[u8],
    acts: [&[BlockQ8]; N],
    nb: usize,
) -> [f32; N] {
    use crate::quant::WeightType;
    let bb = ty.block_bytes();
    assert!(w.len() >= nb * bb);
    for a in &acts {
        assert!(a.len() >= nb);
    }
    let mut acc = [_mm256_setzero_ps(); N];
    let mut mins = [0f32; N];
    let wp = w.as_ptr();
    for i in 0..nb {
        // SAFETY: block `i` lies within `w` (asserted above).
        let bp = unsafe { wp.add(i * bb) };
        let d = f16_at(w, i * bb);
        match ty {
            WeightType::Q4_1 => {
                let m = f16_at(w, i * bb + 2);
                // SAFETY: a Q4_1 block has 16 nibble bytes at offset 4.
                let wq = unsafe { load_nibbles(bp.add(4)) };
                for n in 0..N {
                    let ab = &acts[n][i];
                    // SAFETY: `qs` is 32 bytes.
                    let aq = unsafe { _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i) };
                    let p = sum_i16_pairs(_mm256_maddubs_epi16(wq, aq));
                    acc[n] = _mm256_fmadd_ps(_mm256_set1_ps(d * ab.d), p, acc[n]);
                    mins[n] += m * ab.s;
                }
            }
            WeightType::Q4_0 | WeightType::Q8_0 => {
                let x = if ty == WeightType::Q4_0 {
                    // SAFETY: a Q4_0 block has 16 nibble bytes at offset 2.
                    _mm256_sub_epi8(unsafe { load_nibbles(bp.add(2)) }, _mm256_set1_epi8(8))
                } else {
                    // SAFETY: a Q8_0 block has 32 bytes at offset 2.
                    unsafe { _mm256_loadu_si256(bp.add(2) as *const __m256i) }
                };
                let ax = _mm256_sign_epi8(x, x);
                for n in 0..N {
                    let ab = &acts[n][i];
                    // SAFETY: `qs` is 32 bytes.
                    let aq = unsafe { _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i) };
                    let sy = _mm256_sign_epi8(aq, x);
                    let p = sum_i16_pairs(_mm256_maddubs_epi16(ax, sy));
                    acc[n] = _mm256_fmadd_ps(_mm256_set1_ps(d * ab.d), p, acc[n]);
                }
            }
            _ => unreachable!("dot_q8 called with a float type"),
        }
    }
    let mut out = [0f32; N];
    for n in 0..N {
        out[n] = hsum(acc[n]) + mins[n];
    }
    out
}

/// Loads 8 weights of a float type as `f32`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8(ty: crate::quant::WeightType, p: *const u8) -> __m256 {
    use crate::quant::WeightType;
    // SAFETY: the caller guarantees 8 elements of `ty` readable at `p`.
    unsafe {
        match ty {
            WeightType::F32 => _mm256_loadu_ps(p as *const f32),
            WeightType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
            _ => {
                let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
                _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
            }
        }
    }
}

/// Dot products of one float weight row (`F32`, `F16` or `BF16`) with `N`
/// `f32` activation rows of `cols` elements.
///
/// # Safety
/// The CPU must support AVX2/FMA/F16C; `w` holds `cols` elements of `ty`;
/// each `xs[n]` holds at least `cols` floats.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_f<const N: usize>(
    ty: crate::quant::WeightType,
    w: &[u8],
    xs: [&[f32]; N],
    cols: usize,
) -> [f32; N] {
    let es = ty.block_bytes();
    assert!(w.len() >= cols * es);
    for x in &xs {
        assert!(x.len() >= cols);
    }
    let mut acc = [_mm256_setzero_ps(); N];
    let main = cols / 8 * 8;
    let mut j = 0;
    while j < main {
        // SAFETY: `j + 8 <= cols` elements are within `w` and every `xs[n]`.
        let wv = unsafe { load8(ty, w.as_ptr().add(j * es)) };
        for n in 0..N {
            // SAFETY: as above.
            let xv = unsafe { _mm256_loadu_ps(xs[n].as_ptr().add(j)) };
            acc[n] = _mm256_fmadd_ps(wv, xv, acc[n]);
        }
        j += 8;
    }
    let mut out = [0f32; N];
    for n in 0..N {
        out[n] = hsum(acc[n]);
        if main < cols {
            out[n] += crate::quant::dot_f_scalar(ty, &w[main * es..cols * es], &xs[n][main..cols]);
        }
    }
    out
}

/// Converts `n` rows of `hd` f16 values, `stride` apart in `src`, into
/// `dst` (`n * hd` values, row after row).
///
/// # Safety
/// The CPU must support AVX2/FMA/F16C;
/// `src.len() >= (n - 1) * stride + hd` when `n > 0`; `dst.len() >= n * hd`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn rows_f16_to_f32(
    src: &[half::f16],
    stride: usize,
    n: usize,
    hd: usize,
    dst: &mut [f32],
) {
    let main = hd / 8 * 8;
    for p in 0..n {
        let row = &src[p * stride..p * stride + hd];
        let out = &mut dst[p * hd..(p + 1) * hd];
        let mut j = 0;
        while j < main {
            // SAFETY: `j + 8 <= hd` values in `row` and `out`.
            unsafe {
                let v = _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(j) as *const __m128i));
                _mm256_storeu_ps(out.as_mut_ptr().add(j), v);
            }
            j += 8;
        }
        for d in main..hd {
            out[d] = row[d].to_f32();
        }
    }
}

/// `out[p] = sum_d k[p * hd + d] * q[d]` for `p < out.len()` (`hd =
/// q.len()`): four positions at a time share the loads of `q` and one
/// horizontal reduction.
///
/// # Safety
/// The CPU must support AVX2/FMA/F16C; `k.len() >= out.len() * q.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dots_f32(k: &[f32], q: &[f32], out: &mut [f32]) {
    let hd = q.len();
    let main = hd / 8 * 8;
    let n = out.len();
    assert!(k.len() >= n * hd);
    let kp = k.as_ptr();
    let tail = |p: usize| -> f32 { (main..hd).map(|d| k[p * hd + d] * q[d]).sum() };
    let mut p = 0;
    while p + 4 <= n {
        let mut a = [_mm256_setzero_ps(); 4];
        let mut j = 0;
        while j < main {
            // SAFETY: `j + 8 <= hd`; rows `p..p + 4` are within `k`.
            unsafe {
                let qv = _mm256_loadu_ps(q.as_ptr().add(j));
                for (r, acc) in a.iter_mut().enumerate() {
                    let kv = _mm256_loadu_ps(kp.add((p + r) * hd + j));
                    *acc = _mm256_fmadd_ps(kv, qv, *acc);
                }
            }
            j += 8;
        }
        // [A01 A23 B01 B23 | A45 A67 B45 B67] and likewise for C, D; then
        // [A0-3 B0-3 C0-3 D0-3 | A4-7 ...]; the two halves added.
        let t = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        let s4 = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps::<1>(t));
        let mut r4 = [0f32; 4];
        // SAFETY: `r4` holds 4 floats.
        unsafe { _mm_storeu_ps(r4.as_mut_ptr(), s4) };
        for r in 0..4 {
            out[p + r] = r4[r] + tail(p + r);
        }
        p += 4;
    }
    while p < n {
        let mut acc = _mm256_setzero_ps();
        let mut j = 0;
        while j < main {
            // SAFETY: as above, one row.
            unsafe {
                let kv = _mm256_loadu_ps(kp.add(p * hd + j));
                acc = _mm256_fmadd_ps(kv, _mm256_loadu_ps(q.as_ptr().add(j)), acc);
            }
            j += 8;
        }
        out[p] = hsum(acc) + tail(p);
        p += 1;
    }
}

/// `out[d] += sum_p w[p] * v[p * hd + d]` (`hd = out.len()`), 32 values of
/// `out` at a time held in registers across all `p`.
///
/// # Safety
/// The CPU must support AVX2/FMA/F16C; `v.len() >= w.len() * out.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn weighted_rows_f32(out: &mut [f32], w: &[f32], v: &[f32]) {
    let hd = out.len();
    assert!(v.len() >= w.len() * hd);
    let main = hd / 32 * 32;
    let vp = v.as_ptr();
    let mut d = 0;
    while d < main {
        // SAFETY: `d + 32 <= hd`; row `p` of `v` holds `hd` values.
        unsafe {
            let op = out.as_mut_ptr().add(d);
            let mut a = [
                _mm256_loadu_ps(op),
                _mm256_loadu_ps(op.add(8)),
                _mm256_loadu_ps(op.add(16)),
                _mm256_loadu_ps(op.add(24)),
            ];
            for (p, &wp) in w.iter().enumerate() {
                let wv = _mm256_set1_ps(wp);
                let r = vp.add(p * hd + d);
                for (k, acc) in a.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(wv, _mm256_loadu_ps(r.add(8 * k)), *acc);
                }
            }
            for (k, acc) in a.iter().enumerate() {
                _mm256_storeu_ps(op.add(8 * k), *acc);
            }
        }
        d += 32;
    }
    for (p, &wp) in w.iter().enumerate() {
        for j in main..hd {
            out[j] += wp * v[p * hd + j];
        }
    }
}
