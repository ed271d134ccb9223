//! Sentence embeddings with a BERT encoder (all-MiniLM-L6-v2 and its
//! relatives): the encoder on candle tensors (CPU, f32), mean pooling over
//! the real tokens, L2 normalization — what sentence-transformers computes
//! for these models.
//!
//! A model directory holds `config.json` (BERT fields), `model.safetensors`
//! (tensor names with or without a `bert.` prefix) and `tokenizer.json`
//! (its padding and truncation are switched off: some ship fixed padding to
//! 128, which would change the mean).
//!
//! ```no_run
//! use palisade_engine::EmbeddingModel;
//! let m = EmbeddingModel::load("all-minilm-l6-v2".as_ref())?;
//! let ids = m.tokenize("A man is eating food.")?;
//! let vectors = m.embed(&[ids])?;
//! assert_eq!(vectors[0].len(), m.dim());
//! # Ok::<(), palisade_engine::EngineError>(())
//! ```

use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, Tensor};
use serde::Deserialize;

use crate::error::{EngineError, Result};
use crate::tensor::MappedFile;

/// Most padded tokens (sequences × longest length) run in one forward pass;
/// a larger batch is split, shortest inputs together.
const MAX_BATCH_TOKENS: usize = 8192;

/// The fields of a BERT `config.json` the encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Rows of the word embedding.
    pub vocab_size: usize,
    /// Width of the hidden states (the embedding dimension).
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Longest input, in tokens (rows of the position embedding).
    pub max_position_embeddings: usize,
    /// Rows of the token-type embedding (segment 0 is used).
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// Layer norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Activation of the feed-forward layer: `gelu` (erf) or a tanh
    /// approximation (`gelu_new`, `gelu_pytorch_tanh`).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// `bert` if present.
    #[serde(default)]
    pub model_type: Option<String>,
    /// `absolute` if present.
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

impl BertConfig {
    fn check(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, message: String| {
            Err(EngineError::Config {
                path: path.to_path_buf(),
                key: key.into(),
                message,
            })
        };
        if let Some(t) = self.model_type.as_deref().filter(|t| *t != "bert") {
            return bad(
                "model_type",
                format!("`{t}` is not supported (only `bert`)"),
            );
        }
        if let Some(t) = self
            .position_embedding_type
            .as_deref()
            .filter(|t| *t != "absolute")
        {
            return bad(
                "position_embedding_type",
                format!("`{t}` is not supported (only `absolute`)"),
            );
        }
        if !matches!(
            self.hidden_act.as_str(),
            "gelu" | "gelu_new" | "gelu_pytorch_tanh"
        ) {
            return bad(
                "hidden_act",
                format!(
                    "`{}` is not supported (gelu, gelu_new, gelu_pytorch_tanh)",
                    self.hidden_act
                ),
            );
        }
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(
                "num_attention_heads",
                format!(
                    "{} heads do not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            );
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return bad(
                "layer_norm_eps",
                format!("must be positive, got {}", self.layer_norm_eps),
            );
        }
        Ok(())
    }
}

/// `x W^T + b` with `W` stored `[out, in]`.
#[derive(Debug)]
struct Linear {
    w: Tensor,
    b: Tensor,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, t, d) = x.dims3()?;
        let y = x
            .reshape((n * t, d))?
            .matmul(&self.w.t()?)?
            .broadcast_add(&self.b)?;
        y.reshape((n, t, ()))
    }
}

#[derive(Debug)]
struct LayerNorm {
    w: Tensor,
    b: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        x.broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.w)?
            .broadcast_add(&self.b)
    }
}

#[derive(Debug)]
struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
}

/// A BERT sentence-embedding model with its tokenizer.
pub struct EmbeddingModel {
    name: String,
    dir: PathBuf,
    config: BertConfig,
    tokenizer: tokenizers::Tokenizer,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl std::fmt::Debug for EmbeddingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingModel")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish()
    }
}

/// Reads tensors out of a memory-mapped safetensors file, checking each
/// one's type and shape.
struct Weights<'a> {
    path: &'a Path,
    st: safetensors::SafeTensors<'a>,
    prefix: &'static str,
}

