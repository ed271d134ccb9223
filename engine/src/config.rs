//! The model configuration, read from GGUF metadata or a Hugging Face
//! `config.json`, validated once.

use std::path::Path;

use palisade_kernels::ops::RopeStyle;
use serde::Deserialize;

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;

/// Architectures of the Llama family this engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 1/2/3, SmolLM, and Mistral (same block).
    Llama,
    /// Qwen2: Llama with biases on Q, K and V.
    Qwen2,
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Architecture.
    pub arch: Arch,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (GQA when fewer than `n_heads`).
    pub n_kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Feed-forward inner size.
    pub ffn: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// Dimensions rotated per head.
    pub rope_dims: usize,
    /// How RoPE pairs dimensions (depends on how Q/K weights are laid out).
    pub rope_style: RopeStyle,
    /// Linear RoPE scaling: positions are multiplied by this.
    pub rope_freq_scale: f32,
    /// Llama 3 style per-frequency divisors.
    pub rope_freq_factors: Option<Vec<f32>>,
    /// Trained context length.
    pub context_length: usize,
    /// Q, K and V have biases.
    pub qkv_bias: bool,
}

impl ModelConfig {
    /// Reads the configuration from GGUF metadata.
    pub fn from_gguf(g: &GgufFile, path: &Path) -> Result<Self> {
        let arch_name = g.get_str("general.architecture")?.to_string();
        let arch = match arch_name.as_str() {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            _ => {
                return Err(EngineError::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    arch: arch_name,
                });
            }
        };
        let k = |s: &str| format!("{arch_name}.{s}");
        let n_heads = g.get_u64(&k("attention.head_count"))? as usize;
        let hidden = g.get_u64(&k("embedding_length"))? as usize;
        let n_kv_heads = g
            .get(&k("attention.head_count_kv"))
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .unwrap_or(n_heads);
        let head_dim = match g.get(&k("attention.key_length")).and_then(|v| v.as_u64()) {
            Some(v) => v as usize,
            None if n_heads > 0 => hidden / n_heads,
            None => 0,
        };
        let vocab = match g.get(&k("vocab_size")).and_then(|v| v.as_u64()) {
            Some(v) => v as usize,
            None => g
                .get_str_array("tokenizer.ggml.tokens")
                .map(|t| t.len())
                .unwrap_or(0),
        };
        let scaling = g
            .get(&k("rope.scaling.type"))
            .and_then(|v| v.as_str())
            .unwrap_or("none");
        let factor = g.get_f64_opt(&k("rope.scaling.factor")).unwrap_or(1.0) as f32;
        let rope_freq_scale = match scaling {
            "linear" if factor > 0.0 => 1.0 / factor,
            "none" | "linear" => 1.0,
            other => {
                return Err(EngineError::Config {
                    path: path.to_path_buf(),
                    key: k("rope.scaling.type"),
                    message: format!(
                        "RoPE scaling `{other}` is not supported (none, linear, and llama3 freq factors are)"
                    ),
                });
            }
        };
        let cfg = ModelConfig {
            arch,
            n_layers: g.get_u64(&k("block_count"))? as usize,
            hidden,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn: g.get_u64(&k("feed_forward_length"))? as usize,
            vocab,
            rms_eps: g
                .get_f64_opt(&k("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5) as f32,
            rope_theta: g.get_f64_opt(&k("rope.freq_base")).unwrap_or(10000.0) as f32,
            rope_dims: g
                .get(&k("rope.dimension_count"))
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .unwrap_or(head_dim),
            // llama.cpp's converter permutes Llama Q/K rows for adjacent-pair
            // RoPE; Qwen2 files keep the Hugging Face (NeoX) layout.
            rope_style: if arch == Arch::Llama {
                RopeStyle::Interleaved
            } else {
                RopeStyle::Neox
            },
            rope_freq_scale,
            rope_freq_factors: None,
            context_length: g
                .get(&k("context_length"))
                .and_then(|v| v.as_u64())
                .unwrap_or(2048) as usize,
            qkv_bias: arch == Arch::Qwen2,
        };
        cfg.validate(path)
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf(path: &Path) -> Result<(Self, bool)> {
        let text = std::fs::read_to_string(path).map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let hf: HfConfig = serde_json::from_str(&text).map_err(|e| EngineError::Config {
            path: path.to_path_buf(),
            key: "config.json".into(),
            message: e.to_string(),
        })?;
        let arch = match hf.model_type.as_str() {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => {
                return Err(EngineError::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    arch: other.to_string(),
                });
            }
        };
        let n_heads = hf.num_attention_heads;
        let head_dim = hf.head_dim.unwrap_or(if n_heads > 0 {
            hf.hidden_size / n_heads
        } else {
            0
        });
        let mut freq_scale = 1.0;
        let mut factors = None;
        if let Some(rs) = &hf.rope_scaling {
            let kind = rs
                .rope_type
                .as_deref()
                .or(rs.kind.as_deref())
                .unwrap_or("default");
            match kind {
                "default" => {}
                "linear" => freq_scale = 1.0 / rs.factor.unwrap_or(1.0),
                "llama3" => {
                    factors = Some(llama3_factors(
                        head_dim,
                        hf.rope_theta.unwrap_or(10000.0),
                        rs,
                    ))
                }
                other => {
                    return Err(EngineError::Config {
                        path: path.to_path_buf(),
                        key: "rope_scaling".into(),
                        message: format!(
                            "RoPE scaling `{other}` is not supported (default, linear, llama3 are)"
                        ),
                    });
                }
            }
        }
        let cfg = ModelConfig {
            arch,
            n_layers: hf.num_hidden_layers,
            hidden: hf.hidden_size,
            n_heads,
            n_kv_heads: hf.num_key_value_heads.unwrap_or(n_heads),
            head_dim,
            ffn: hf.intermediate_size,
            vocab: hf.vocab_size,
            rms_eps: hf.rms_norm_eps.unwrap_or(1e-5),
            rope_theta: hf.rope_theta.unwrap_or(10000.0),
            rope_dims: head_dim,
            rope_style: RopeStyle::Neox,
            rope_freq_scale: freq_scale,
            rope_freq_factors: factors,
            context_length: hf.max_position_embeddings.unwrap_or(2048),
            qkv_bias: arch == Arch::Qwen2 || hf.attention_bias.unwrap_or(false),
        };
        Ok((cfg.validate(path)?, hf.tie_word_embeddings.unwrap_or(false)))
    }

    fn validate(self, path: &Path) -> Result<Self> {
        let bad = |key: &str, message: String| EngineError::Config {
            path: path.to_path_buf(),
            key: key.into(),
            message,
        };
        for (name, v) in [
            ("layers", self.n_layers),
            ("hidden size", self.hidden),
            ("head count", self.n_heads),
            ("kv head count", self.n_kv_heads),
            ("feed-forward size", self.ffn),
            ("vocabulary size", self.vocab),
            ("head size", self.head_dim),
        ] {
            if v == 0 || v > 1 << 20 {
                return Err(bad(name, format!("{v} is out of range (1 to {})", 1 << 20)));
            }
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return Err(bad(
                "kv head count",
                format!(
                    "{} query heads are not a multiple of {} kv heads",
                    self.n_heads, self.n_kv_heads
                ),
            ));
        }
        if self.head_dim > 256
            || self.head_dim % 2 != 0
            || self.rope_dims > self.head_dim
            || self.rope_dims % 2 != 0
        {
            return Err(bad(
                "head size",
                format!(
                    "head size {} / rope dims {} unsupported (even, at most 256)",
                    self.head_dim, self.rope_dims
                ),
            ));
        }
        if !(self.rms_eps > 0.0 && self.rms_eps < 1.0) || !(self.rope_theta > 0.0) {
            return Err(bad(
                "rms_eps/rope_theta",
                format!(
                    "rms_eps {} or rope theta {} out of range",
                    self.rms_eps, self.rope_theta
                ),
            ));
        }
        Ok(self)
    }
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: String,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: Option<f32>,
    rope_theta: Option<f32>,
    rope_scaling: Option<HfRopeScaling>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
}

#[derive(Deserialize)]
struct HfRopeScaling {
    #[serde(rename = "type")]
    kind: Option<String>,
    rope_type: Option<String>,
    factor: Option<f32>,
    low_freq_factor: Option<f32>,
    high_freq_factor: Option<f32>,
    original_max_position_embeddings: Option<f32>,
}

/// Llama 3's frequency divisors (the same table llama.cpp stores as
/// `rope_freqs.weight`).
fn llama3_factors(head_dim: usize, theta: f32, rs: &HfRopeScaling) -> Vec<f32> {
    let factor = rs.factor.unwrap_or(8.0);
    let low = rs.low_freq_factor.unwrap_or(1.0);
    let high = rs.high_freq_factor.unwrap_or(4.0);
    let old_ctx = rs.original_max_position_embeddings.unwrap_or(8192.0);
    let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf(2.0 * i as f32 / head_dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            let new = if wavelen < high_wavelen {
                freq
            } else if wavelen > low_wavelen {
                freq / factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                (1.0 - smooth) * freq / factor + smooth * freq
            };
            freq / new
        })
        .collect()
}
