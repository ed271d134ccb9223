//! Tiny random Llama models written to disk, for tests and examples that
//! need the shape of a model but not its knowledge. The same seed gives the
//! same weights in every format, so loaders can be checked against each
//! other.

pub mod bert;

use std::path::{Path, PathBuf};

use candle_core::quantized::k_quants::{BlockQ4K, BlockQ6K, GgmlType};
use palisade_kernels::quant::{WeightType, quantize_row};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::gguf::{GgufWriter, Value};

/// Shape of a tiny model.
#[derive(Debug, Clone)]
pub struct TinySpec {
    /// Transformer blocks.
    pub layers: usize,
    /// Hidden size (a multiple of 256 if K-quants are written).
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Feed-forward size.
    pub ffn: usize,
    /// Share the embedding with the output head.
    pub tied: bool,
    /// Weight seed.
    pub seed: u64,
}

impl Default for TinySpec {
    fn default() -> Self {
        TinySpec {
            layers: 2,
            hidden: 256,
            heads: 4,
            kv_heads: 2,
            ffn: 512,
            tied: true,
            seed: 42,
        }
    }
}

/// Storage format for the matrices of a tiny GGUF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyType {
    /// One of our kernels' types.
    Native(WeightType),
    /// Candle's Q4_K.
    Q4K,
    /// Candle's Q6_K.
    Q6K,
}

/// The tiny vocabulary: 256 byte tokens, a few merges, two specials.
pub fn tiny_vocab() -> (Vec<String>, Vec<(String, String)>) {
    let mut tokens: Vec<String> = vec![
        "<|endoftext|>".into(),
        "<|im_start|>".into(),
        "<|im_end|>".into(),
    ];
    tokens.extend(crate::tokenizer::byte_chars().iter().map(|c| c.to_string()));
    let merges: Vec<(String, String)> =
        [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
    for (a, b) in &merges {
        tokens.push(format!("{a}{b}"));
    }
    (tokens, merges)
}

struct Weights {
    vocab: usize,
    /// (name suffix, rows, cols, values) in Hugging Face naming and layout.
    mats: Vec<(String, usize, usize, Vec<f32>)>,
    vecs: Vec<(String, Vec<f32>)>,
}

fn weights(s: &TinySpec) -> Weights {
    let vocab = tiny_vocab().0.len();
    let mut rng = StdRng::seed_from_u64(s.seed);
    let hd = s.hidden / s.heads;
    let mut m = |rows: usize, cols: usize| -> Vec<f32> {
        let scale = 1.0 / (cols as f32).sqrt();
        (0..rows * cols)
            .map(|_| rng.random_range(-1.0f32..1.0) * scale * 1.7)
            .collect()
    };
    let mut mats = vec![(
        "model.embed_tokens.weight".to_string(),
        vocab,
        s.hidden,
        m(vocab, s.hidden),
    )];
    let mut vecs = Vec::new();
    for i in 0..s.layers {
        let p = format!("model.layers.{i}.");
        mats.push((
            format!("{p}self_attn.q_proj.weight"),
            s.heads * hd,
            s.hidden,
            m(s.heads * hd, s.hidden),
        ));
        mats.push((
            format!("{p}self_attn.k_proj.weight"),
            s.kv_heads * hd,
            s.hidden,
            m(s.kv_heads * hd, s.hidden),
        ));
        mats.push((
            format!("{p}self_attn.v_proj.weight"),
            s.kv_heads * hd,
            s.hidden,
            m(s.kv_heads * hd, s.hidden),
        ));
        mats.push((
            format!("{p}self_attn.o_proj.weight"),
            s.hidden,
            s.heads * hd,
            m(s.hidden, s.heads * hd),
        ));
        mats.push((
            format!("{p}mlp.gate_proj.weight"),
            s.ffn,
            s.hidden,
            m(s.ffn, s.hidden),
        ));
        mats.push((
            format!("{p}mlp.up_proj.weight"),
            s.ffn,
            s.hidden,
            m(s.ffn, s.hidden),
        ));
        mats.push((
            format!("{p}mlp.down_proj.weight"),
            s.hidden,
            s.ffn,
            m(s.hidden, s.ffn),
        ));
        vecs.push((
            format!("{p}input_layernorm.weight"),
            (0..s.hidden).map(|j| 1.0 + (j % 7) as f32 * 0.05).collect(),
        ));
        vecs.push((
            format!("{p}post_attention_layernorm.weight"),
            (0..s.hidden).map(|j| 1.0 - (j % 5) as f32 * 0.05).collect(),
        ));
    }
    vecs.push(("model.norm.weight".into(), vec![1.0; s.hidden]));
    if !s.tied {
        mats.push(("lm_head.weight".into(), vocab, s.hidden, m(vocab, s.hidden)));
    }
    Weights { vocab, mats, vecs }
}

fn gguf_name(hf: &str) -> String {
    let map = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
        ("model.layers.", "blk."),
    ];
    let mut out = hf.to_string();
    for (a, b) in map {
        out = out.replace(a, b);
    }
    out
}