impl Weights<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = format!("{}{name}", self.prefix);
        let view = self
            .st
            .tensor(&full)
            .map_err(|_| EngineError::MissingTensor {
                path: self.path.into(),
                tensor: full.clone(),
            })?;
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            other => {
                return Err(EngineError::UnsupportedTensorType {
                    path: self.path.into(),
                    tensor: full,
                    ty: format!("{other:?}"),
                });
            }
        };
        if view.shape() != shape {
            return Err(EngineError::TensorShape {
                path: self.path.into(),
                tensor: full,
                expected: shape.to_vec(),
                actual: view.shape().to_vec(),
            });
        }
        Tensor::from_raw_buffer(view.data(), dtype, shape, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| EngineError::format(self.path, format!("tensor `{full}`: {e}")))
    }

    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<Linear> {
        Ok(Linear {
            w: self.get(&format!("{name}.weight"), &[out, inp])?,
            b: self.get(&format!("{name}.bias"), &[out])?,
        })
    }

    fn norm(&self, name: &str, d: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            w: self.get(&format!("{name}.weight"), &[d])?,
            b: self.get(&format!("{name}.bias"), &[d])?,
            eps,
        })
    }
}

impl EmbeddingModel {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from
    /// `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|source| EngineError::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let config: BertConfig = serde_json::from_str(&text)
            .map_err(|e| EngineError::format(&cfg_path, format!("not a BERT config: {e}")))?;
        config.check(&cfg_path)?;

        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(EngineError::Io {
                path: tok_path,
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        let mut tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        let tok_vocab = tokenizer.get_vocab_size(true);
        if tok_vocab > config.vocab_size {
            return Err(EngineError::Tokenizer(format!(
                "{}: {tok_vocab} tokens, but {} gives vocab_size {}",
                tok_path.display(),
                cfg_path.display(),
                config.vocab_size
            )));
        }

        let st_path = dir.join("model.safetensors");
        if !st_path.is_file() && dir.join("pytorch_model.bin").is_file() {
            return Err(EngineError::UnsupportedFormat {
                path: dir.to_path_buf(),
                message: "no model.safetensors, only pytorch_model.bin: a Python pickle, which can run code when loaded, and is refused; convert it to safetensors".into(),
            });
        }
        let file = MappedFile::open(&st_path)?;
        let st = safetensors::SafeTensors::deserialize(file.bytes())
            .map_err(|e| EngineError::format(&st_path, format!("invalid safetensors file: {e}")))?;
        let prefix = if st.tensor("bert.embeddings.word_embeddings.weight").is_ok() {
            "bert."
        } else {
            ""
        };
        let w = Weights {
            path: &st_path,
            st,
            prefix,
        };
        let c = &config;
        let (d, eps) = (c.hidden_size, c.layer_norm_eps);
        let token_type = w.get(
            "embeddings.token_type_embeddings.weight",
            &[c.type_vocab_size, d],
        )?;
        let token_type = token_type
            .get(0)
            .map_err(|e| EngineError::format(&st_path, e.to_string()))?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{i}.");
            layers.push(Layer {
                q: w.linear(&format!("{p}attention.self.query"), d, d)?,
                k: w.linear(&format!("{p}attention.self.key"), d, d)?,
                v: w.linear(&format!("{p}attention.self.value"), d, d)?,
                attn_out: w.linear(&format!("{p}attention.output.dense"), d, d)?,
                attn_norm: w.norm(&format!("{p}attention.output.LayerNorm"), d, eps)?,
                up: w.linear(&format!("{p}intermediate.dense"), c.intermediate_size, d)?,
                down: w.linear(&format!("{p}output.dense"), d, c.intermediate_size)?,
                out_norm: w.norm(&format!("{p}output.LayerNorm"), d, eps)?,
            });
        }
        let name = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let name = name
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("embeddings")
            .to_string();
        Ok(EmbeddingModel {
            word: w.get("embeddings.word_embeddings.weight", &[c.vocab_size, d])?,
            position: w.get(
                "embeddings.position_embeddings.weight",
                &[c.max_position_embeddings, d],
            )?,
            token_type,
            emb_norm: w.norm("embeddings.LayerNorm", d, eps)?,
            layers,
            name,
            dir: dir.to_path_buf(),
            tokenizer,
            config,
        })
    }

