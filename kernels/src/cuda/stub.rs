//! The CUDA API when the crate is built without the `cuda` feature: the
//! same types and methods, but [`CudaDevice::open`] always fails with
//! [`KernelError::NoCuda`], so no value of these types can exist and every
//! other method is unreachable.

use std::convert::Infallible;

use half::f16;

use super::DecodeRow;
use crate::KernelError;
use crate::attention::AttnShape;
use crate::ops::Rope;

/// A CUDA device. Without the `cuda` feature it cannot be opened.
#[derive(Debug)]
pub struct CudaDevice {
    never: Infallible,
}

/// One layer's paged KV cache in device memory. Without the `cuda` feature
/// none can be made.
#[derive(Debug)]
pub struct KvPool {
    never: Infallible,
}

/// Always fails: this build has no CUDA support.
pub fn compile_kernels(_arch: Option<(u32, u32)>) -> Result<String, KernelError> {
    Err(KernelError::NoCuda(
        "palisade-kernels was built without the `cuda` feature".into(),
    ))
}

impl CudaDevice {
    /// Always fails: this build has no CUDA support.
    pub fn open(ordinal: usize) -> Result<Self, KernelError> {
        Err(KernelError::NoCuda(format!(
            "palisade-kernels was built without the `cuda` feature (asked for device {ordinal})"
        )))
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        match self.never {}
    }

    /// The device's ordinal.
    pub fn ordinal(&self) -> usize {
        match self.never {}
    }

    /// Uploads one layer's paged KV cache.
    pub fn upload_kv_pool(
        &self,
        _k: &[f16],
        _v: &[f16],
        _n_kv_heads: usize,
        _head_dim: usize,
    ) -> Result<KvPool, KernelError> {
        match self.never {}
    }

    /// RMSNorm of `rows` rows of `x` with gain `w`.
    pub fn rms_norm(
        &self,
        _x: &[f32],
        _w: &[f32],
        _eps: f32,
        _rows: usize,
    ) -> Result<Vec<f32>, KernelError> {
        match self.never {}
    }

    /// `silu(gate) * up`, element-wise.
    pub fn silu_mul(&self, _gate: &[f32], _up: &[f32]) -> Result<Vec<f32>, KernelError> {
        match self.never {}
    }

    /// Rotary embedding of `positions.len()` tokens.
    pub fn rope(
        &self,
        _rope: &Rope,
        _x: &[f32],
        _head_dim: usize,
        _positions: &[usize],
    ) -> Result<Vec<f32>, KernelError> {
        match self.never {}
    }

    /// Softmax of each row of `x`.
    pub fn softmax_rows(&self, _x: &[f32], _cols: usize) -> Result<Vec<f32>, KernelError> {
        match self.never {}
    }

    /// `y = W x` for a Q8_0 weight matrix.
    pub fn q8_0_matvec(
        &self,
        _w: &[u8],
        _rows: usize,
        _cols: usize,
        _x: &[f32],
    ) -> Result<Vec<f32>, KernelError> {
        match self.never {}
    }

    /// Decode attention over a paged KV cache.
    pub fn paged_attention_decode(
        &self,
        _pool: &KvPool,
        _shape: &AttnShape,
        _q: &[f32],
        _tables: &[u32],
        _rows: &[DecodeRow],
    ) -> Result<Vec<f32>, KernelError> {
        match self.never {}
    }
}

impl KvPool {
    /// Blocks in the pool.
    pub fn n_blocks(&self) -> usize {
        match self.never {}
    }

    /// Key/value heads per position.
    pub fn n_kv_heads(&self) -> usize {
        match self.never {}
    }

    /// Size of one head.
    pub fn head_dim(&self) -> usize {
        match self.never {}
    }
}
