//! CUDA kernels: RMSNorm, SwiGLU, rotary embeddings, row softmax, a Q8_0
//! matrix-vector product, and decode attention over a paged `f16` KV cache.
//!
//! The kernels are CUDA C (`kernels.cu`, kept in the binary as a string) and
//! are compiled with NVRTC once, when a device is opened; their functions
//! are looked up once and reused for every call. Nothing CUDA is needed to
//! build: `cudarc` loads `libcuda` and `libnvrtc` at run time, and
//! [`CudaDevice::open`] checks both are present before touching them, so a
//! machine without a GPU gets [`KernelError::NoCuda`](crate::KernelError::NoCuda)
//! rather than a panic.
//!
//! Without the `cuda` feature the same types exist with the same methods,
//! and [`CudaDevice::open`] always returns `NoCuda`: code that uses them
//! builds and runs (falling back to the CPU) on every machine.
//!
//! The wrappers take and return host slices, except the KV cache, which is
//! uploaded once into a [`KvPool`] and stays on the device. Each result is
//! checked in `tests/cuda.rs` against the CPU reference in [`crate::ops`] and
//! [`crate::quant`].
//!
//! ```
//! use palisade_kernels::cuda::CudaDevice;
//! match CudaDevice::open(0) {
//!     Ok(dev) => println!("using {}", dev.name()),
//!     Err(e) => println!("CPU only: {e}"),
//! }
//! ```

#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
mod launch;
#[cfg(feature = "cuda")]
pub use device::{CudaDevice, KvPool, compile_kernels};

#[cfg(not(feature = "cuda"))]
mod stub;
#[cfg(not(feature = "cuda"))]
pub use stub::{CudaDevice, KvPool, compile_kernels};

/// Positions per block of the paged KV cache (fixed in the kernel source).
pub const KV_BLOCK_SIZE: usize = 16;

/// Largest head size the attention kernel handles (each of its 32 lanes
/// holds `MAX_HEAD_DIM / 32` dimensions in registers).
pub const MAX_HEAD_DIM: usize = 256;

/// Largest number of query rows in one attention call (the grid's second
/// dimension).
pub const MAX_ATTN_ROWS: usize = 65_535;

/// One query row of a decode attention call: the row attends to positions
/// `0..len` of the sequence whose block table starts at `tables[table]`
/// (position `p` is in block `tables[table + p / KV_BLOCK_SIZE]`, slot
/// `p % KV_BLOCK_SIZE`). Block tables are laid out back to back, as in
/// [`crate::attention`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeRow {
    /// Offset of the sequence's block table in the flat `tables` slice.
    pub table: u32,
    /// Positions the row attends to (the sequence length, this token
    /// included).
    pub len: u32,
}