    /// Tokenizes `text` with the special tokens the model expects
    /// (`[CLS] … [SEP]`). Not truncated: [`EmbeddingModel::embed`] refuses
    /// inputs longer than [`EmbeddingModel::max_tokens`].
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode_fast(text, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Longest input in tokens (special tokens included).
    pub fn max_tokens(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// Length of the embedding vectors.
    pub fn dim(&self) -> usize {
        self.config.hidden_size
    }

    /// The model's name (its directory name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model's configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Embeds each token sequence: one unit-length vector of
    /// [`EmbeddingModel::dim`] floats per input, in order. Inputs of
    /// different lengths are padded internally and masked out, so an input's
    /// vector does not depend on the rest of the batch.
    pub fn embed(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let (max, vocab) = (self.max_tokens(), self.config.vocab_size);
        for (i, ids) in batch.iter().enumerate() {
            let message = if ids.is_empty() {
                format!("input {i} is empty")
            } else if ids.len() > max {
                format!(
                    "input {i} has {} tokens, more than the model's limit of {max}",
                    ids.len()
                )
            } else if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
                format!("input {i} has token id {id}, outside the vocabulary of {vocab} tokens")
            } else {
                continue;
            };
            return Err(EngineError::InvalidParameter {
                field: "input",
                message,
            });
        }
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&i| batch[i].len());
        let mut out = vec![Vec::new(); batch.len()];
        let mut start = 0;
        while start < order.len() {
            // Sorted by length: the last one taken is the longest.
            let mut end = start + 1;
            while end < order.len()
                && (end + 1 - start) * batch[order[end]].len() <= MAX_BATCH_TOKENS
            {
                end += 1;
            }
            let chunk: Vec<&[u32]> = order[start..end]
                .iter()
                .map(|&i| batch[i].as_slice())
                .collect();
            let vecs = self.forward(&chunk).map_err(|e| {
                EngineError::format(&self.dir, format!("embedding forward pass: {e}"))
            })?;
            for (&i, v) in order[start..end].iter().zip(vecs) {
                out[i] = v;
            }
            start = end;
        }
        Ok(out)
    }

    /// Encoder, mean pooling and normalization of one padded batch.
    fn forward(&self, batch: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let (n, t) = (
            batch.len(),
            batch.iter().map(|s| s.len()).max().unwrap_or(0),
        );
        let heads = self.config.num_attention_heads;
        let hd = self.config.hidden_size / heads;
        let mut ids = vec![0u32; n * t];
        let mut mask = vec![0f32; n * t];
        for (r, seq) in batch.iter().enumerate() {
            ids[r * t..r * t + seq.len()].copy_from_slice(seq);
            mask[r * t..r * t + seq.len()].fill(1.0);
        }
        let dev = Device::Cpu;
        let ids = Tensor::from_vec(ids, n * t, &dev)?;
        let mask = Tensor::from_vec(mask, (n, t), &dev)?;
        // Padded keys get -1e30 before the softmax: a weight of exactly 0.
        let bias = ((mask.reshape((n, 1, 1, t))? - 1.0)? * 1e30)?;
        let x = self.word.index_select(&ids, 0)?.reshape((n, t, ()))?;
        let x = x
            .broadcast_add(&self.position.narrow(0, 0, t)?)?
            .broadcast_add(&self.token_type)?;
        let mut x = self.emb_norm.forward(&x)?;
        let split = |y: Tensor| y.reshape((n, t, heads, hd))?.transpose(1, 2)?.contiguous();
        let scale = 1.0 / (hd as f64).sqrt();
        for l in &self.layers {
            let (q, k, v) = (
                split(l.q.forward(&x)?)?,
                split(l.k.forward(&x)?)?,
                split(l.v.forward(&x)?)?,
            );
            let s = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias)?;
            let s = s.broadcast_sub(&s.max_keepdim(D::Minus1)?)?.exp()?;
            let p = s.broadcast_div(&s.sum_keepdim(D::Minus1)?)?;
            let ctx = p.matmul(&v)?.transpose(1, 2)?.reshape((n, t, ()))?;
            x = l.attn_norm.forward(&(l.attn_out.forward(&ctx)? + &x)?)?;
            let h = l.up.forward(&x)?;
            let h = if self.config.hidden_act == "gelu" {
                h.gelu_erf()?
            } else {
                h.gelu()?
            };
            x = l.out_norm.forward(&(l.down.forward(&h)? + &x)?)?;
        }
        let mask = mask.unsqueeze(2)?;
        let sum = x.broadcast_mul(&mask)?.sum(1)?;
        let mean = sum.broadcast_div(&mask.sum(1)?)?;
        // As torch's F.normalize: divide by max(norm, 1e-12).
        let norm = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        mean.broadcast_div(&norm)?.to_vec2()
    }
}

#[cfg(test)]
mod tests;
