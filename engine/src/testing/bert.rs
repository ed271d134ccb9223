//! A tiny random BERT embedding model written to disk (config.json,
//! model.safetensors, a WordPiece tokenizer.json shipping fixed padding and
//! truncation, as some real ones do), for tests of
//! [`EmbeddingModel`](crate::EmbeddingModel) and of the embeddings API.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Shape of a tiny BERT.
#[derive(Debug, Clone)]
pub struct TinyBertSpec {
    /// Encoder layers.
    pub layers: usize,
    /// Hidden size (the embedding dimension).
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// Feed-forward size.
    pub ffn: usize,
    /// Longest input in tokens.
    pub max_positions: usize,
    /// Name tensors `bert.embeddings…` instead of `embeddings…`.
    pub bert_prefix: bool,
    /// Weight seed.
    pub seed: u64,
}

impl Default for TinyBertSpec {
    fn default() -> Self {
        TinyBertSpec {
            layers: 2,
            hidden: 32,
            heads: 4,
            ffn: 64,
            max_positions: 24,
            bert_prefix: false,
            seed: 7,
        }
    }
}

/// A named f32 tensor: (name, shape, values).
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// The tiny WordPiece vocabulary: `[PAD] [UNK] [CLS] [SEP] [MASK]`, a few
/// words, the letters and digits, their `##` continuations, punctuation.
pub fn tiny_bert_vocab() -> Vec<String> {
    let mut v: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let words = [
        "the", "man", "is", "eating", "food", "girl", "baby", "bread", "piece", "of", "carrying",
        "##s", "##ing",
    ];
    v.extend(words.iter().map(|s| s.to_string()));
    let chars: Vec<char> = ('a'..='z').chain('0'..='9').collect();
    v.extend(chars.iter().map(|c| c.to_string()));
    v.extend(chars.iter().map(|c| format!("##{c}")));
    v.extend(
        [".", ",", "!", "?", "-", ":", "'"]
            .iter()
            .map(|s| s.to_string()),
    );
    v
}

/// The tensors of a tiny BERT, named as in Hugging Face's `BertModel`
/// (with an `I64` `embeddings.position_ids` as real checkpoints have it
/// separately: see [`write_tiny_bert`]).
pub fn tiny_bert_tensors(spec: &TinyBertSpec) -> Vec<NamedTensor> {
    let vocab = tiny_bert_vocab().len();
    let (d, f) = (spec.hidden, spec.ffn);
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut rand = |shape: &[usize], scale: f32, center: f32| -> Vec<f32> {
        (0..shape.iter().product::<usize>())
            .map(|_| center + rng.random_range(-1.0f32..1.0) * scale)
            .collect()
    };
    let p = if spec.bert_prefix { "bert." } else { "" };
    let mut out: Vec<NamedTensor> = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, vals: Vec<f32>| {
        out.push((format!("{p}{name}"), shape, vals))
    };
    push(
        "embeddings.word_embeddings.weight".into(),
        vec![vocab, d],
        rand(&[vocab, d], 1.0, 0.0),
    );
    push(
        "embeddings.position_embeddings.weight".into(),
        vec![spec.max_positions, d],
        rand(&[spec.max_positions, d], 0.5, 0.0),
    );
    push(
        "embeddings.token_type_embeddings.weight".into(),
        vec![2, d],
        rand(&[2, d], 0.5, 0.0),
    );
    push(
        "embeddings.LayerNorm.weight".into(),
        vec![d],
        rand(&[d], 0.2, 1.0),
    );
    push(
        "embeddings.LayerNorm.bias".into(),
        vec![d],
        rand(&[d], 0.1, 0.0),
    );
    for i in 0..spec.layers {
        let l = format!("encoder.layer.{i}.");
        for (name, rows, cols) in [
            ("attention.self.query", d, d),
            ("attention.self.key", d, d),
            ("attention.self.value", d, d),
            ("attention.output.dense", d, d),
            ("intermediate.dense", f, d),
            ("output.dense", d, f),
        ] {
            let scale = 1.7 / (cols as f32).sqrt();
            push(
                format!("{l}{name}.weight"),
                vec![rows, cols],
                rand(&[rows, cols], scale, 0.0),
            );
            push(
                format!("{l}{name}.bias"),
                vec![rows],
                rand(&[rows], 0.1, 0.0),
            );
        }
        for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
            push(format!("{l}{name}.weight"), vec![d], rand(&[d], 0.2, 1.0));
            push(format!("{l}{name}.bias"), vec![d], rand(&[d], 0.1, 0.0));
        }
    }
    out
}

/// Writes `tensors` as an f32 safetensors file, plus an `I64`
/// `embeddings.position_ids` (`[1, positions]`) when `positions > 0`, as in
/// real checkpoints.
pub fn write_bert_safetensors(path: &Path, tensors: &[NamedTensor], positions: usize) {
    use safetensors::{Dtype, tensor::TensorView};
    let ids: Vec<u8> = (0..positions as i64)
        .flat_map(|i| i.to_le_bytes())
        .collect();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| {
            (
                n.clone(),
                s.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let mut views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).expect("valid view"),
            )
        })
        .collect();
    if positions > 0 {
        views.push((
            "embeddings.position_ids".into(),
            TensorView::new(Dtype::I64, vec![1, positions], &ids).expect("valid view"),
        ));
    }
    safetensors::serialize_to_file(views, None, path).expect("writing model.safetensors");
}

/// Writes a tiny BERT embedding model into `dir` and returns `dir`.
pub fn write_tiny_bert(dir: &Path, spec: &TinyBertSpec) -> PathBuf {
    std::fs::create_dir_all(dir).expect("creating the model directory");
    let vocab = tiny_bert_vocab();
    write_bert_safetensors(
        &dir.join("model.safetensors"),
        &tiny_bert_tensors(spec),
        spec.max_positions,
    );
    let config = serde_json::json!({
        "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu", "hidden_size": spec.hidden,
        "intermediate_size": spec.ffn, "layer_norm_eps": 1e-12, "max_position_embeddings": spec.max_positions,
        "num_attention_heads": spec.heads, "num_hidden_layers": spec.layers, "pad_token_id": 0,
        "position_embedding_type": "absolute", "type_vocab_size": 2, "vocab_size": vocab.len()
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("writing config.json");
    let special = |t: &str| serde_json::json!({"id": t, "type_id": 0});
    let tok = serde_json::json!({
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 16}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": (0..5).map(|i| serde_json::json!({"id": i, "content": vocab[i], "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true})).collect::<Vec<_>>(),
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": special("[CLS]")}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": special("[SEP]")}],
            "pair": [{"SpecialToken": special("[CLS]")}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": special("[SEP]")},
                     {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]}, "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
                  "vocab": vocab.iter().enumerate().map(|(i, t)| (t.clone(), serde_json::Value::from(i))).collect::<serde_json::Map<_, _>>()}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).expect("writing tokenizer.json");
    dir.to_path_buf()
}
