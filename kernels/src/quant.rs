//! Weight block formats (as GGUF stores them), activation quantization, and
//! the scalar reference dot products every SIMD path is tested against.
//!
//! Weight rows are raw little-endian bytes exactly as llama.cpp writes them:
//! - `Q4_0`: 18 bytes per 32 weights: `f16 d`, 16 bytes of nibbles;
//!   `w = (q - 8) * d`; low nibbles are elements 0..16, high nibbles 16..32.
//! - `Q4_1`: 20 bytes: `f16 d`, `f16 m`, 16 bytes of nibbles; `w = q * d + m`.
//! - `Q8_0`: 34 bytes: `f16 d`, 32 `i8`; `w = q * d`.
//! - `F32`, `F16`, `BF16`: plain arrays.
//!
//! Activations for the quantized types are quantized to 8 bits in blocks of
//! 32 ([`BlockQ8`]), like llama.cpp's `q8_0`/`q8_1`: the scale and the block
//! sum are rounded through `f16` as llama.cpp does, so results stay close to
//! its numerics.

use half::{bf16, f16};

/// Elements per quantization block for every quantized type here.
pub const QK: usize = 32;

/// A weight storage type the kernels can multiply directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum WeightType {
    /// 32-bit floats.
    F32,
    /// IEEE half floats.
    F16,
    /// bfloat16.
    BF16,
    /// 4-bit, symmetric, blocks of 32.
    Q4_0,
    /// 4-bit with minimum, blocks of 32.
    Q4_1,
    /// 8-bit, blocks of 32.
    Q8_0,
}

impl WeightType {
    /// Elements per block (1 for the float types).
    pub const fn block_elems(self) -> usize {
        match self {
            WeightType::F32 | WeightType::F16 | WeightType::BF16 => 1,
            WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q8_0 => QK,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            WeightType::F32 => 4,
            WeightType::F16 | WeightType::BF16 => 2,
            WeightType::Q4_0 => 18,
            WeightType::Q4_1 => 20,
            WeightType::Q8_0 => 34,
        }
    }

    /// Bytes taken by a row of `cols` elements (`cols` must be a multiple of
    /// [`WeightType::block_elems`]).
    pub const fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_elems() * self.block_bytes()
    }

    /// The name llama.cpp uses.
    pub const fn name(self) -> &'static str {
        match self {
            WeightType::F32 => "F32",
            WeightType::F16 => "F16",
            WeightType::BF16 => "BF16",
            WeightType::Q4_0 => "Q4_0",
            WeightType::Q4_1 => "Q4_1",
            WeightType::Q8_0 => "Q8_0",
        }
    }

    /// Whether activations are quantized to [`BlockQ8`] for this type.
    pub const fn quantized(self) -> bool {
        matches!(self, WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q8_0)
    }
}

/// One block of 32 activations quantized to 8 bits.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct BlockQ8 {
    /// Scale (rounded through f16).
    pub d: f32,
    /// `d * sum(qs)` (rounded through f16), used by `Q4_1`.
    pub s: f32,
    /// Quantized values.
    pub qs: [i8; QK],
}

#[inline]
pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

#[inline]
fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Quantizes `x` (a multiple of 32 long) into `out` (scalar reference).
pub fn quantize_q8_scalar(x: &[f32], out: &mut [BlockQ8]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    for (chunk, block) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in block.qs.iter_mut().zip(chunk) {
            let r = (v * id).round_ties_even() as i32;
            *q = r.clamp(-127, 127) as i8;
            sum += *q as i32;
        }
        block.d = round_f16(d);
        block.s = round_f16(sum as f32 * d);
    }
}

/// Quantizes `x` into `out` with the fastest available path.
pub fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::isa().avx2() {
        // SAFETY: the CPU supports AVX2/FMA/F16C (checked by `isa`).
        unsafe { crate::cpu::avx2::quantize_q8(x, out) };
        return;
    }
    quantize_q8_scalar(x, out)
}

/// Scalar dot product of one weight row (raw bytes of `ty`) with quantized
/// activations. Reference for the SIMD kernels.
pub fn dot_q8_scalar(ty: WeightType, w: &[u8], a: &[BlockQ8]) -> f32 {
    let bb = ty.block_bytes();
    let mut acc = 0f32;
    for (i, ab) in a.iter().enumerate() {
        let b = &w[i * bb..(i + 1) * bb];
        match ty {
            WeightType::Q4_0 => {
                let d = f16_at(b, 0);
                let mut sumi = 0i32;
                for j in 0..16 {
                    let lo = (b[2 + j] & 0x0f) as i32 - 8;
                    let hi = (b[2 + j] >> 4) as i32 - 8;
                    sumi += lo * ab.qs[j] as i32 + hi * ab.qs[j + 16] as i32;
                }
                acc += sumi as f32 * (d * ab.d);
            }
            WeightType::Q4_1 => {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                let mut sumi = 0i32;
                for j in 0..16 {
                    let lo = (b[4 + j] & 0x0f) as i32;
                    let hi = (b[4 + j] >> 4) as i32;
                    sumi += lo * ab.qs[j] as i32 + hi * ab.qs[j + 16] as i32;
                }
                acc += sumi as f32 * (d * ab.d) + m * ab.s;
            }
            WeightType::Q8_0 => {
                let d = f16_at(b, 0);
                let mut sumi = 0i32;
                for j in 0..QK {
                    sumi += (b[2 + j] as i8) as i32 * ab.qs[j] as i32;
                }
                acc += sumi as f32 * (d * ab.d);
            }
            _ => unreachable!("dot_q8_scalar called with a float type"),
        }
    }
    acc
}

