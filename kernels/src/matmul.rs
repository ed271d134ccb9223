//! Matrix multiplication of activations by weight matrices stored in GGUF
//! block formats: `y[t][r] = sum_c x[t][c] * W[r][c]`.
//!
//! Activations are quantized once per call site ([`Activations`]) and can be
//! shared by several weights that read the same input (Q, K and V; gate and
//! up) in a single parallel dispatch ([`matmul_many`]). Work is split over
//! weight rows; each weight row is multiplied with up to four token rows at
//! a time (eight with AVX-512), so during prefill and batched decode a
//! weight block is unpacked once for that many tokens.

use crate::KernelError;
use crate::cpu::{Isa, isa};
use crate::pool::{SyncPtr, ThreadPool};
use crate::quant::{BlockQ8, QK, WeightType, dot_f_scalar, dot_q8_scalar, quantize_q8};

/// A borrowed weight matrix of `rows` output features by `cols` input
/// features, row-major, in the block format of `ty`.
#[derive(Debug, Clone, Copy)]
pub struct WeightRef<'a> {
    ty: WeightType,
    data: &'a [u8],
    rows: usize,
    cols: usize,
    row_bytes: usize,
}

impl<'a> WeightRef<'a> {
    /// Checks that `data` holds exactly `rows x cols` elements of `ty`.
    pub fn new(
        ty: WeightType,
        data: &'a [u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, KernelError> {
        if cols % ty.block_elems() != 0 {
            return Err(KernelError::BlockAlignment {
                ty: ty.name(),
                block: ty.block_elems(),
                cols,
            });
        }
        let row_bytes = ty.row_bytes(cols);
        if data.len() != row_bytes * rows {
            return Err(KernelError::WeightSize {
                ty: ty.name(),
                rows,
                cols,
                expected: row_bytes * rows,
                actual: data.len(),
            });
        }
        Ok(WeightRef {
            ty,
            data,
            rows,
            cols,
            row_bytes,
        })
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Storage type.
    pub fn ty(&self) -> WeightType {
        self.ty
    }

    /// The raw bytes of row `r`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// The activation format this weight multiplies against.
    pub fn activation_format(&self) -> ActFormat {
        if self.ty.quantized() {
            ActFormat::Q8
        } else {
            ActFormat::F32
        }
    }
}

/// How activations are held for a matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActFormat {
    /// Quantized to 8-bit blocks of 32.
    Q8,
    /// Plain `f32`.
    F32,
}

/// Activations prepared for one or more matmuls: `n` rows of `cols` values.
#[derive(Debug, Default, Clone)]
pub struct Activations {
    format: Option<ActFormat>,
    n: usize,
    cols: usize,
    q: Vec<BlockQ8>,
    f: Vec<f32>,
    /// The same blocks laid out for the AVX-512 kernel (filled only when
    /// that kernel runs).
    #[cfg(target_arch = "x86_64")]
    wide: crate::cpu::avx512::WideActs,
}

impl Activations {
    /// Prepares `x` (`n` rows of `cols`) for weights using `format`.
    pub fn quantize(x: &[f32], n: usize, cols: usize, format: ActFormat) -> Self {
        let mut a = Activations::default();
        a.prepare(x, n, cols, format);
        a
    }

    /// Like [`Activations::quantize`], reusing this value's buffers.
    pub fn prepare(&mut self, x: &[f32], n: usize, cols: usize, format: ActFormat) {
        self.prepare_on(None, x, n, cols, format)
    }

    /// Like [`Activations::prepare`], quantizing rows in parallel on `pool`
    /// when there are several (batched decode and prefill).
    pub fn prepare_par(
        &mut self,
        pool: &ThreadPool,
        x: &[f32],
        n: usize,
        cols: usize,
        format: ActFormat,
    ) {
        let pool = (n >= 4 && pool.threads() >= 2).then_some(pool);
        self.prepare_on(pool, x, n, cols, format)
    }