/// llama.cpp's converter permutation of Q/K rows (halves -> adjacent pairs).
fn permute(w: &[f32], heads: usize, rows: usize, cols: usize) -> Vec<f32> {
    let hd = rows / heads;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for (dst, src) in [(2 * i, i), (2 * i + 1, i + hd / 2)] {
                let (d, s) = ((h * hd + dst) * cols, (h * hd + src) * cols);
                out[d..d + cols].copy_from_slice(&w[s..s + cols]);
            }
        }
    }
    out
}

fn encode(ty: TinyType, rows: usize, cols: usize, w: &[f32]) -> (u32, Vec<u8>) {
    fn kq<T: GgmlType>(w: &[f32], cols: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for row in w.chunks(cols) {
            let mut blocks = vec![T::zeros(); cols / T::BLCK_SIZE];
            T::from_float(row, &mut blocks);
            // SAFETY: candle's block types are plain `repr(C)` data.
            #[allow(unsafe_code)]
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    blocks.as_ptr() as *const u8,
                    std::mem::size_of_val(blocks.as_slice()),
                )
            };
            out.extend_from_slice(bytes);
        }
        out
    }
    let _ = rows;
    match ty {
        TinyType::Native(t) => {
            let id = match t {
                WeightType::F32 => 0,
                WeightType::F16 => 1,
                WeightType::Q4_0 => 2,
                WeightType::Q4_1 => 3,
                WeightType::Q8_0 => 8,
                WeightType::BF16 => 30,
            };
            (
                id,
                w.chunks(cols).flat_map(|r| quantize_row(t, r)).collect(),
            )
        }
        TinyType::Q4K => (12, kq::<BlockQ4K>(w, cols)),
        TinyType::Q6K => (14, kq::<BlockQ6K>(w, cols)),
    }
}

/// Writes the default tiny model (matrices as `ty`) into `dir` and loads it
/// with 2 threads. Panics on failure: it is test support.
pub fn tiny_engine(dir: &Path, ty: WeightType) -> crate::Engine {
    let path = write_gguf(dir, &TinySpec::default(), TinyType::Native(ty));
    crate::Engine::load(&crate::EngineOptions {
        model: path,
        threads: 2,
        ..Default::default()
    })
    .expect("the tiny model loads")
}