/// Scalar dot product of one float weight row with `f32` activations.
pub fn dot_f_scalar(ty: WeightType, w: &[u8], x: &[f32]) -> f32 {
    let mut acc = 0f32;
    match ty {
        WeightType::F32 => {
            for (c, &v) in w.chunks_exact(4).zip(x) {
                acc += f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * v;
            }
        }
        WeightType::F16 => {
            for (c, &v) in w.chunks_exact(2).zip(x) {
                acc += f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32() * v;
            }
        }
        WeightType::BF16 => {
            for (c, &v) in w.chunks_exact(2).zip(x) {
                acc += bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32() * v;
            }
        }
        _ => unreachable!("dot_f_scalar called with a quantized type"),
    }
    acc
}

/// Dequantizes one row of `cols` elements into `out`.
pub fn dequantize_row(ty: WeightType, w: &[u8], out: &mut [f32]) {
    match ty {
        WeightType::F32 => {
            for (c, o) in w.chunks_exact(4).zip(out) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        WeightType::F16 => {
            for (c, o) in w.chunks_exact(2).zip(out) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        WeightType::BF16 => {
            for (c, o) in w.chunks_exact(2).zip(out) {
                *o = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q8_0 => {
            let bb = ty.block_bytes();
            for (b, o) in w.chunks_exact(bb).zip(out.chunks_exact_mut(QK)) {
                let d = f16_at(b, 0);
                match ty {
                    WeightType::Q4_0 => {
                        for j in 0..16 {
                            o[j] = ((b[2 + j] & 0x0f) as i32 - 8) as f32 * d;
                            o[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
                        }
                    }
                    WeightType::Q4_1 => {
                        let m = f16_at(b, 2);
                        for j in 0..16 {
                            o[j] = (b[4 + j] & 0x0f) as f32 * d + m;
                            o[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
                        }
                    }
                    _ => {
                        for j in 0..QK {
                            o[j] = (b[2 + j] as i8) as f32 * d;
                        }
                    }
                }
            }
        }
    }
}

/// Quantizes `x` into weight blocks of `ty` (used by tests and by tools that
/// write small models). Float types are written as-is.
pub fn quantize_row(ty: WeightType, x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ty.row_bytes(x.len()));
    match ty {
        WeightType::F32 => x.iter().for_each(|v| out.extend(v.to_le_bytes())),
        WeightType::F16 => x
            .iter()
            .for_each(|v| out.extend(f16::from_f32(*v).to_le_bytes())),
        WeightType::BF16 => x
            .iter()
            .for_each(|v| out.extend(bf16::from_f32(*v).to_le_bytes())),
        WeightType::Q4_0 => {
            for c in x.chunks_exact(QK) {
                let (mut amax, mut max) = (0f32, 0f32);
                for &v in c {
                    if v.abs() > amax {
                        amax = v.abs();
                        max = v;
                    }
                }
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                for j in 0..16 {
                    let a = ((c[j] * id + 8.5) as i32).clamp(0, 15) as u8;
                    let b = ((c[j + 16] * id + 8.5) as i32).clamp(0, 15) as u8;
                    out.push(a | (b << 4));
                }
            }
        }
        WeightType::Q4_1 => {
            for c in x.chunks_exact(QK) {
                let min = c.iter().cloned().fold(f32::INFINITY, f32::min);
                let max = c.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(f16::from_f32(min).to_le_bytes());
                for j in 0..16 {
                    let a = (((c[j] - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                    let b = (((c[j + 16] - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                    out.push(a | (b << 4));
                }
            }
        }
        WeightType::Q8_0 => {
            for c in x.chunks_exact(QK) {
                let amax = c.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                for &v in c {
                    out.push(((v * id).round() as i32).clamp(-127, 127) as i8 as u8);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_then_dequantize_is_close() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 3.0)
            .collect();
        for ty in [
            WeightType::Q4_0,
            WeightType::Q4_1,
            WeightType::Q8_0,
            WeightType::F16,
        ] {
            let bytes = quantize_row(ty, &x);
            assert_eq!(bytes.len(), ty.row_bytes(64));
            let mut back = vec![0f32; 64];
            dequantize_row(ty, &bytes, &mut back);
            let tol = if ty == WeightType::Q8_0 || ty == WeightType::F16 {
                0.03
            } else {
                0.4
            };
            for (a, b) in x.iter().zip(&back) {
                assert!((a - b).abs() <= tol, "{ty:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn q8_activation_roundtrip() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
        let mut q = [BlockQ8::default()];
        quantize_q8_scalar(&x, &mut q);
        for (i, &v) in x.iter().enumerate() {
            assert!((q[0].qs[i] as f32 * q[0].d - v).abs() < 0.07);
        }
        let s: i32 = q[0].qs.iter().map(|&v| v as i32).sum();
        assert!((q[0].s - s as f32 * q[0].d).abs() < 0.05);
    }
}
