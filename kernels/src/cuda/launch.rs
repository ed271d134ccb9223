//! The kernel wrappers: each checks its inputs (the kernels trust them:
//! a wrong size would be an out-of-bounds access on the device), copies
//! them to the device, launches, and copies the result back.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::device::{CudaDevice, KvPool, cuda};
use super::{DecodeRow, KV_BLOCK_SIZE, MAX_ATTN_ROWS, MAX_HEAD_DIM};
use crate::KernelError;
use crate::attention::AttnShape;
use crate::ops::Rope;
use crate::quant::{QK, WeightType};

/// Threads per block of the row kernels and of the element-wise kernel.
const ROW_THREADS: u32 = 256;
/// Warps per block of `q8_0_matvec_f32` (`MATVEC_WARPS` in the source).
const MATVEC_WARPS: u32 = 4;
/// Warps per block of `paged_attention_decode_f16` (`ATTN_WARPS`).
const ATTN_WARPS: u32 = 4;

fn shape_err(msg: String) -> KernelError {
    KernelError::Shape(msg)
}

/// `n` as a kernel `int` / grid dimension.
fn to_i32(n: usize, what: &str) -> Result<i32, KernelError> {
    i32::try_from(n).map_err(|_| shape_err(format!("{what} = {n} does not fit a CUDA int")))
}

