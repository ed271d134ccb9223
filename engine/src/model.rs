//! The Llama-family transformer (Llama, SmolLM, Mistral, Qwen2): loading
//! from GGUF or a Hugging Face directory, and the forward pass.
//!
//! The forward pass takes a batch: runs of tokens of several sequences
//! (prompt chunks, or one token each while decoding), writes their keys and
//! values into the paged f16 cache in place, and returns the logits each
//! sequence asks for.

use std::path::{Path, PathBuf};

use palisade_kernels::attention::{AttnShape, PagedKv, QueryRow, paged_attention};
use palisade_kernels::matmul::Activations;
use palisade_kernels::ops::{Rope, add_assign, rms_norm, silu_mul_rows};
use palisade_kernels::pool::ThreadPool;

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::hf::SafetensorsDir;
use crate::kv::{BLOCK_SIZE, BlockPool};
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
            // Weights first: a directory of pickles is refused as such,
            // whatever else is missing.
            let src = SafetensorsDir::open(path)?;
            let (config, tied) = ModelConfig::from_hf(&path.join("config.json"))?;
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
    /// single sequence whose cache is `cache`. Returns the logits of the
    /// last token (`vocab` values), or of every token when `all_logits`.
    pub fn forward<'w>(
        &self,
        pool: &ThreadPool,
        ws: &'w mut Workspace,
        cache: &mut KvCache,
        tokens: &[u32],
        start: usize,
        all_logits: bool,
    ) -> Result<&'w [f32]> {
        let capacity = cache.table.len() * BLOCK_SIZE;
        if start + tokens.len() > capacity {
            return Err(EngineError::ContextLength {
                prompt: start + tokens.len(),
                max_tokens: 0,
                context: capacity,
            });
        }
        let seq = BatchSeq {
            tokens,
            start,
            blocks: &cache.table,
            logits: if all_logits {
                Logits::All
            } else {
                Logits::Last
            },
        };
        let out = self.forward_batch(pool, ws, &mut cache.pool, &[seq])?;
        cache.len = start + tokens.len();
        Ok(out)
    }

    /// One step of a batch: runs each sequence's `tokens` at positions
    /// `start..` against the paged cache `kv` (their keys and values are
    /// written into the sequence's blocks, which must already be allocated
    /// and writable), and returns the requested logits rows (`vocab` values
    /// each) in batch order. Every row's result is the same as it would be
    /// with the sequence alone in the batch.
    pub fn forward_batch<'w>(
        &self,
        pool: &ThreadPool,
        ws: &'w mut Workspace,
        kv: &mut BlockPool,
        seqs: &[BatchSeq<'_>],
    ) -> Result<&'w [f32]> {
        let c = &self.config;
        let n: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        if n == 0 {
            return Err(EngineError::InvalidParameter {
                field: "tokens",
                message: "no tokens to evaluate".into(),
            });
        }
        let (d, hd, nh, nkv) = (c.hidden, c.head_dim, c.n_heads, c.n_kv_heads);
        ws.resize(c, n);
        ws.slots.clear();
        ws.tables.clear();
        ws.rows.clear();
        ws.logit_rows.clear();
        let half = c.rope_dims / 2;
        let mut t = 0;
        for s in seqs {
            if s.tokens.is_empty()
                || (s.start + s.tokens.len()).div_ceil(BLOCK_SIZE) > s.blocks.len()
            {
                return Err(EngineError::InvalidParameter {
                    field: "tokens",
                    message: "a batch entry has no tokens or too few blocks".into(),
                });
            }
            if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= c.vocab) {
                return Err(EngineError::InvalidParameter {
                    field: "tokens",
                    message: format!("token id {bad} is outside the vocabulary (0..{})", c.vocab),
                });
            }
            let table = ws.tables.len() as u32;
            ws.tables.extend_from_slice(s.blocks);
            for (i, &tok) in s.tokens.iter().enumerate() {
                let pos = s.start + i;
                self.embed
                    .row_f32(tok as usize, &mut ws.x[t * d..(t + 1) * d]);
                self.rope.angles(
                    pos,
                    &mut ws.cos[t * half..(t + 1) * half],
                    &mut ws.sin[t * half..(t + 1) * half],
                );
                ws.slots.push(
                    s.blocks[pos / BLOCK_SIZE] * BLOCK_SIZE as u32 + (pos % BLOCK_SIZE) as u32,
                );
                ws.rows.push(QueryRow {
                    table,
                    pos: pos as u32,
                });
                let last = i + 1 == s.tokens.len();
                if s.logits == Logits::All || (s.logits == Logits::Last && last) {
                    ws.logit_rows.push(t);
                }
                t += 1;
            }
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
            kv.write(li, &ws.slots, &ws.k, &ws.v);
            let (kc, vc) = kv.layer(li);
            let paged = PagedKv {
                k: kc,
                v: vc,
                block_size: BLOCK_SIZE,
            };
            paged_attention(
                pool,
                &shape,
                &ws.q,
                paged,
                &ws.tables,
                &ws.rows,
                &mut ws.attn,
            );
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
            silu_mul_rows(pool, &mut ws.gate, &ws.up, n);
            matmul_group(
                pool,
                &mut ws.acts,
                &ws.gate,
                n,
                &mut [(&l.w_down, &mut ws.o)],
            );
            add_assign(&mut ws.x, &ws.o);
        }
        let rows = ws.logit_rows.len();
        if rows == 0 {
            ws.logits.clear();
            return Ok(&ws.logits);
        }
        for (i, &t) in ws.logit_rows.iter().enumerate() {
            rms_norm(
                &ws.x[t * d..(t + 1) * d],
                &self.norm,
                c.rms_eps,
                &mut ws.h[i * d..(i + 1) * d],
            );
        }
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

/// Which logits a batch entry wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// None (a prompt chunk that does not reach the end of the prompt).
    None,
    /// The last token's.
    Last,
    /// Every token's.
    All,
}

/// One sequence's share of a batch step.
#[derive(Debug, Clone, Copy)]
pub struct BatchSeq<'a> {
    /// Tokens to evaluate.
    pub tokens: &'a [u32],
    /// Position of the first of them.
    pub start: usize,
    /// The sequence's block table, covering at least `start + tokens.len()`
    /// positions.
    pub blocks: &'a [u32],
    /// Which logits to return.
    pub logits: Logits,
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
    slots: Vec<u32>,
    tables: Vec<u32>,
    rows: Vec<QueryRow>,
    logit_rows: Vec<usize>,
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

/// One sequence's cache for [`Model::forward`]: a private block pool just
/// large enough for `capacity` positions, its blocks in order. (Serving
/// shares one pool between sequences; see [`crate::scheduler`].)
#[derive(Debug)]
pub struct KvCache {
    pool: BlockPool,
    table: Vec<u32>,
    /// Positions filled so far.
    pub len: usize,
}

impl KvCache {
    /// A cache for `capacity` positions of `config`'s model.
    pub fn new(config: &ModelConfig, capacity: usize) -> Self {
        let blocks = capacity.div_ceil(BLOCK_SIZE).max(1);
        let mut pool = BlockPool::new(config, blocks);
        let table = (0..blocks)
            .map(|_| pool.allocate().expect("a fresh pool has every block free"))
            .collect();
        KvCache {
            pool,
            table,
            len: 0,
        }
    }

    /// Positions this cache can hold.
    pub fn capacity(&self) -> usize {
        self.table.len() * BLOCK_SIZE
    }

    /// Forgets positions from `len` on (they will be overwritten).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}
