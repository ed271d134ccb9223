//! The Llama-family transformer (Llama, SmolLM, Mistral, Qwen2): loading
//! from GGUF or a Hugging Face directory, and the forward pass.
//!
//! The forward pass takes a run of tokens of one sequence (the whole prompt
//! at once, or one token while decoding), writes their keys and values into
//! a preallocated f16 cache in place, and returns logits for the last token
//! (or for every token when asked).

use std::path::{Path, PathBuf};

use half::f16;
use half::vec::HalfBitsVecExt;
use palisade_kernels::attention::{AttnShape, attention};
use palisade_kernels::matmul::Activations;
use palisade_kernels::ops::{Rope, add_assign, rms_norm, silu_mul};
use palisade_kernels::pool::ThreadPool;

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::hf::SafetensorsDir;
use crate::linear::{Linear, matmul_group};
use crate::tensor::{TensorRef, TensorSource};

struct Layer {
    attn_norm: Vec<f32>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
}

/// A loaded model: configuration and memory-mapped weights.
pub struct Model {
    /// Shape and hyper-parameters.
    pub config: ModelConfig,
    /// Where it was loaded from.
    pub path: PathBuf,
    embed: Linear,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    output: Linear,
    rope: Rope,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("config", &self.config)
            .finish()
    }
}

/// How tensors are named in each format.
enum Names {
    Gguf,
    Hf,
}

impl Names {
    fn global(&self, what: &str) -> &'static str {
        match (self, what) {
            (Names::Gguf, "embed") => "token_embd.weight",
            (Names::Gguf, "norm") => "output_norm.weight",
            (Names::Gguf, _) => "output.weight",
            (Names::Hf, "embed") => "model.embed_tokens.weight",
            (Names::Hf, "norm") => "model.norm.weight",
            (Names::Hf, _) => "lm_head.weight",
        }
    }
    fn layer(&self, i: usize, what: &str) -> String {
        let hf = match what {
            "attn_norm" => "input_layernorm.weight",
            "q" => "self_attn.q_proj.weight",
            "k" => "self_attn.k_proj.weight",
            "v" => "self_attn.v_proj.weight",
            "o" => "self_attn.o_proj.weight",
            "bq" => "self_attn.q_proj.bias",
            "bk" => "self_attn.k_proj.bias",
            "bv" => "self_attn.v_proj.bias",
            "ffn_norm" => "post_attention_layernorm.weight",
            "gate" => "mlp.gate_proj.weight",
            "up" => "mlp.up_proj.weight",
            _ => "mlp.down_proj.weight",
        };
        let gguf = match what {
            "attn_norm" => "attn_norm.weight",
            "q" => "attn_q.weight",
            "k" => "attn_k.weight",
            "v" => "attn_v.weight",
            "o" => "attn_output.weight",
            "bq" => "attn_q.bias",
            "bk" => "attn_k.bias",
            "bv" => "attn_v.bias",
            "ffn_norm" => "ffn_norm.weight",
            "gate" => "ffn_gate.weight",
            "up" => "ffn_up.weight",
            _ => "ffn_down.weight",
        };
        match self {
            Names::Gguf => format!("blk.{i}.{gguf}"),
            Names::Hf => format!("model.layers.{i}.{hf}"),
        }
    }
}

fn vector(src: &dyn TensorSource, name: &str, len: usize) -> Result<Vec<f32>> {
    let t = src.require(name)?;
    check_vector(&t, len)?;
    t.to_f32()
}

fn check_vector(t: &TensorRef, len: usize) -> Result<()> {
    if t.elems() != len || t.shape.iter().filter(|&&d| d != 1).count() > 1 {
        return Err(EngineError::TensorShape {
            path: t.path().to_path_buf(),
            tensor: t.name.clone(),
            expected: vec![len],
            actual: t.shape.clone(),
        });
    }
    Ok(())
}

