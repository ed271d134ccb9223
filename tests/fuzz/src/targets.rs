//! The bodies of the fuzz targets, one function per target, shared by the
//! libFuzzer targets (`fuzz_targets/`, coverage-guided, `make fuzz`) and the
//! bounded mutation run in the main test suite (`host/tests/fuzz_smoke.rs`,
//! which includes this file by path). Each function panics only on a
//! finding: a parser that panics, a client error that became a 5xx, or a
//! result that breaks its invariant.
//!
//! ```no_run
//! palisade_fuzz::targets::tokenizer(b"Hello, world!");
//! ```
// Included by path from the host's test crate too, where some items of the
// libFuzzer side (`engine` docs) read differently.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use palisade::api::ApiError;
use palisade::api::json::parse;
use palisade::api::types::{
    ChatCompletionRequest, CompletionRequest, DetokenizeRequest, EmbeddingRequest, TokenizeRequest,
};
use palisade::api::validate::{self, ValidGeneration};
use palisade::config::LimitsSection;
use palisade::plugins::policy::{DEFAULT_PUBLIC, Policy};
use palisade::server::ROUTES;
use palisade_engine::config::ModelConfig;
use palisade_engine::gguf::GgufFile;
use palisade_engine::hf::read_shard;
use palisade_engine::tensor::{MappedFile, TensorSource};
use palisade_engine::testing::{TinySpec, TinyType, write_gguf};
use palisade_engine::tokenizer::TextStream;
use palisade_engine::{Engine, EngineOptions, Tokenizer};
use palisade_kernels::quant::WeightType;

/// The targets by name, as `make fuzz` and the smoke run call them.
pub const TARGETS: [(&str, fn(&[u8])); 5] = [
    ("request_json", request_json),
    ("policy_toml", policy_toml),
    ("gguf_header", gguf_header),
    ("safetensors_header", safetensors_header),
    ("tokenizer", tokenizer),
];

/// The shared engine (loaded on first use; a load failure aborts the run,
/// which is a set-up error, not a finding).
///
/// The default model (SmolLM2, its ChatML template and BPE vocabulary) when
/// it is cached, as in CI after `make model`; otherwise a tiny generated
/// model with the same kind of tokenizer and template.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let model = model_path();
        Engine::load(&EngineOptions {
            model: model.clone(),
            threads: 1,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("loading {}: {e}", model.display()))
    })
}

fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PALISADE_FUZZ_MODEL") {
        return PathBuf::from(p);
    }
    let default = palisade::default_model_path();
    if default.exists() {
        return default;
    }
    let dir = std::env::temp_dir().join(format!("palisade-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    write_gguf(
        &dir,
        &TinySpec::default(),
        TinyType::Native(WeightType::Q8_0),
    )
}

fn client_error(e: &ApiError, what: &str) {
    let status = e.status().as_u16();
    assert!(
        (400..500).contains(&status),
        "{what}: client input gave {status}: {e:?}"
    );
}

/// A validated generation respects `limits`: `n`, `max_tokens`, and every
/// prompt plus `max_tokens` within the context `ctx`.
fn within_limits(v: &ValidGeneration, limits: &LimitsSection, ctx: usize) {
    assert!(v.n >= 1 && v.n <= limits.max_n, "n {}", v.n);
    assert!(
        v.max_tokens <= limits.max_tokens,
        "max_tokens {}",
        v.max_tokens
    );
    for p in &v.prompts {
        assert!(
            p.len() + v.max_tokens <= ctx,
            "prompt + max_tokens over the context"
        );
    }
}

/// Request bodies: the strict serde path every generation, embedding and
/// tokenizer route takes, then validation against a real engine (template
/// rendering, tokenization, limits). Client input must never panic and
/// never become a 5xx; a request that validates must respect the limits.
pub fn request_json(data: &[u8]) {
    let engine = engine();
    let limits = LimitsSection {
        max_tokens: 64,
        ..LimitsSection::default()
    };
    let ctx = engine.max_context();
    match parse::<ChatCompletionRequest>(data) {
        Ok(r) => match validate::chat(engine, &limits, r) {
            Ok(v) => {
                assert_eq!(v.prompts.len(), 1);
                within_limits(&v, &limits, ctx);
            }
            Err(e) => client_error(&e, "chat validation"),
        },
        Err(e) => client_error(&e, "chat parse"),
    }
    match parse::<CompletionRequest>(data) {
        Ok(r) => match validate::completion(engine, &limits, r) {
            Ok(v) => {
                assert!(!v.prompts.is_empty());
                within_limits(&v, &limits, ctx);
            }
            Err(e) => client_error(&e, "completion validation"),
        },
        Err(e) => client_error(&e, "completion parse"),
    }
    if let Err(e) = parse::<EmbeddingRequest>(data) {
        client_error(&e, "embedding parse");
    }
    if let Err(e) = parse::<TokenizeRequest>(data) {
        client_error(&e, "tokenize parse");
    }
    if let Err(e) = parse::<DetokenizeRequest>(data) {
        client_error(&e, "detokenize parse");
    }
}

