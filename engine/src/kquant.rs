//! Weight types our kernels do not implement (Q5_0, Q5_1 and the K-quants)
//! go through candle-core's ggml block types and their SIMD dot products,
//! reading the blocks in place from the memory map.
#![allow(unsafe_code)]

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8K, GgmlType,
};
use palisade_kernels::matmul::par_rows;
use palisade_kernels::pool::ThreadPool;

use crate::tensor::TensorType;

/// Views `bytes` as blocks of `T`.
///
/// Panics if the length is not a whole number of blocks or the start is
/// not aligned for `T` (GGUF aligns tensor data to 32 bytes, and every row
/// is a whole number of blocks, so neither happens for a valid file; the
/// loader checks both before a `KQuant` weight is built).
fn blocks<T: GgmlType>(bytes: &[u8]) -> &[T] {
    let size = std::mem::size_of::<T>();
    assert_eq!(bytes.len() % size, 0, "not a whole number of blocks");
    assert_eq!(
        bytes.as_ptr().align_offset(std::mem::align_of::<T>()),
        0,
        "misaligned block data"
    );
    // SAFETY: candle's block types are `#[repr(C)]` structs of f16/u8/i8
    // arrays for which every bit pattern is valid; length and alignment are
    // checked above; the slice borrows `bytes` so it cannot outlive it.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, bytes.len() / size) }
}

/// Whether `bytes` can be viewed as blocks of this type (alignment).
pub(crate) fn aligned(ty: TensorType, bytes: &[u8]) -> bool {
    let align = match ty {
        TensorType::Q8K => std::mem::align_of::<BlockQ8K>(),
        _ => std::mem::align_of::<BlockQ4K>().max(std::mem::align_of::<BlockQ5_0>()),
    };
    bytes.as_ptr().align_offset(align) == 0
}

macro_rules! dispatch {
    ($ty:expr, $f:ident, $($args:expr),*) => {
        match $ty {
            TensorType::Q5_0 => $f::<BlockQ5_0>($($args),*),
            TensorType::Q5_1 => $f::<BlockQ5_1>($($args),*),
            TensorType::Q2K => $f::<BlockQ2K>($($args),*),
            TensorType::Q3K => $f::<BlockQ3K>($($args),*),
            TensorType::Q4K => $f::<BlockQ4K>($($args),*),
            TensorType::Q5K => $f::<BlockQ5K>($($args),*),
            TensorType::Q6K => $f::<BlockQ6K>($($args),*),
            TensorType::Q8K => $f::<BlockQ8K>($($args),*),
            other => unreachable!("{other:?} has a native kernel"),
        }
    };
}

/// Dequantizes `bytes` of `ty` into `out`.
pub(crate) fn dequantize(ty: TensorType, bytes: &[u8], out: &mut [f32]) {
    fn go<T: GgmlType>(bytes: &[u8], out: &mut [f32]) {
        T::to_float(blocks::<T>(bytes), out)
    }
    dispatch!(ty, go, bytes, out)
}

/// `y[t][r] = x[t] . W[r]` for a weight of `ty` with `rows x cols`.
pub(crate) fn matmul(
    pool: &ThreadPool,
    ty: TensorType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    fn go<T: GgmlType>(
        pool: &ThreadPool,
        w: &[u8],
        rows: usize,
        cols: usize,
        x: &[f32],
        n: usize,
        y: &mut [f32],
    ) {
        let per_row = cols / T::VecDotType::BLCK_SIZE;
        let mut acts = vec![T::VecDotType::zeros(); n * per_row];
        for t in 0..n {
            T::VecDotType::from_float(
                &x[t * cols..(t + 1) * cols],
                &mut acts[t * per_row..(t + 1) * per_row],
            );
        }
        let wb = blocks::<T>(w);
        let w_per_row = cols / T::BLCK_SIZE;
        par_rows(pool, rows, n, y, &|r, out| {
            let row = &wb[r * w_per_row..(r + 1) * w_per_row];
            for (t, o) in out.iter_mut().enumerate() {
                *o = T::vec_dot(cols, row, &acts[t * per_row..(t + 1) * per_row]);
            }
        });
    }
    dispatch!(ty, go, pool, w, rows, cols, x, n, y)
}
