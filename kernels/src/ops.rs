//! Element-wise and row-wise operations of a transformer layer: RMSNorm,
//! rotary embeddings, SwiGLU, softmax. Written as plain loops that the
//! compiler vectorizes; they are a small share of the time next to matmul.

/// `out = x / sqrt(mean(x^2) + eps) * w`, for each row of `x`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        // ggml sums in f64-free f32 with a double accumulator on some paths;
        // a f64 sum keeps long rows stable.
        let ss: f64 = xr.iter().map(|v| (*v as f64) * (*v as f64)).sum();
        let scale = 1.0 / ((ss / d as f64) as f32 + eps).sqrt();
        for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    }
}

/// `x += y`.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `gate = silu(gate) * up` (SwiGLU).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// [`silu_mul`] over `rows` equal rows, the rows spread over `pool`.
pub fn silu_mul_rows(pool: &crate::pool::ThreadPool, gate: &mut [f32], up: &[f32], rows: usize) {
    assert_eq!(gate.len(), up.len());
    if rows < 4 || pool.threads() < 2 {
        return silu_mul(gate, up);
    }
    assert_eq!(gate.len() % rows, 0, "rows must divide the buffer");
    let w = gate.len() / rows;
    let gp = crate::pool::SyncPtr(gate.as_mut_ptr());
    pool.run(rows, &|t| {
        // SAFETY: task `t` owns row `t` of `gate` (within its length).
        let g = unsafe { std::slice::from_raw_parts_mut(gp.get().add(t * w), w) };
        silu_mul(g, &up[t * w..(t + 1) * w]);
    });
}

/// In-place softmax; returns the log of the normalizer (for logprobs).
pub fn softmax(x: &mut [f32]) -> f32 {
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
    max + (sum as f32).ln()
}

/// How rotary embedding pairs dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)`: llama.cpp's "normal" mode, used by GGUF
    /// Llama files (whose Q/K weights the converter permuted).
    Interleaved,
    /// Halves `(i, i + d/2)`: Hugging Face Llama/Qwen2 and GGUF Qwen2.
    Neox,
}

/// Rotary embedding parameters for one model.
#[derive(Debug, Clone)]
pub struct Rope {
    /// Dimensions rotated per head (usually the head size).
    pub dims: usize,
    /// Pairing of dimensions.
    pub style: RopeStyle,
    /// `base^(-2/dims)`.
    theta_scale: f32,
    /// Per-pair frequency divisors (Llama 3 scaling), 1 otherwise.
    factors: Vec<f32>,
    /// Linear position scaling (1 / factor).
    freq_scale: f32,
}

impl Rope {
    /// Builds the frequency table. `freq_factors` (Llama 3 style, one per
    /// pair) divide the frequencies; `freq_scale` scales positions
    /// (linear RoPE scaling).
    pub fn new(
        dims: usize,
        base: f32,
        style: RopeStyle,
        freq_scale: f32,
        freq_factors: Option<&[f32]>,
    ) -> Self {
        // Accumulated by repeated multiplication, as ggml does, so angles
        // round the same way.
        let theta_scale = base.powf(-2.0 / dims as f32);
        let factors = (0..dims / 2)
            .map(|i| freq_factors.and_then(|f| f.get(i)).copied().unwrap_or(1.0))
            .collect();
        Rope {
            dims,
            style,
            theta_scale,
            factors,
            freq_scale,
        }
    }

    /// Fills `cos` and `sin` (each `dims / 2` long) for position `pos`.
    pub fn angles(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        // As ggml: the angle of pair i is pos * scale^i accumulated by
        // repeated multiplication, then divided by the pair's factor.
        let mut theta = pos as f32;
        for i in 0..self.dims / 2 {
            let th = self.freq_scale * theta / self.factors[i];
            theta *= self.theta_scale;
            cos[i] = th.cos();
            sin[i] = th.sin();
        }
    }

    /// Rotates every head of `x` (`heads * head_dim` values) in place.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
        let half = self.dims / 2;
        for head in x.chunks_exact_mut(head_dim) {
            match self.style {
                RopeStyle::Interleaved => {
                    for i in 0..half {
                        let (a, b) = (head[2 * i], head[2 * i + 1]);
                        head[2 * i] = a * cos[i] - b * sin[i];
                        head[2 * i + 1] = a * sin[i] + b * cos[i];
                    }
                }
                RopeStyle::Neox => {
                    for i in 0..half {
                        let (a, b) = (head[i], head[i + half]);
                        head[i] = a * cos[i] - b * sin[i];
                        head[i + half] = a * sin[i] + b * cos[i];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_unit_rows() {
        let x = [3.0, 4.0, 0.0, 0.0];
        let mut out = [0.0; 4];
        rms_norm(&x, &[1.0; 4], 0.0, &mut out);
        let rms = (25.0f32 / 4.0).sqrt();
        assert!((out[0] - 3.0 / rms).abs() < 1e-6);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = [1.0, 2.0, 3.0, -1e30];
        let lse = softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((lse - (1f32.exp() + 2f32.exp() + 3f32.exp()).ln()).abs() < 1e-5);
    }

    #[test]
    fn rope_styles_agree_after_permutation() {
        // Interleaved on a permuted vector equals Neox on the original:
        // this is exactly the Q/K permutation llama.cpp's converter applies.
        let d = 8;
        let r1 = Rope::new(d, 10000.0, RopeStyle::Neox, 1.0, None);
        let r2 = Rope::new(d, 10000.0, RopeStyle::Interleaved, 1.0, None);
        let (mut c, mut s) = (vec![0.0; d / 2], vec![0.0; d / 2]);
        r1.angles(5, &mut c, &mut s);
        let x: Vec<f32> = (0..d).map(|i| i as f32 + 1.0).collect();
        let mut neox = x.clone();
        r1.apply(&mut neox, d, &c, &s);
        let mut inter: Vec<f32> = (0..d)
            .map(|i| {
                if i % 2 == 0 {
                    x[i / 2]
                } else {
                    x[i / 2 + d / 2]
                }
            })
            .collect();
        r2.apply(&mut inter, d, &c, &s);
        for i in 0..d / 2 {
            assert!((inter[2 * i] - neox[i]).abs() < 1e-5);
            assert!((inter[2 * i + 1] - neox[i + d / 2]).abs() < 1e-5);
        }
    }
}