/// Writes a tiny GGUF (llama architecture, byte-level BPE tokenizer, a
/// ChatML template) with matrices stored as `ty`.
pub fn write_gguf(dir: &Path, spec: &TinySpec, ty: TinyType) -> PathBuf {
    let w = weights(spec);
    let (tokens, merges) = tiny_vocab();
    let mut g = GgufWriter::default();
    let s = |v: &str| Value::String(v.to_string());
    g.meta("general.architecture", s("llama"));
    g.meta("llama.block_count", Value::U32(spec.layers as u32));
    g.meta("llama.context_length", Value::U32(256));
    g.meta("llama.embedding_length", Value::U32(spec.hidden as u32));
    g.meta("llama.feed_forward_length", Value::U32(spec.ffn as u32));
    g.meta("llama.attention.head_count", Value::U32(spec.heads as u32));
    g.meta(
        "llama.attention.head_count_kv",
        Value::U32(spec.kv_heads as u32),
    );
    g.meta("llama.rope.freq_base", Value::F32(10000.0));
    g.meta("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
    g.meta("tokenizer.ggml.model", s("gpt2"));
    g.meta("tokenizer.ggml.pre", s("smollm"));
    g.meta(
        "tokenizer.ggml.tokens",
        Value::Array(tokens.iter().map(|t| s(t)).collect()),
    );
    g.meta(
        "tokenizer.ggml.token_type",
        Value::Array(
            tokens
                .iter()
                .enumerate()
                .map(|(i, _)| Value::I32(if i < 3 { 3 } else { 1 }))
                .collect(),
        ),
    );
    g.meta(
        "tokenizer.ggml.merges",
        Value::Array(merges.iter().map(|(a, b)| s(&format!("{a} {b}"))).collect()),
    );
    g.meta("tokenizer.ggml.bos_token_id", Value::U32(1));
    g.meta("tokenizer.ggml.eos_token_id", Value::U32(2));
    g.meta("tokenizer.chat_template", s(TINY_TEMPLATE));
    for (name, rows, cols, vals) in &w.mats {
        let vals = if name.contains("q_proj") {
            permute(vals, spec.heads, *rows, *cols)
        } else if name.contains("k_proj") {
            permute(vals, spec.kv_heads, *rows, *cols)
        } else {
            vals.clone()
        };
        // The embedding is looked up row by row; keep it in a native type.
        let t = if name.contains("embed") && !matches!(ty, TinyType::Native(_)) {
            TinyType::Native(WeightType::Q8_0)
        } else {
            ty
        };
        let (id, bytes) = encode(t, *rows, *cols, &vals);
        g.tensor(&gguf_name(name), &[*rows, *cols], id, bytes);
    }
    for (name, vals) in &w.vecs {
        g.tensor(
            &gguf_name(name),
            &[vals.len()],
            0,
            vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
        );
    }
    let _ = w.vocab;
    let path = dir.join("tiny.gguf");
    std::fs::write(&path, g.to_bytes()).expect("writing the tiny GGUF");
    path
}

/// The template of the tiny models (ChatML).
pub const TINY_TEMPLATE: &str = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Writes a tiny Hugging Face directory (f32 safetensors split over two
/// shards, config.json, tokenizer.json, tokenizer_config.json) with the same
/// weights as [`write_gguf`].
pub fn write_hf(dir: &Path, spec: &TinySpec) -> PathBuf {
    use safetensors::{Dtype, tensor::TensorView};
    let w = weights(spec);
    std::fs::create_dir_all(dir).expect("creating the model directory");
    let mut all: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, rows, cols, vals) in &w.mats {
        all.push((
            name.clone(),
            vec![*rows, *cols],
            vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
    }
    for (name, vals) in &w.vecs {
        all.push((
            name.clone(),
            vec![vals.len()],
            vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
    }
    let half = all.len() / 2;
    for (i, part) in [&all[..half], &all[half..]].into_iter().enumerate() {
        let views: Vec<(String, TensorView<'_>)> = part
            .iter()
            .map(|(n, s, d)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::F32, s.clone(), d).expect("valid view"),
                )
            })
            .collect();
        let bytes = safetensors::serialize(views, None).expect("serializing safetensors");
        std::fs::write(
            dir.join(format!("model-0000{}-of-00002.safetensors", i + 1)),
            bytes,
        )
        .expect("writing a shard");
    }
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": spec.hidden, "intermediate_size": spec.ffn,
        "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads, "num_key_value_heads": spec.kv_heads,
        "vocab_size": w.vocab, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256,
        "tie_word_embeddings": spec.tied
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("writing config.json");
    let (tokens, merges) = tiny_vocab();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i.into()))
        .collect();
    let tok = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": {"strategy": {"Fixed": 128}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "<|endoftext|>"},
        "added_tokens": (0..3).map(|i| serde_json::json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true})).collect::<Vec<_>>(),
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges.iter().map(|(a, b)| format!("{a} {b}")).collect::<Vec<_>>()}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).expect("writing tokenizer.json");
    let cfg = serde_json::json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": false, "chat_template": TINY_TEMPLATE});
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string())
        .expect("writing tokenizer_config.json");
    dir.to_path_buf()
}

/// The configuration of a [`TinySpec::default`] model, without writing
/// one (for cache and scheduler bookkeeping tests).
pub fn tiny_config() -> crate::config::ModelConfig {
    let s = TinySpec::default();
    crate::config::ModelConfig {
        arch: crate::config::Arch::Llama,
        n_layers: s.layers,
        hidden: s.hidden,
        n_heads: s.heads,
        n_kv_heads: s.kv_heads,
        head_dim: s.hidden / s.heads,
        ffn: s.ffn,
        vocab: tiny_vocab().0.len(),
        rms_eps: 1e-5,
        rope_theta: 10000.0,
        rope_dims: s.hidden / s.heads,
        rope_style: palisade_kernels::ops::RopeStyle::Interleaved,
        rope_freq_scale: 1.0,
        rope_freq_factors: None,
        context_length: 256,
        qkv_bias: false,
    }
}
