//! The kernel crate's error type.

/// Errors raised when kernel inputs do not fit together.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// A weight buffer's length does not match its declared shape and type.
    #[error("weight of type {ty} with {rows}x{cols} elements needs {expected} bytes, got {actual}")]
    WeightSize {
        /// Weight type name.
        ty: &'static str,
        /// Output features.
        rows: usize,
        /// Input features.
        cols: usize,
        /// Bytes the shape needs.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// The row length is not a multiple of the type's block size.
    #[error("weight of type {ty} needs rows that are a multiple of {block} elements, got {cols}")]
    BlockAlignment {
        /// Weight type name.
        ty: &'static str,
        /// Block size in elements.
        block: usize,
        /// Row length given.
        cols: usize,
    },
    /// Inputs of a kernel call do not fit together (lengths, head counts);
    /// the message names the call, the argument and the sizes.
    #[error("{0}")]
    Shape(String),
    /// No CUDA device can be used: the crate was built without the `cuda`
    /// feature, the driver library (`libcuda`) or NVRTC is missing, or the
    /// driver found no device at the ordinal asked for.
    #[error("no CUDA device: {0}")]
    NoCuda(String),
    /// A CUDA call failed on a device that was opened: kernel compilation,
    /// allocation, copy or launch. The message names the call.
    #[error("CUDA error: {0}")]
    Cuda(String),
}