/// Policy files: TOML into the typed, `deny_unknown_fields` policy, then
/// the checks (references, kinds, limits, route coverage). Any text must
/// give a policy or an error, never a panic; a policy that loads covers
/// every route the server registers.
pub fn policy_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let routes: Vec<&str> = ROUTES.iter().map(|r| r.1).collect();
    if let Ok(p) = Policy::parse(text, Path::new("/fuzz/policy.toml"), &routes) {
        for r in &routes {
            let rule = p.rule_for(r);
            assert!(
                rule.is_some() || DEFAULT_PUBLIC.contains(r),
                "a loaded policy leaves {r} uncovered"
            );
            if let Some(rule) = rule {
                assert!(
                    rule.public || rule.auth.is_some(),
                    "{r}: neither public nor authenticated"
                );
            }
        }
    }
}

/// GGUF files from bytes: header, metadata, tensor table (every tensor's
/// range checked against the file), then the model configuration and the
/// tokenizer built from the metadata, as `Engine::load` does.
pub fn gguf_header(data: &[u8]) {
    let path = Path::new("fuzz.gguf");
    let Ok(g) = GgufFile::parse(MappedFile::from_bytes(path, data.to_vec())) else {
        return;
    };
    for name in g.tensor_names() {
        assert!(g.tensor(name).is_some(), "listed tensor {name} is missing");
    }
    let _ = ModelConfig::from_gguf(&g, path);
    if let Ok(t) = Tokenizer::from_gguf(&g) {
        let ids = t.encode("Hello, world! <|im_start|>", true, true);
        if let Ok(ids) = ids {
            let _ = t.decode(&ids, false);
        }
    }
}

/// safetensors files from bytes: the JSON header and every tensor's dtype,
/// shape and byte range checked against the file, as a model directory's
/// shards are read.
pub fn safetensors_header(data: &[u8]) {
    let Ok(tensors) = read_shard(MappedFile::from_bytes(
        Path::new("fuzz.safetensors"),
        data.to_vec(),
    )) else {
        return;
    };
    for (name, t) in tensors {
        assert_eq!(name, t.name);
        let bytes = t.bytes();
        assert!(
            bytes.len() <= data.len(),
            "{name}: view larger than the file"
        );
    }
}

/// The bytes the vocabulary has a token of their own for. Byte-level BPE
/// is lossless only over these: a vocabulary without a byte's token (SmolLM2
/// has none for some control characters) drops that byte, as llama.cpp's
/// tokenizer does.
pub fn representable_bytes() -> &'static [bool; 256] {
    static SET: OnceLock<[bool; 256]> = OnceLock::new();
    SET.get_or_init(|| {
        let tok = engine().tokenizer();
        let mut set = [false; 256];
        for id in 0..tok.vocab_size() as u32 {
            if let [b] = tok.token_bytes(id) {
                if !tok.is_special(id) {
                    set[*b as usize] = true;
                }
            }
        }
        set
    })
}

/// The tokenizer input path: arbitrary UTF-8 through the model's
/// byte-level BPE (plain and with special tokens parsed), decoded back
/// whole and token by token. Plain encoding decodes to the same text, less
/// the bytes the vocabulary cannot represent ([`representable_bytes`]);
/// the streamed decode equals the whole one.
pub fn tokenizer(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let tok = engine().tokenizer();
    let ids = tok
        .encode(text, false, false)
        .expect("plain encoding never fails");
    let set = representable_bytes();
    let kept: Vec<u8> = text.bytes().filter(|&b| set[b as usize]).collect();
    let expected = String::from_utf8_lossy(&kept);
    let whole = tok.decode(&ids, false);
    assert_eq!(whole, expected, "plain encode/decode round trip");
    let mut stream = TextStream::default();
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(&stream.push(tok, id));
    }
    streamed.push_str(&stream.finish());
    assert_eq!(streamed, whole, "streamed decode differs");
    let special = tok
        .encode(text, true, true)
        .expect("encoding with specials never fails");
    let vocab = tok.vocab_size() as u32;
    assert!(
        special.iter().all(|&i| i < vocab),
        "id outside the vocabulary"
    );
}