fn grid(blocks: (usize, usize), threads: u32) -> Result<LaunchConfig, KernelError> {
    let x =
        u32::try_from(blocks.0).map_err(|_| shape_err(format!("grid of {} blocks", blocks.0)))?;
    let y = u32::try_from(blocks.1).map_err(|_| shape_err(format!("grid of {} rows", blocks.1)))?;
    Ok(LaunchConfig {
        grid_dim: (x, y, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

impl CudaDevice {
    fn upload<T: cudarc::driver::DeviceRepr>(
        &self,
        x: &[T],
        what: &'static str,
    ) -> Result<CudaSlice<T>, KernelError> {
        self.stream.clone_htod(x).map_err(cuda(what))
    }

    fn download(&self, x: &CudaSlice<f32>, what: &'static str) -> Result<Vec<f32>, KernelError> {
        self.stream.clone_dtoh(x).map_err(cuda(what))
    }

    /// RMSNorm of `rows` rows of `x` (each `w.len()` long) with gain `w`,
    /// as [`crate::ops::rms_norm`].
    pub fn rms_norm(
        &self,
        x: &[f32],
        w: &[f32],
        eps: f32,
        rows: usize,
    ) -> Result<Vec<f32>, KernelError> {
        let cols = w.len();
        if rows.checked_mul(cols) != Some(x.len()) {
            return Err(shape_err(format!(
                "rms_norm: x has {} values, expected {rows} rows x {cols} (w.len())",
                x.len()
            )));
        }
        if x.is_empty() {
            return Ok(Vec::new());
        }
        let cols_i = to_i32(cols, "rms_norm cols")?;
        let (xd, wd) = (
            self.upload(x, "rms_norm: copy x")?,
            self.upload(w, "rms_norm: copy w")?,
        );
        let mut out = self
            .stream
            .alloc_zeros::<f32>(x.len())
            .map_err(cuda("rms_norm: alloc"))?;
        let cfg = grid((rows, 1), ROW_THREADS)?;
        let mut b = self.stream.launch_builder(&self.kernels.rms_norm);
        b.arg(&xd).arg(&wd).arg(&mut out).arg(&cols_i).arg(&eps);
        // SAFETY: the arguments match `rms_norm_f32(const float*, const
        // float*, float*, int, float)`; x and out hold rows * cols floats,
        // w holds cols, and the grid has one block per row.
        unsafe { b.launch(cfg) }.map_err(cuda("rms_norm_f32"))?;
        self.download(&out, "rms_norm: copy result")
    }

    /// `silu(gate) * up`, element-wise (SwiGLU), as [`crate::ops::silu_mul`].
    pub fn silu_mul(&self, gate: &[f32], up: &[f32]) -> Result<Vec<f32>, KernelError> {
        if gate.len() != up.len() {
            return Err(shape_err(format!(
                "silu_mul: gate has {} values, up has {}",
                gate.len(),
                up.len()
            )));
        }
        if gate.is_empty() {
            return Ok(Vec::new());
        }
        let n = to_i32(gate.len(), "silu_mul length")?;
        let mut g = self.upload(gate, "silu_mul: copy gate")?;
        let u = self.upload(up, "silu_mul: copy up")?;
        let cfg = grid((gate.len().div_ceil(ROW_THREADS as usize), 1), ROW_THREADS)?;
        let mut b = self.stream.launch_builder(&self.kernels.silu_mul);
        b.arg(&mut g).arg(&u).arg(&n);
        // SAFETY: matches `silu_mul_f32(float*, const float*, int)`; both
        // buffers hold n floats and the kernel skips indices >= n.
        unsafe { b.launch(cfg) }.map_err(cuda("silu_mul_f32"))?;
        self.download(&g, "silu_mul: copy result")
    }

    /// Rotary embedding of `positions.len()` tokens, as [`Rope::apply`]
    /// after [`Rope::angles`]: `x` holds `positions.len() x n_heads x
    /// head_dim` values (`n_heads` follows from its length); returns `x`
    /// rotated. The angles are computed on the host by `rope` itself, so
    /// both paths rotate by the same angles.
    pub fn rope(
        &self,
        rope: &Rope,
        x: &[f32],
        head_dim: usize,
        positions: &[usize],
    ) -> Result<Vec<f32>, KernelError> {
        let row = positions.len() * head_dim;
        if rope.dims > head_dim || !rope.dims.is_multiple_of(2) {
            return Err(shape_err(format!(
                "rope: rotated dims {} must be even and at most head_dim = {head_dim}",
                rope.dims
            )));
        }
        if x.is_empty() {
            return Ok(Vec::new());
        }
        if row == 0 || !x.len().is_multiple_of(row) {
            return Err(shape_err(format!(
                "rope: x has {} values, expected a multiple of {} tokens x {head_dim} head_dim",
                x.len(),
                positions.len()
            )));
        }
        let n_heads = x.len() / row;
        let half = rope.dims / 2;
        if half == 0 {
            return Ok(x.to_vec());
        }
        let (mut cos, mut sin) = (
            vec![0f32; positions.len() * half],
            vec![0f32; positions.len() * half],
        );
        for ((&p, c), s) in positions
            .iter()
            .zip(cos.chunks_exact_mut(half))
            .zip(sin.chunks_exact_mut(half))
        {
            rope.angles(p, c, s);
        }
        let mut xd = self.upload(x, "rope: copy x")?;
        let (cd, sd) = (
            self.upload(&cos, "rope: copy cos")?,
            self.upload(&sin, "rope: copy sin")?,
        );
        let (nh, hd, hf) = (
            to_i32(n_heads, "rope heads")?,
            to_i32(head_dim, "rope head_dim")?,
            to_i32(half, "rope dims")?,
        );
        let neox = i32::from(rope.style == crate::ops::RopeStyle::Neox);
        let threads = (half.next_multiple_of(32) as u32).min(ROW_THREADS);
        let cfg = grid((positions.len(), n_heads), threads)?;
        let mut b = self.stream.launch_builder(&self.kernels.rope);
        b.arg(&mut xd)
            .arg(&cd)
            .arg(&sd)
            .arg(&nh)
            .arg(&hd)
            .arg(&hf)
            .arg(&neox);
        // SAFETY: matches `rope_f32(float*, const float*, const float*, int,
        // int, int, int)`; x holds n_tok x n_heads x head_dim floats, cos and
        // sin n_tok x half, the grid is (n_tok, n_heads), and every index the
        // kernel touches is below 2 * half <= head_dim within its head.
        unsafe { b.launch(cfg) }.map_err(cuda("rope_f32"))?;
        self.download(&xd, "rope: copy result")
    }

    /// Softmax of each row of `x` (rows `cols` long), as
    /// [`crate::ops::softmax`] applied row by row.
    pub fn softmax_rows(&self, x: &[f32], cols: usize) -> Result<Vec<f32>, KernelError> {
        if cols == 0 || !x.len().is_multiple_of(cols) {
            return Err(shape_err(format!(
                "softmax_rows: x has {} values, not a multiple of cols = {cols}",
                x.len()
            )));
        }
        if x.is_empty() {
            return Ok(Vec::new());
        }
        let cols_i = to_i32(cols, "softmax_rows cols")?;
        let mut xd = self.upload(x, "softmax_rows: copy x")?;
        let cfg = grid((x.len() / cols, 1), ROW_THREADS)?;
        let mut b = self.stream.launch_builder(&self.kernels.softmax_rows);
        b.arg(&mut xd).arg(&cols_i);
        // SAFETY: matches `softmax_rows_f32(float*, int)`; x holds
        // rows x cols floats and the grid has one block per row.
        unsafe { b.launch(cfg) }.map_err(cuda("softmax_rows_f32"))?;
        self.download(&xd, "softmax_rows: copy result")
    }

    /// `y = W x` for a `rows x cols` weight matrix in GGUF Q8_0 blocks
    /// (raw bytes, as [`crate::quant`] describes) and `f32` activations.
    pub fn q8_0_matvec(
        &self,
        w: &[u8],
        rows: usize,
        cols: usize,
        x: &[f32],
    ) -> Result<Vec<f32>, KernelError> {
        let ty = WeightType::Q8_0;
        if !cols.is_multiple_of(QK) {
            return Err(KernelError::BlockAlignment {
                ty: ty.name(),
                block: QK,
                cols,
            });
        }
        let expected = ty.row_bytes(cols).saturating_mul(rows);
        if w.len() != expected {
            return Err(KernelError::WeightSize {
                ty: ty.name(),
                rows,
                cols,
                expected,
                actual: w.len(),
            });
        }
        if x.len() != cols {
            return Err(shape_err(format!(
                "q8_0_matvec: x has {} values, expected cols = {cols}",
                x.len()
            )));
        }
        if rows == 0 || cols == 0 {
            return Ok(vec![0.0; rows]);
        }
        let (rows_i, cols_i) = (
            to_i32(rows, "q8_0_matvec rows")?,
            to_i32(cols, "q8_0_matvec cols")?,
        );
        let (wd, xd) = (
            self.upload(w, "q8_0_matvec: copy w")?,
            self.upload(x, "q8_0_matvec: copy x")?,
        );
        let mut y = self
            .stream
            .alloc_zeros::<f32>(rows)
            .map_err(cuda("q8_0_matvec: alloc"))?;
        let cfg = grid((rows.div_ceil(MATVEC_WARPS as usize), 1), 32 * MATVEC_WARPS)?;
        let mut b = self.stream.launch_builder(&self.kernels.q8_0_matvec);
        b.arg(&wd).arg(&xd).arg(&mut y).arg(&rows_i).arg(&cols_i);
        // SAFETY: matches `q8_0_matvec_f32(const unsigned char*, const
        // float*, float*, int, int)`; w holds rows x (cols / 32) x 34 bytes,
        // x holds cols floats, y rows; warps past the last row return.
        unsafe { b.launch(cfg) }.map_err(cuda("q8_0_matvec_f32"))?;
        self.download(&y, "q8_0_matvec: copy result")
    }

    /// Decode attention: for each query row, softmax(q K^T * scale) V over
    /// the row's positions in `pool`. `q` holds `rows.len() x n_heads x
    /// head_dim` values (already rotated); returns as many. Query head `h`
    /// reads kv head `h / (n_heads / n_kv_heads)`.
    pub fn paged_attention_decode(
        &self,
        pool: &KvPool,
        shape: &AttnShape,
        q: &[f32],
        tables: &[u32],
        rows: &[DecodeRow],
    ) -> Result<Vec<f32>, KernelError> {
        check_attention(pool, shape, q, tables, rows)?;
        if rows.is_empty() || shape.n_heads == 0 {
            return Ok(Vec::new());
        }
        let (row_table, row_len): (Vec<u32>, Vec<u32>) =
            rows.iter().map(|r| (r.table, r.len)).unzip();
        // A sequence with no block table yet still needs a valid pointer.
        let tables = if tables.is_empty() {
            &[0u32][..]
        } else {
            tables
        };
        let qd = self.upload(q, "paged_attention: copy q")?;
        let td = self.upload(tables, "paged_attention: copy tables")?;
        let rt = self.upload(&row_table, "paged_attention: copy rows")?;
        let rl = self.upload(&row_len, "paged_attention: copy rows")?;
        let mut out = self
            .stream
            .alloc_zeros::<f32>(q.len())
            .map_err(cuda("paged_attention: alloc"))?;
        let nh = to_i32(shape.n_heads, "n_heads")?;
        let nkv = to_i32(shape.n_kv_heads, "n_kv_heads")?;
        let hd = to_i32(shape.head_dim, "head_dim")?;
        let cfg = grid((shape.n_heads, rows.len()), 32 * ATTN_WARPS)?;
        let mut b = self.stream.launch_builder(&self.kernels.paged_attention);
        b.arg(&qd)
            .arg(&pool.k)
            .arg(&pool.v)
            .arg(&td)
            .arg(&rt)
            .arg(&rl);
        b.arg(&mut out)
            .arg(&nh)
            .arg(&nkv)
            .arg(&hd)
            .arg(&shape.scale);
        // SAFETY: matches `paged_attention_decode_f16(const float*, const
        // unsigned short*, const unsigned short*, const unsigned int*,
        // const unsigned int*, const unsigned int*, float*, int, int, int,
        // float)`. `check_attention` proved every block-table entry a row
        // reads exists and names a block inside the pool, head_dim <= 256,
        // and n_kv_heads divides n_heads; q and out hold rows x n_heads x
        // head_dim floats and the grid is (n_heads, rows).
        unsafe { b.launch(cfg) }.map_err(cuda("paged_attention_decode_f16"))?;
        self.download(&out, "paged_attention: copy result")
    }
}

/// Everything the attention kernel relies on to stay in bounds.
fn check_attention(
    pool: &KvPool,
    s: &AttnShape,
    q: &[f32],
    tables: &[u32],
    rows: &[DecodeRow],
) -> Result<(), KernelError> {
    let fail = |m: String| Err(shape_err(format!("paged_attention_decode: {m}")));
    if s.n_kv_heads == 0 || !s.n_heads.is_multiple_of(s.n_kv_heads) {
        return fail(format!(
            "n_kv_heads = {} must divide n_heads = {}",
            s.n_kv_heads, s.n_heads
        ));
    }
    if s.n_kv_heads != pool.n_kv_heads() || s.head_dim != pool.head_dim() {
        return fail(format!(
            "shape has {} kv heads of {}, the pool {} of {}",
            s.n_kv_heads,
            s.head_dim,
            pool.n_kv_heads(),
            pool.head_dim()
        ));
    }
    if s.head_dim == 0 || s.head_dim > MAX_HEAD_DIM {
        return fail(format!(
            "head_dim = {} must be in 1..={MAX_HEAD_DIM}",
            s.head_dim
        ));
    }
    if rows.len() > MAX_ATTN_ROWS {
        return fail(format!(
            "{} rows, at most {MAX_ATTN_ROWS} per call",
            rows.len()
        ));
    }
    if q.len() != rows.len() * s.n_heads * s.head_dim {
        return fail(format!(
            "q has {} values, expected {} rows x {} heads x {}",
            q.len(),
            rows.len(),
            s.n_heads,
            s.head_dim
        ));
    }
    for (i, r) in rows.iter().enumerate() {
        let end = r.table as usize + (r.len as usize).div_ceil(KV_BLOCK_SIZE);
        if end > tables.len() {
            return fail(format!(
                "row {i} needs block table entries {}..{end}, tables has {}",
                r.table,
                tables.len()
            ));
        }
        if let Some(&b) = tables[r.table as usize..end]
            .iter()
            .find(|&&b| b as usize >= pool.n_blocks())
        {
            return fail(format!(
                "row {i} reads block {b}, the pool has {}",
                pool.n_blocks()
            ));
        }
    }
    Ok(())
}
