//! Compute kernels for the Palisade engine.
//!
//! Everything here works on plain slices: quantized weight rows as raw GGUF
//! block bytes, activations as `f32`, the KV cache as `f16`. The SIMD paths
//! (AVX2 + FMA + F16C everywhere; AVX-512 VNNI for the quantized matmul
//! where the CPU has it) are chosen at run time; a scalar path with the same
//! results (up to float rounding) is always available and is the reference
//! the SIMD paths are tested against.
//!
//! ```
//! use palisade_kernels::{matmul::{matmul, Activations}, pool::ThreadPool, quant::WeightType};
//! // A 2x32 Q8_0 weight matrix (two rows of one block each): scale 1, values 1.
//! let mut row = vec![0u8; 34];
//! row[..2].copy_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
//! row[2..].fill(1);
//! let weights = [row.clone(), row].concat();
//! let w = palisade_kernels::matmul::WeightRef::new(WeightType::Q8_0, &weights, 2, 32).unwrap();
//! let pool = ThreadPool::new(1);
//! let x = vec![0.5f32; 32];
//! let acts = Activations::quantize(&x, 1, 32, w.activation_format());
//! let mut y = vec![0f32; 2];
//! matmul(&pool, &w, &acts, &mut y);
//! assert!((y[0] - 16.0).abs() < 0.2);
//! ```
#![warn(missing_docs)]
// SIMD intrinsics and the fork-join pool need `unsafe`; every block states
// its invariant in a SAFETY comment.
#![allow(unsafe_code)]

pub mod attention;
pub mod cpu;
pub mod cuda;
pub mod error;
pub mod matmul;
pub mod ops;
pub mod pool;
pub mod quant;

pub use error::KernelError;