    fn prepare_on(
        &mut self,
        pool: Option<&ThreadPool>,
        x: &[f32],
        n: usize,
        cols: usize,
        format: ActFormat,
    ) {
        assert_eq!(
            x.len(),
            n * cols,
            "activation buffer does not match its shape"
        );
        self.format = Some(format);
        self.n = n;
        self.cols = cols;
        match format {
            ActFormat::Q8 => {
                assert_eq!(
                    cols % QK,
                    0,
                    "quantized activations need a multiple of 32 columns"
                );
                self.q.resize(n * cols / QK, BlockQ8::default());
                self.quantize_rows(pool, x);
            }
            ActFormat::F32 => {
                self.f.clear();
                self.f.extend_from_slice(x);
            }
        }
    }

    /// Quantizes the `self.n` rows of `x` into `self.q` (and the AVX-512
    /// layout when that kernel runs), on `pool` when given.
    fn quantize_rows(&mut self, pool: Option<&ThreadPool>, x: &[f32]) {
        let (n, cols, nb) = (self.n, self.cols, self.cols / QK);
        #[cfg(target_arch = "x86_64")]
        let wide = (isa() == Isa::Avx512).then(|| self.wide.resize(n, nb));
        let qp = SyncPtr(self.q.as_mut_ptr());
        let row = |t: usize| {
            // SAFETY: `q` holds `n * nb` blocks; task `t` owns row `t`.
            let q = unsafe { std::slice::from_raw_parts_mut(qp.get().add(t * nb), nb) };
            quantize_q8(&x[t * cols..(t + 1) * cols], q);
            #[cfg(target_arch = "x86_64")]
            if let Some(w) = &wide {
                // SAFETY: row `t` of the layout just sized, this task's alone;
                // `self.wide` stays borrowed until the section ends.
                unsafe { w.write(t, q) };
            }
        };
        match pool {
            Some(pool) => pool.run(n, &row),
            None => (0..n).for_each(row),
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.n
    }

    fn q_row(&self, t: usize) -> &[BlockQ8] {
        let nb = self.cols / QK;
        &self.q[t * nb..(t + 1) * nb]
    }

    fn f_row(&self, t: usize) -> &[f32] {
        &self.f[t * self.cols..(t + 1) * self.cols]
    }
}

/// `y = acts * w^T`: `y` has `acts.rows()` rows of `w.rows()` values.
pub fn matmul(pool: &ThreadPool, w: &WeightRef<'_>, acts: &Activations, y: &mut [f32]) {
    matmul_many(pool, &mut [(*w, y)], acts)
}

/// Several matmuls reading the same activations, in one parallel dispatch.
pub fn matmul_many(
    pool: &ThreadPool,
    jobs: &mut [(WeightRef<'_>, &mut [f32])],
    acts: &Activations,
) {
    let n = acts.n;
    for (w, y) in jobs.iter() {
        assert_eq!(
            w.cols, acts.cols,
            "weight has {} columns, activations {}",
            w.cols, acts.cols
        );
        assert_eq!(y.len(), n * w.rows, "output buffer does not match");
        assert_eq!(
            Some(w.activation_format()),
            acts.format,
            "activations prepared for another format"
        );
    }
    // Chunk rows so each thread gets several tasks (load balance) without
    // making tasks so small that dispatch dominates.
    let threads = pool.threads();
    let plan: Vec<(usize, usize, SyncPtr<f32>)> = jobs
        .iter_mut()
        .map(|(w, y)| {
            let target = (w.rows / (threads * 4)).max(1);
            let chunk = target.clamp(4, 256);
            (w.rows.div_ceil(chunk), chunk, SyncPtr(y.as_mut_ptr()))
        })
        .collect();
    let total: usize = plan.iter().map(|p| p.0).sum();
    let isa = isa();
    pool.run(total, &|mut task| {
        let mut j = 0;
        while task >= plan[j].0 {
            task -= plan[j].0;
            j += 1;
        }
        let (_, chunk, out) = plan[j];
        let w = &jobs[j].0;
        let r0 = task * chunk;
        let r1 = (r0 + chunk).min(w.rows);
        let tile = if isa == Isa::Avx512 && w.ty.quantized() {
            16
        } else {
            4
        };
        for r in r0..r1 {
            let wrow = w.row(r);
            if n <= 2 {
                // Batches of more rows are bound by compute, not memory.
                prefetch_ahead(w, r, r1);
            }
            let mut t = 0;
            while t < n {
                let take = (n - t).min(tile);
                let mut res = [0f32; 16];
                dot_rows(isa, w, wrow, acts, t, take, &mut res);
                for k in 0..take {
                    // SAFETY: each (token, row) cell is written by exactly
                    // one task (the one owning row `r`), within `y`'s length
                    // checked above.
                    unsafe { *out.get().add((t + k) * w.rows + r) = res[k] };
                }
                t += take;
            }
        }
    });
}

/// Runs `f(r, out)` for every weight row `r` in parallel; `f` fills
/// `out[t]` (one value per token, `n` of them) and the results land in
/// `y[t * rows + r]`. For weight formats computed outside this crate.
pub fn par_rows(
    pool: &ThreadPool,
    rows: usize,
    n: usize,
    y: &mut [f32],
    f: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    assert_eq!(y.len(), rows * n, "output buffer does not match");
    let chunk = (rows / (pool.threads() * 4)).clamp(1, 256);
    let out = SyncPtr(y.as_mut_ptr());
    pool.run(rows.div_ceil(chunk), &|task| {
        let mut buf = vec![0f32; n];
        for r in task * chunk..((task + 1) * chunk).min(rows) {
            f(r, &mut buf);
            for (t, v) in buf.iter().enumerate() {
                // SAFETY: row `r` belongs to this task alone; the index is
                // below `rows * n` (checked above).
                unsafe { *out.get().add(t * rows + r) = *v };
            }
        }
    });
}

/// Asks the CPU to start loading the weight row two rows ahead (decode
/// streams the weights once per token; the hardware prefetcher alone leaves
/// the dot products waiting on memory).
#[inline(always)]
fn prefetch_ahead(w: &WeightRef<'_>, r: usize, end: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        const AHEAD: usize = 2;
        if r + AHEAD < end {
            let start = (r + AHEAD) * w.row_bytes;
            let next = &w.data[start..start + w.row_bytes];
            for line in (0..next.len()).step_by(64) {
                // SAFETY: a prefetch is a hint and cannot fault; the address
                // lies inside `next` anyway.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        next.as_ptr().add(line) as *const i8,
                    )
                };
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (w, r, end);
}

#[inline]
fn dot_rows(
    isa: Isa,
    w: &WeightRef<'_>,
    wrow: &[u8],
    a: &Activations,
    t: usize,
    take: usize,
    res: &mut [f32; 16],
) {
    let quantized = w.ty.quantized();
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && quantized {
        dot_rows_wide(w, wrow, a, t, take, res);
        return;
    }
    let res: &mut [f32; 4] = (&mut res[..4]).try_into().expect("four results");
    #[cfg(target_arch = "x86_64")]
    if isa.avx2() {
        // SAFETY (all calls below): `isa` is Avx2 so the CPU has the
        // features; row lengths were checked against the shapes above.
        if quantized {
            let nb = w.cols / QK;
            match take {
                4 => {
                    *res = unsafe {
                        crate::cpu::avx2::dot_q8::<4>(
                            w.ty,
                            wrow,
                            [a.q_row(t), a.q_row(t + 1), a.q_row(t + 2), a.q_row(t + 3)],
                            nb,
                        )
                    }
                }
                2 | 3 => {
                    let r = unsafe {
                        crate::cpu::avx2::dot_q8::<2>(w.ty, wrow, [a.q_row(t), a.q_row(t + 1)], nb)
                    };
                    res[..2].copy_from_slice(&r);
                    if take == 3 {
                        res[2] = unsafe {
                            crate::cpu::avx2::dot_q8::<1>(w.ty, wrow, [a.q_row(t + 2)], nb)
                        }[0];
                    }
                }
                _ => {
                    res[0] =
                        unsafe { crate::cpu::avx2::dot_q8::<1>(w.ty, wrow, [a.q_row(t)], nb) }[0]
                }
            }
        } else {
            let c = w.cols;
            match take {
                4 => {
                    *res = unsafe {
                        crate::cpu::avx2::dot_f::<4>(
                            w.ty,
                            wrow,
                            [a.f_row(t), a.f_row(t + 1), a.f_row(t + 2), a.f_row(t + 3)],
                            c,
                        )
                    }
                }
                _ => {
                    for k in 0..take {
                        res[k] = unsafe {
                            crate::cpu::avx2::dot_f::<1>(w.ty, wrow, [a.f_row(t + k)], c)
                        }[0];
                    }
                }
            }
        }
        return;
    }
    let _ = isa;
    for k in 0..take {
        res[k] = if quantized {
            dot_q8_scalar(w.ty, wrow, a.q_row(t + k))
        } else {
            dot_f_scalar(w.ty, wrow, a.f_row(t + k))
        };
    }
}

/// Up to sixteen rows of the AVX-512 kernel, in tiles of 16, 8, 4, 2 and 1.
#[cfg(target_arch = "x86_64")]
#[inline]
fn dot_rows_wide(
    w: &WeightRef<'_>,
    wrow: &[u8],
    a: &Activations,
    t: usize,
    take: usize,
    res: &mut [f32; 16],
) {
    use crate::cpu::avx512::dot_q8;
    let a = &a.wide;
    let mut k = 0;
    while k < take {
        let left = take - k;
        // SAFETY (each call): `isa` is Avx512, so the CPU has the features.
        if left >= 16 {
            res[k..k + 16].copy_from_slice(&unsafe { dot_q8::<16>(w.ty, wrow, a, t + k) });
            k += 16;
        } else if left >= 8 {
            res[k..k + 8].copy_from_slice(&unsafe { dot_q8::<8>(w.ty, wrow, a, t + k) });
            k += 8;
        } else if left >= 4 {
            res[k..k + 4].copy_from_slice(&unsafe { dot_q8::<4>(w.ty, wrow, a, t + k) });
            k += 4;
        } else if left >= 2 {
            res[k..k + 2].copy_from_slice(&unsafe { dot_q8::<2>(w.ty, wrow, a, t + k) });
            k += 2;
        } else {
            res[k] = unsafe { dot_q8::<1>(w.ty, wrow, a, t + k) }[0];
            k += 1;
        }
    }
}

/// The plain reference: dequantize the weights and multiply in `f64`.
pub fn matmul_reference(w: &WeightRef<'_>, x: &[f32], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n * w.rows];
    let mut wr = vec![0f32; w.cols];
    for r in 0..w.rows {
        crate::quant::dequantize_row(w.ty, w.row(r), &mut wr);
        for t in 0..n {
            let xr = &x[t * w.cols..(t + 1) * w.cols];
            y[t * w.rows + r] = wr
                .iter()
                .zip(xr)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>() as f32;
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{quantize_q8_scalar, quantize_row};
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// Every type, token counts covering every tile tail (1..=9, 13, 16, 17
    /// cover the 8/4/2/1 tiles), SIMD and scalar, odd and even block counts,
    /// against the dequantized f64 reference. Tolerance: the
    /// error of quantizing activations to 8 bits, about 1% of the row's
    /// absolute dot mass.
    #[test]
    fn matmul_matches_reference_for_every_type() {
        let mut rng = StdRng::seed_from_u64(7);
        let pool = ThreadPool::new(2);
        for ty in [
            WeightType::Q4_0,
            WeightType::Q4_1,
            WeightType::Q8_0,
            WeightType::F16,
            WeightType::BF16,
            WeightType::F32,
        ] {
            for (rows, cols, n) in (1..=9)
                .chain([13, 16, 17])
                .flat_map(|n| [(37, 96, n), (11, 64, n)])
            {
                let wf = random(&mut rng, rows * cols);
                let bytes: Vec<u8> = wf.chunks(cols).flat_map(|r| quantize_row(ty, r)).collect();
                let w = WeightRef::new(ty, &bytes, rows, cols).unwrap();
                let x = random(&mut rng, n * cols);
                let reference = matmul_reference(&w, &x, n);
                let acts = Activations::quantize(&x, n, cols, w.activation_format());
                let mut y = vec![0f32; n * rows];
                matmul(&pool, &w, &acts, &mut y);
                let tol = if ty.quantized() {
                    0.05 * (cols as f32).sqrt() / 4.0
                } else {
                    1e-3
                };
                for (i, (a, b)) in y.iter().zip(&reference).enumerate() {
                    assert!((a - b).abs() <= tol, "{ty:?} n={n} i={i}: {a} vs {b}");
                }
            }
        }
    }

    /// The SIMD integer dot products are exact integer sums, so they agree
    /// with the scalar path to float rounding only.
    #[test]
    fn simd_dot_equals_scalar_dot() {
        if !crate::cpu::detect().avx2() {
            eprintln!("skipping: this CPU has no AVX2");
            return;
        }
        let mut rng = StdRng::seed_from_u64(11);
        for ty in [WeightType::Q4_0, WeightType::Q4_1, WeightType::Q8_0] {
            let cols = 576;
            let w = quantize_row(ty, &random(&mut rng, cols));
            let mut a = vec![BlockQ8::default(); cols / QK];
            let mut a2 = a.clone();
            let x = random(&mut rng, cols);
            quantize_q8_scalar(&x, &mut a);
            // SAFETY: AVX2 detected above.
            unsafe { crate::cpu::avx2::quantize_q8(&x, &mut a2) };
            for (p, q) in a.iter().zip(&a2) {
                assert_eq!(p.qs, q.qs);
                assert_eq!(p.d, q.d);
                assert_eq!(p.s, q.s);
            }
            let s = dot_q8_scalar(ty, &w, &a);
            // SAFETY: AVX2 detected above.
            let v = unsafe { crate::cpu::avx2::dot_q8::<1>(ty, &w, [&a], cols / QK) }[0];
            assert!(
                (s - v).abs() <= 1e-3 * s.abs().max(1.0),
                "{ty:?}: {s} vs {v}"
            );
        }
    }

    /// The AVX-512 kernel computes the same integer block sums as the scalar
    /// path (the weights' offset is taken back exactly), for even and odd
    /// block counts and every tile width.
    #[test]
    fn avx512_dot_equals_scalar_dot() {
        if crate::cpu::detect() != Isa::Avx512 {
            eprintln!("skipping: this CPU has no AVX-512 VNNI");
            return;
        }
        let mut rng = StdRng::seed_from_u64(13);
        for ty in [WeightType::Q4_0, WeightType::Q4_1, WeightType::Q8_0] {
            for cols in [32, 64, 96, 576, 1536] {
                let nb = cols / QK;
                let w = quantize_row(ty, &random(&mut rng, cols));
                let mut blocks = vec![BlockQ8::default(); 8 * nb];
                quantize_q8_scalar(&random(&mut rng, 8 * cols), &mut blocks);
                let mut wide = crate::cpu::avx512::WideActs::default();
                wide.fill(&blocks, nb);
                // SAFETY: AVX-512 VNNI detected above.
                let got = unsafe { crate::cpu::avx512::dot_q8::<8>(ty, &w, &wide, 0) };
                // SAFETY: as above.
                let one = unsafe { crate::cpu::avx512::dot_q8::<1>(ty, &w, &wide, 3) };
                assert_eq!(one[0], got[3], "{ty:?} cols={cols}: tile widths differ");
                for (k, v) in got.iter().enumerate() {
                    let s = dot_q8_scalar(ty, &w, &blocks[k * nb..(k + 1) * nb]);
                    assert!(
                        (s - v).abs() <= 1e-4 * s.abs().max(1.0),
                        "{ty:?} cols={cols} row {k}: {s} vs {v}"
                    );
                }
            }
        }
    }
}
