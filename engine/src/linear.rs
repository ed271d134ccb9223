//! A weight matrix and its matmul, over either our kernels or candle's
//! block types.

use palisade_kernels::matmul::{ActFormat, Activations, WeightRef, matmul_many};
use palisade_kernels::pool::ThreadPool;
use palisade_kernels::quant::WeightType;

use crate::error::{EngineError, Result};
use crate::tensor::TensorRef;

/// A `rows x cols` weight (out features x in features).
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    t: TensorRef,
    native: Option<WeightType>,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

impl Linear {
    /// Wraps `t`, checking it is `rows x cols`.
    pub(crate) fn new(t: TensorRef, rows: usize, cols: usize) -> Result<Self> {
        if t.shape != [rows, cols] {
            return Err(EngineError::TensorShape {
                path: t.path().to_path_buf(),
                tensor: t.name.clone(),
                expected: vec![rows, cols],
                actual: t.shape.clone(),
            });
        }
        let native = t.ty.kernel_type();
        if let Some(ty) = native {
            // Validates the byte length once, at load.
            WeightRef::new(ty, t.bytes(), rows, cols)?;
        } else {
            if cols % t.ty.block().0 != 0 {
                return Err(EngineError::format(
                    t.path(),
                    format!(
                        "tensor `{}`: {cols} columns is not a whole number of {:?} blocks",
                        t.name, t.ty
                    ),
                ));
            }
            if !crate::kquant::aligned(t.ty, t.bytes()) {
                return Err(EngineError::format(
                    t.path(),
                    format!(
                        "tensor `{}`: data is not aligned for {:?} blocks",
                        t.name, t.ty
                    ),
                ));
            }
        }
        Ok(Linear {
            t,
            native,
            rows,
            cols,
        })
    }

    fn weight(&self) -> Option<WeightRef<'_>> {
        // Checked in `new`; the mapping cannot change size.
        self.native
            .and_then(|ty| WeightRef::new(ty, self.t.bytes(), self.rows, self.cols).ok())
    }

    /// Dequantizes row `r` (embedding lookup).
    pub(crate) fn row_f32(&self, r: usize, out: &mut [f32]) {
        let rb = self.t.ty.bytes_for(self.cols).unwrap_or(0);
        let bytes = &self.t.bytes()[r * rb..(r + 1) * rb];
        match self.native {
            Some(ty) => palisade_kernels::quant::dequantize_row(ty, bytes, out),
            None => crate::kquant::dequantize(self.t.ty, bytes, out),
        }
    }

    fn act_format(&self) -> Option<ActFormat> {
        self.weight().map(|w| w.activation_format())
    }
}

/// Multiplies `x` (`n x cols`) by several weights that share it, writing
/// each output (`n x rows`). Weights of our kernel types share one
/// activation quantization and one parallel dispatch.
pub(crate) fn matmul_group(
    pool: &ThreadPool,
    acts: &mut Activations,
    x: &[f32],
    n: usize,
    jobs: &mut [(&Linear, &mut [f32])],
) {
    let cols = jobs[0].0.cols;
    let fmt = jobs[0].0.act_format();
    let shared = fmt.is_some()
        && jobs
            .iter()
            .all(|(l, _)| l.act_format() == fmt && l.cols == cols);
    if let (true, Some(fmt)) = (shared, fmt) {
        acts.prepare_par(pool, x, n, cols, fmt);
        let mut refs: Vec<(WeightRef<'_>, &mut [f32])> = jobs
            .iter_mut()
            .filter_map(|(l, y)| l.weight().map(|w| (w, &mut **y)))
            .collect();
        matmul_many(pool, &mut refs, acts);
        return;
    }
    for (l, y) in jobs.iter_mut() {
        match l.weight() {
            Some(w) => {
                acts.prepare_par(pool, x, n, l.cols, w.activation_format());
                matmul_many(pool, &mut [(w, &mut **y)], acts);
            }
            None => crate::kquant::matmul(pool, l.t.ty, l.t.bytes(), l.rows, l.cols, x, n, y),
        }
    }
}