impl Model {
    /// Loads a GGUF file or a Hugging Face directory.
    pub fn load(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let (config, tied) = ModelConfig::from_hf(&path.join("config.json"))?;
            let src = SafetensorsDir::open(path)?;
            Self::build(config, &src, Names::Hf, tied, path)
        } else {
            crate::hf::refuse_pickle(path)?;
            Self::from_gguf(&GgufFile::open(path)?, path)
        }
    }

    /// Builds the model from an already parsed GGUF file (`path` is for
    /// error messages).
    pub fn from_gguf(g: &GgufFile, path: &Path) -> Result<Self> {
        let mut config = ModelConfig::from_gguf(g, path)?;
        if let Some(t) = g.tensor("rope_freqs.weight") {
            check_vector(&t, config.rope_dims / 2)?;
            config.rope_freq_factors = Some(t.to_f32()?);
        }
        let tied = g.tensor("output.weight").is_none();
        Self::build(config, g, Names::Gguf, tied, path)
    }

    fn build(
        config: ModelConfig,
        src: &dyn TensorSource,
        names: Names,
        tied: bool,
        path: &Path,
    ) -> Result<Self> {
        let c = &config;
        let (d, q_out, kv_out) = (c.hidden, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let lin = |name: &str, rows, cols| Linear::new(src.require(name)?, rows, cols);
        let embed = lin(names.global("embed"), c.vocab, d)?;
        let output = if tied {
            embed.clone()
        } else {
            lin(names.global("output"), c.vocab, d)?
        };
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let n = |w: &str| names.layer(i, w);
            let bias = |w: &str, len| -> Result<Option<Vec<f32>>> {
                if c.qkv_bias {
                    vector(src, &n(w), len).map(Some)
                } else {
                    Ok(None)
                }
            };
            layers.push(Layer {
                attn_norm: vector(src, &n("attn_norm"), d)?,
                wq: lin(&n("q"), q_out, d)?,
                wk: lin(&n("k"), kv_out, d)?,
                wv: lin(&n("v"), kv_out, d)?,
                wo: lin(&n("o"), d, q_out)?,
                bq: bias("bq", q_out)?,
                bk: bias("bk", kv_out)?,
                bv: bias("bv", kv_out)?,
                ffn_norm: vector(src, &n("ffn_norm"), d)?,
                w_gate: lin(&n("gate"), c.ffn, d)?,
                w_up: lin(&n("up"), c.ffn, d)?,
                w_down: lin(&n("down"), d, c.ffn)?,
            });
        }
        let norm = vector(src, names.global("norm"), d)?;
        let rope = Rope::new(
            c.rope_dims,
            c.rope_theta,
            c.rope_style,
            c.rope_freq_scale,
            c.rope_freq_factors.as_deref(),
        );
        Ok(Model {
            config,
            path: path.to_path_buf(),
            embed,
            layers,
            norm,
            output,
            rope,
        })
    }

    /// Runs `tokens` at positions `start..start + tokens.len()` of the
    /// sequence whose cache is `cache`. Returns the logits of the last token
    /// (`vocab` values), or of every token when `all_logits`.
    pub fn forward<'w>(
        &self,
        pool: &ThreadPool,
        ws: &'w mut Workspace,
        cache: &mut KvCache,
        tokens: &[u32],
        start: usize,
        all_logits: bool,
    ) -> Result<&'w [f32]> {
        let c = &self.config;
        let n = tokens.len();
        if n == 0 {
            return Err(EngineError::InvalidParameter {
                field: "tokens",
                message: "no tokens to evaluate".into(),
            });
        }
        if start + n > cache.capacity {
            return Err(EngineError::ContextLength {
                prompt: start + n,
                max_tokens: 0,
                context: cache.capacity,
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(EngineError::InvalidParameter {
                field: "tokens",
                message: format!("token id {bad} is outside the vocabulary (0..{})", c.vocab),
            });
        }
        let (d, hd, nh, nkv) = (c.hidden, c.head_dim, c.n_heads, c.n_kv_heads);
        ws.resize(c, n);
        for (t, &tok) in tokens.iter().enumerate() {
            self.embed
                .row_f32(tok as usize, &mut ws.x[t * d..(t + 1) * d]);
        }
        let half = c.rope_dims / 2;
        for t in 0..n {
            let (cs, sn) = (
                &mut ws.cos[t * half..(t + 1) * half],
                &mut ws.sin[t * half..(t + 1) * half],
            );
            self.rope.angles(start + t, cs, sn);
        }
        let shape = AttnShape {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        for (li, l) in self.layers.iter().enumerate() {
            rms_norm(&ws.x, &l.attn_norm, c.rms_eps, &mut ws.h);
            matmul_group(
                pool,
                &mut ws.acts,
                &ws.h,
                n,
                &mut [(&l.wq, &mut ws.q), (&l.wk, &mut ws.k), (&l.wv, &mut ws.v)],
            );
            for (buf, bias, width) in [
                (&mut ws.q, &l.bq, nh * hd),
                (&mut ws.k, &l.bk, nkv * hd),
                (&mut ws.v, &l.bv, nkv * hd),
            ] {
                if let Some(b) = bias {
                    buf.chunks_exact_mut(width)
                        .for_each(|row| add_assign(row, b));
                }
            }
            for t in 0..n {
                let (cs, sn) = (
                    &ws.cos[t * half..(t + 1) * half],
                    &ws.sin[t * half..(t + 1) * half],
                );
                self.rope
                    .apply(&mut ws.q[t * nh * hd..(t + 1) * nh * hd], hd, cs, sn);
                self.rope
                    .apply(&mut ws.k[t * nkv * hd..(t + 1) * nkv * hd], hd, cs, sn);
            }
            cache.write(li, start, &ws.k, &ws.v);
            let (kc, vc) = cache.layer(li, start + n);
            attention(pool, &shape, &ws.q, kc, vc, start, n, &mut ws.attn);
            matmul_group(pool, &mut ws.acts, &ws.attn, n, &mut [(&l.wo, &mut ws.o)]);
            add_assign(&mut ws.x, &ws.o);
            rms_norm(&ws.x, &l.ffn_norm, c.rms_eps, &mut ws.h);
            matmul_group(
                pool,
                &mut ws.acts,
                &ws.h,
                n,
                &mut [(&l.w_gate, &mut ws.gate), (&l.w_up, &mut ws.up)],
            );
            silu_mul(&mut ws.gate, &ws.up);
            matmul_group(
                pool,
                &mut ws.acts,
                &ws.gate,
                n,
                &mut [(&l.w_down, &mut ws.o)],
            );
            add_assign(&mut ws.x, &ws.o);
        }
        cache.len = start + n;
        let rows = if all_logits { n } else { 1 };
        let first = n - rows;
        rms_norm(
            &ws.x[first * d..],
            &self.norm,
            c.rms_eps,
            &mut ws.h[..rows * d],
        );
        ws.logits.resize(rows * c.vocab, 0.0);
        let h = std::mem::take(&mut ws.h);
        matmul_group(
            pool,
            &mut ws.acts,
            &h[..rows * d],
            rows,
            &mut [(&self.output, &mut ws.logits)],
        );
        ws.h = h;
        Ok(&ws.logits)
    }
}

/// Scratch buffers for the forward pass, reused across calls (no per-token
/// allocation once warmed up).
#[derive(Debug, Default)]
pub struct Workspace {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    logits: Vec<f32>,
    acts: Activations,
}

impl Workspace {
    fn resize(&mut self, c: &ModelConfig, n: usize) {
        let (d, q, kv) = (c.hidden, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        self.x.resize(n * d, 0.0);
        self.h.resize(n * d, 0.0);
        self.q.resize(n * q, 0.0);
        self.k.resize(n * kv, 0.0);
        self.v.resize(n * kv, 0.0);
        self.attn.resize(n * q, 0.0);
        self.o.resize(n * d, 0.0);
        self.gate.resize(n * c.ffn, 0.0);
        self.up.resize(n * c.ffn, 0.0);
        self.cos.resize(n * c.rope_dims / 2, 0.0);
        self.sin.resize(n * c.rope_dims / 2, 0.0);
    }
}

/// One sequence's key/value cache: `capacity` positions per layer, f16,
/// allocated once and written in place.
#[derive(Debug)]
pub struct KvCache {
    k: Vec<Vec<f16>>,
    v: Vec<Vec<f16>>,
    width: usize,
    /// Positions this cache can hold.
    pub capacity: usize,
    /// Positions filled so far.
    pub len: usize,
}

impl KvCache {
    /// A cache for `capacity` positions of `config`'s model. The memory is
    /// reserved zeroed, so pages are only touched as positions fill.
    pub fn new(config: &ModelConfig, capacity: usize) -> Self {
        let width = config.n_kv_heads * config.head_dim;
        // Zeroed u16 allocations come from calloc: pages are mapped lazily,
        // so a large capacity costs nothing until positions are written.
        let mk = || {
            (0..config.n_layers)
                .map(|_| vec![0u16; capacity * width].reinterpret_into::<f16>())
                .collect()
        };
        KvCache {
            k: mk(),
            v: mk(),
            width,
            capacity,
            len: 0,
        }
    }

    /// Forgets positions from `len` on (they will be overwritten).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    fn write(&mut self, layer: usize, start: usize, k: &[f32], v: &[f32]) {
        let w = self.width;
        let n = k.len() / w;
        for (dst, src) in self.k[layer][start * w..(start + n) * w].iter_mut().zip(k) {
            *dst = f16::from_f32(*src);
        }
        for (dst, src) in self.v[layer][start * w..(start + n) * w].iter_mut().zip(v) {
            *dst = f16::from_f32(*src);
        }
    }

    fn layer(&self, layer: usize, len: usize) -> (&[f16], &[f16]) {
        (
            &self.k[layer][..len * self.width],
            &self.v[layer][..len * self.width],
        )
    }
}
