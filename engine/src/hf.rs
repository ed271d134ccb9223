//! Hugging Face model directories: `config.json`, one or more
//! `*.safetensors` shards (memory-mapped), `tokenizer.json` and
//! `tokenizer_config.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{EngineError, Result};
use crate::tensor::{MappedFile, TensorRef, TensorSource, TensorType};

/// Weight files that execute code when loaded; refused.
pub const PICKLE_EXTENSIONS: &[&str] = &["bin", "pt", "pth", "pkl", "ckpt"];

/// The tensors of all shards of a model directory.
#[derive(Debug)]
pub struct SafetensorsDir {
    dir: PathBuf,
    tensors: HashMap<String, TensorRef>,
}

impl SafetensorsDir {
    /// Maps every `*.safetensors` file in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let io = |source| EngineError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut shards = Vec::new();
        let mut pickles = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let p = entry.map_err(io)?.path();
            match p.extension().and_then(|e| e.to_str()) {
                Some("safetensors") => shards.push(p),
                Some(e) if PICKLE_EXTENSIONS.contains(&e) => pickles.push(p),
                _ => {}
            }
        }
        shards.sort();
        if shards.is_empty() {
            let message = if pickles.is_empty() {
                "no *.safetensors files in this directory".to_string()
            } else {
                format!(
                    "only pickle-based weights ({}) found: they can run arbitrary code when loaded and are refused; convert them to safetensors",
                    pickles
                        .iter()
                        .filter_map(|p| p.file_name()?.to_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            return Err(EngineError::UnsupportedFormat {
                path: dir.to_path_buf(),
                message,
            });
        }
        let mut tensors = HashMap::new();
        for shard in shards {
            for (name, t) in read_shard(MappedFile::open(&shard)?)? {
                if tensors.insert(name.clone(), t).is_some() {
                    return Err(EngineError::format(
                        &shard,
                        format!("tensor `{name}` appears in more than one shard"),
                    ));
                }
            }
        }
        Ok(SafetensorsDir {
            dir: dir.to_path_buf(),
            tensors,
        })
    }
}

impl TensorSource for SafetensorsDir {
    fn tensor(&self, name: &str) -> Option<TensorRef> {
        self.tensors.get(name).cloned()
    }
    fn origin(&self) -> &Path {
        &self.dir
    }
}

/// The tensors of one safetensors file: its header parsed and every
/// tensor's dtype, shape and byte range checked against the file.
pub fn read_shard(file: Arc<MappedFile>) -> Result<Vec<(String, TensorRef)>> {
    let shard = file.path.clone();
    let (header_len, meta) = safetensors::SafeTensors::read_metadata(file.bytes())
        .map_err(|e| EngineError::format(&shard, format!("invalid safetensors header: {e}")))?;
    let base = 8 + header_len;
    let mut out = Vec::new();
    for (name, info) in meta.tensors() {
        use safetensors::Dtype;
        let ty = match info.dtype {
            Dtype::F32 => TensorType::F32,
            Dtype::F16 => TensorType::F16,
            Dtype::BF16 => TensorType::BF16,
            other => {
                return Err(EngineError::UnsupportedTensorType {
                    path: shard,
                    tensor: name,
                    ty: format!("{other:?}"),
                });
            }
        };
        let (start, end) = info.data_offsets;
        let range = end
            .checked_sub(start)
            .zip(base.checked_add(start))
            .ok_or_else(|| {
                EngineError::format(
                    &shard,
                    format!("tensor `{name}`: data offsets {start}..{end} are invalid"),
                )
            })?;
        let t = TensorRef::new(
            name.clone(),
            ty,
            info.shape.clone(),
            file.clone(),
            range.1,
            range.0,
        )?;
        out.push((name, t));
    }
    Ok(out)
}

/// Refuses a single weight file in a pickle-based format.
pub fn refuse_pickle(path: &Path) -> Result<()> {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if PICKLE_EXTENSIONS.contains(&e) => Err(EngineError::UnsupportedFormat {
            path: path.to_path_buf(),
            message: format!(
                ".{e} files are Python pickles, which can run arbitrary code when loaded; only GGUF and safetensors are accepted"
            ),
        }),
        _ => Ok(()),
    }
}
