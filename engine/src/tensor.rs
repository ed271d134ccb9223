//! Memory-mapped tensors shared by the GGUF and safetensors loaders.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{EngineError, Result};

/// Storage type of a tensor, as GGUF (ggml) or safetensors names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types, missing_docs)]
pub enum TensorType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
}

impl TensorType {
    /// The ggml type id (GGUF tensor info), if we support it.
    pub fn from_ggml(id: u32) -> Option<Self> {
        Some(match id {
            0 => TensorType::F32,
            1 => TensorType::F16,
            2 => TensorType::Q4_0,
            3 => TensorType::Q4_1,
            6 => TensorType::Q5_0,
            7 => TensorType::Q5_1,
            8 => TensorType::Q8_0,
            10 => TensorType::Q2K,
            11 => TensorType::Q3K,
            12 => TensorType::Q4K,
            13 => TensorType::Q5K,
            14 => TensorType::Q6K,
            15 => TensorType::Q8K,
            30 => TensorType::BF16,
            _ => return None,
        })
    }

    /// Name of a ggml type id for error messages (also for ones we refuse).
    pub fn ggml_name(id: u32) -> String {
        let known = [
            "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
            "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
            "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M",
            "BF16",
        ];
        known
            .get(id as usize)
            .map(|s| s.to_string())
            .unwrap_or_else(|| format!("type id {id}"))
    }

    /// (elements per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            TensorType::F32 => (1, 4),
            TensorType::F16 | TensorType::BF16 => (1, 2),
            TensorType::Q4_0 => (32, 18),
            TensorType::Q4_1 => (32, 20),
            TensorType::Q5_0 => (32, 22),
            TensorType::Q5_1 => (32, 24),
            TensorType::Q8_0 => (32, 34),
            TensorType::Q2K => (256, 84),
            TensorType::Q3K => (256, 110),
            TensorType::Q4K => (256, 144),
            TensorType::Q5K => (256, 176),
            TensorType::Q6K => (256, 210),
            TensorType::Q8K => (256, 292),
        }
    }

    /// Bytes for `elems` elements, if `elems` is a whole number of blocks
    /// and the size fits in `usize` (a header can claim any element count).
    pub fn bytes_for(self, elems: usize) -> Option<usize> {
        let (be, bb) = self.block();
        if elems % be != 0 {
            return None;
        }
        (elems / be).checked_mul(bb)
    }

    /// The matching type of our own kernels, where one exists.
    pub fn kernel_type(self) -> Option<palisade_kernels::quant::WeightType> {
        use palisade_kernels::quant::WeightType as W;
        Some(match self {
            TensorType::F32 => W::F32,
            TensorType::F16 => W::F16,
            TensorType::BF16 => W::BF16,
            TensorType::Q4_0 => W::Q4_0,
            TensorType::Q4_1 => W::Q4_1,
            TensorType::Q8_0 => W::Q8_0,
            _ => return None,
        })
    }
}

/// A read-only memory-mapped file (or bytes held in memory, for parsers
/// fed from elsewhere: fuzzing, tests).
#[derive(Debug)]
pub struct MappedFile {
    /// Where it came from (for error messages).
    pub path: PathBuf,
    data: Storage,
}

#[derive(Debug)]
enum Storage {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl MappedFile {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> Result<Arc<Self>> {
        let io = |source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; a concurrent truncation of the model
        // file by another process is outside what we defend against (the
        // model directory is operator-owned and should be read-only).
        #[allow(unsafe_code)]
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        Ok(Arc::new(MappedFile {
            path: path.to_path_buf(),
            data: Storage::Map(mmap),
        }))
    }

    /// Wraps bytes already in memory; `label` names them in errors.
    pub fn from_bytes(label: &Path, bytes: Vec<u8>) -> Arc<Self> {
        Arc::new(MappedFile {
            path: label.to_path_buf(),
            data: Storage::Owned(bytes),
        })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        match &self.data {
            Storage::Map(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// One tensor: a typed view into a mapped file. `shape` is outermost first
/// (`[rows, cols]` for a matrix, cols being the contiguous dimension).
#[derive(Debug, Clone)]
pub struct TensorRef {
    /// Tensor name as stored.
    pub name: String,
    /// Storage type.
    pub ty: TensorType,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    file: Arc<MappedFile>,
    offset: usize,
    len: usize,
}

impl TensorRef {
    /// Builds a view after checking the byte range fits the file and the
    /// shape.
    pub fn new(
        name: String,
        ty: TensorType,
        shape: Vec<usize>,
        file: Arc<MappedFile>,
        offset: usize,
        len: usize,
    ) -> Result<Self> {
        let elems = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| {
                EngineError::format(
                    &file.path,
                    format!("tensor `{name}`: the shape {shape:?} overflows"),
                )
            })?;
        let need = ty.bytes_for(elems).ok_or_else(|| {
            EngineError::format(
                &file.path,
                format!(
                    "tensor `{name}`: {elems} elements of {ty:?} are not a whole number of blocks or do not fit in memory"
                ),
            )
        })?;
        if need != len {
            return Err(EngineError::format(
                &file.path,
                format!(
                    "tensor `{name}`: shape {shape:?} of {ty:?} needs {need} bytes, the file gives {len}"
                ),
            ));
        }
        if offset
            .checked_add(len)
            .is_none_or(|end| end > file.bytes().len())
        {
            return Err(EngineError::format(
                &file.path,
                format!(
                    "tensor `{name}`: data at bytes {offset}..{} lies beyond the end of the file ({} bytes): truncated?",
                    offset.saturating_add(len),
                    file.bytes().len()
                ),
            ));
        }
        Ok(TensorRef {
            name,
            ty,
            shape,
            file,
            offset,
            len,
        })
    }

    /// The tensor's raw bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.file.bytes()[self.offset..self.offset + self.len]
    }

    /// The file it lives in.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// Number of elements.
    pub fn elems(&self) -> usize {
        self.shape.iter().product()
    }

    /// Reads the whole tensor as `f32` (for small tensors: norms, biases).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.elems()];
        match self.ty.kernel_type() {
            Some(kt) => palisade_kernels::quant::dequantize_row(kt, self.bytes(), &mut out),
            None => crate::kquant::dequantize(self.ty, self.bytes(), &mut out),
        }
        Ok(out)
    }
}

/// A set of named tensors from one model.
pub trait TensorSource {
    /// The tensor called `name`, if present.
    fn tensor(&self, name: &str) -> Option<TensorRef>;
    /// Where the tensors come from (for error messages).
    fn origin(&self) -> &Path;

    /// The tensor called `name`, or a `MissingTensor` error.
    fn require(&self, name: &str) -> Result<TensorRef> {
        self.tensor(name).ok_or_else(|| EngineError::MissingTensor {
            path: self.origin().to_path_buf(),
            tensor: name.to_string(),
        })
    }
}
