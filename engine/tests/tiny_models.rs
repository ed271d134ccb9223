//! Loader, forward-pass and generation tests on tiny random models that the
//! tests write themselves (GGUF in several types, and a sharded Hugging Face
//! directory with the same weights).

use palisade_engine::model::{KvCache, Model, Workspace};
use palisade_engine::testing::{TinySpec, TinyType, tiny_engine, write_gguf, write_hf};
use palisade_engine::{
    Engine, FinishReason, GenerateRequest, SamplingParams, ThreadPool, Tokenizer,
};
use palisade_kernels::quant::WeightType;

const PROMPT: &[u32] = &[1, 70, 80, 90, 100, 3, 50, 60, 200, 210, 220, 7];

fn logits_all(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let pool = ThreadPool::new(2);
    let mut ws = Workspace::default();
    let mut cache = KvCache::new(&model.config, 64);
    model
        .forward(&pool, &mut ws, &mut cache, tokens, 0, true)
        .unwrap()
        .to_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
fn gguf_and_safetensors_directory_compute_the_same_logits() {
    for tied in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let spec = TinySpec {
            tied,
            ..Default::default()
        };
        let g = Model::load(&write_gguf(
            dir.path(),
            &spec,
            TinyType::Native(WeightType::F32),
        ))
        .unwrap();
        let h = Model::load(&write_hf(&dir.path().join("hf"), &spec)).unwrap();
        let (a, b) = (logits_all(&g, PROMPT), logits_all(&h, PROMPT));
        // Same f32 weights; the GGUF has permuted Q/K rows and uses
        // adjacent-pair RoPE, the directory NeoX RoPE: identical math.
        assert!(
            max_diff(&a, &b) < 1e-3,
            "tied={tied}: max diff {}",
            max_diff(&a, &b)
        );
    }
}

#[test]
fn every_weight_type_stays_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::default();
    let reference = logits_all(
        &Model::load(&write_gguf(
            dir.path(),
            &spec,
            TinyType::Native(WeightType::F32),
        ))
        .unwrap(),
        PROMPT,
    );
    for (ty, min_cos) in [
        (TinyType::Native(WeightType::F16), 0.9999),
        (TinyType::Native(WeightType::BF16), 0.999),
        (TinyType::Native(WeightType::Q8_0), 0.999),
        (TinyType::Native(WeightType::Q4_1), 0.97),
        (TinyType::Native(WeightType::Q4_0), 0.95),
        (TinyType::Q6K, 0.995),
        (TinyType::Q4K, 0.97),
    ] {
        let d = tempfile::tempdir().unwrap();
        let m = Model::load(&write_gguf(d.path(), &spec, ty)).unwrap();
        let c = cosine(&logits_all(&m, PROMPT), &reference);
        assert!(c >= min_cos, "{ty:?}: cosine {c} < {min_cos}");
    }
}

#[test]
fn decoding_token_by_token_equals_one_prefill() {
    let dir = tempfile::tempdir().unwrap();
    let m = Model::load(&write_gguf(
        dir.path(),
        &TinySpec::default(),
        TinyType::Native(WeightType::Q4_1),
    ))
    .unwrap();
    let all = logits_all(&m, PROMPT);
    let vocab = m.config.vocab;
    let pool = ThreadPool::new(2);
    let mut ws = Workspace::default();
    let mut cache = KvCache::new(&m.config, 64);
    // First half as a prefill, the rest one token at a time.
    let split = 5;
    let first = m
        .forward(&pool, &mut ws, &mut cache, &PROMPT[..split], 0, false)
        .unwrap()
        .to_vec();
    assert!(max_diff(&first, &all[(split - 1) * vocab..split * vocab]) < 1e-4);
    for (i, &t) in PROMPT.iter().enumerate().skip(split) {
        let l = m
            .forward(&pool, &mut ws, &mut cache, &[t], i, false)
            .unwrap()
            .to_vec();
        assert!(
            max_diff(&l, &all[i * vocab..(i + 1) * vocab]) < 1e-4,
            "position {i}"
        );
    }
}

#[test]
fn tokenizer_from_gguf_equals_tokenizer_json_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let gpath = write_gguf(
        dir.path(),
        &TinySpec::default(),
        TinyType::Native(WeightType::F32),
    );
    let hdir = write_hf(&dir.path().join("hf"), &TinySpec::default());
    let g = Tokenizer::from_gguf(&palisade_engine::gguf::GgufFile::open(&gpath).unwrap()).unwrap();
    let h = Tokenizer::from_file(&hdir.join("tokenizer.json")).unwrap();
    for text in [
        "the theory in the thin air",
        "  spaces\tand\nnewlines  ",
        "digits 12345 and 3.14",
        "émoji 🦀 中文 русский",
        "<|im_start|>user\nhi<|im_end|>",
        "",
    ] {
        for special in [false, true] {
            let a = g.encode(text, false, special).unwrap();
            let b = h.encode(text, false, special).unwrap();
            assert_eq!(a, b, "{text:?} special={special}");
            assert_eq!(g.decode(&a, false), text);
        }
    }
    // The tokenizer.json asks for padding to 128; it must be ignored.
    assert_eq!(h.encode("hi", false, false).unwrap().len(), 2);
    // Special strings are single tokens only when asked for.
    assert_eq!(g.encode("<|im_end|>", false, true).unwrap(), vec![2]);
    assert!(g.encode("<|im_end|>", false, false).unwrap().len() > 1);
}

fn engine(dir: &std::path::Path) -> Engine {
    tiny_engine(dir, WeightType::Q8_0)
}

fn run(e: &Engine, req: GenerateRequest) -> (Vec<u32>, String, Option<FinishReason>) {
    let mut toks = Vec::new();
    let mut text = String::new();
    let mut fin = None;
    for step in e.generate(req).unwrap() {
        let s = step.unwrap();
        toks.push(s.sampled.token);
        text.push_str(&s.text);
        fin = s.finish;
    }
    (toks, text, fin)
}

#[test]
fn generation_greedy_seeded_length_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let base = GenerateRequest {
        prompt: PROMPT.to_vec(),
        max_tokens: 12,
        ignore_eos: true,
        ..Default::default()
    };
    let (a, text, fin) = run(&e, base.clone());
    assert_eq!(a.len(), 12);
    assert_eq!(fin, Some(FinishReason::Length));
    assert_eq!(run(&e, base.clone()).0, a, "greedy is deterministic");
    let sampled = |seed| GenerateRequest {
        sampling: SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..Default::default()
        },
        ..base.clone()
    };
    assert_eq!(run(&e, sampled(7)).0, run(&e, sampled(7)).0);
    assert_ne!(run(&e, sampled(7)).0, run(&e, sampled(8)).0);
    // A stop string taken from the middle of the greedy text cuts there.
    let chars: Vec<char> = text.chars().collect();
    if chars.len() >= 6 {
        let stop: String = chars[3..5].iter().collect();
        let (_, t2, f2) = run(
            &e,
            GenerateRequest {
                stop: vec![stop.clone()],
                ..base.clone()
            },
        );
        assert_eq!(f2, Some(FinishReason::Stop));
        assert_eq!(t2, text[..text.find(&stop).unwrap()]);
    }
    // A stop token ends generation and is not part of the text.
    let (t3, _, f3) = run(
        &e,
        GenerateRequest {
            stop_token_ids: vec![a[2]],
            ..base.clone()
        },
    );
    assert_eq!(f3, Some(FinishReason::Stop));
    assert_eq!(t3.last(), Some(&a[2]));
}

#[test]
fn logprobs_are_reported_and_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let req = GenerateRequest {
        prompt: PROMPT.to_vec(),
        max_tokens: 4,
        ignore_eos: true,
        sampling: SamplingParams {
            logprobs: Some(5),
            ..Default::default()
        },
        ..Default::default()
    };
    for step in e.generate(req).unwrap() {
        let s = step.unwrap().sampled;
        assert_eq!(s.top.len(), 5);
        assert_eq!(s.top[0].0, s.token, "greedy picks the top alternative");
        assert!((s.top[0].1 - s.logprob.unwrap()).abs() < 1e-6);
        let total: f32 = s.top.iter().map(|(_, lp)| lp.exp()).sum();
        assert!(total <= 1.0 + 1e-4);
    }
}

#[test]
fn context_overflow_and_bad_tokens_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let err = e
        .generate(GenerateRequest {
            prompt: vec![5; 200],
            max_tokens: 100,
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("context length 256"), "{err}");
    // Out-of-vocabulary ids are refused before anything runs.
    let err = e
        .generate(GenerateRequest {
            prompt: vec![5, 99_999],
            max_tokens: 3,
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("99999"), "{err}");
}

#[test]
fn chat_prompt_renders_and_tokenizes_specials() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let (text, ids) = e
        .chat_prompt(
            &[serde_json::json!({"role": "user", "content": "hi"})],
            None,
        )
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(ids[0], 1);
}

mod load_errors {
    use super::*;
    use palisade_engine::gguf::{GgufFile, GgufWriter, Value};

    fn err(path: &std::path::Path) -> String {
        Model::load(path).unwrap_err().to_string()
    }

    #[test]
    fn truncated_file_names_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_gguf(
            dir.path(),
            &TinySpec::default(),
            TinyType::Native(WeightType::Q8_0),
        );
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
        let e = err(&p);
        assert!(
            e.contains("tiny.gguf") && e.contains("output_norm.weight") && e.contains("truncated"),
            "{e}"
        );
    }

    #[test]
    fn missing_and_misshapen_tensors_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_gguf(
            dir.path(),
            &TinySpec::default(),
            TinyType::Native(WeightType::F32),
        );
        let g = GgufFile::open(&p).unwrap();
        let rebuild = |skip: &str, reshape: Option<&str>| {
            let mut w = GgufWriter::default();
            for (k, v) in &g.metadata {
                w.meta(k, v.clone());
            }
            use palisade_engine::tensor::TensorSource;
            for name in g.tensor_names() {
                let t = g.tensor(name).unwrap();
                if name == skip {
                    continue;
                }
                let mut shape = t.shape.clone();
                if Some(name.as_str()) == reshape {
                    shape.swap(0, 1);
                }
                w.tensor(name, &shape, 0, t.bytes().to_vec());
            }
            let out = dir.path().join("broken.gguf");
            std::fs::write(&out, w.to_bytes()).unwrap();
            out
        };
        let e = err(&rebuild("blk.1.ffn_up.weight", None));
        assert!(e.contains("missing tensor `blk.1.ffn_up.weight`"), "{e}");
        let e = err(&rebuild("", Some("blk.0.ffn_down.weight")));
        assert!(
            e.contains("blk.0.ffn_down.weight") && e.contains("expected [256, 512]"),
            "{e}"
        );
        let _ = Value::Bool(true);
    }

    #[test]
    fn wrong_magic_and_pickles_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gguf");
        std::fs::write(&p, b"PK\x03\x04 not a gguf at all, a zip").unwrap();
        assert!(err(&p).contains("not a GGUF file"));
        let p = dir.path().join("model.pth");
        std::fs::write(&p, b"pickle").unwrap();
        assert!(err(&p).contains("pickle"));
        let d = dir.path().join("hfdir");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("config.json"), r#"{"model_type":"llama","hidden_size":8,"intermediate_size":8,"num_hidden_layers":1,"num_attention_heads":2,"vocab_size":8}"#).unwrap();
        std::fs::write(d.join("pytorch_model.bin"), b"pickle").unwrap();
        let e = err(&d);
        assert!(
            e.contains("pytorch_model.bin") && e.contains("arbitrary code"),
            "{e}"
        );
        // Only pickles, no config.json: still refused for the pickles.
        let d = dir.path().join("pickles-only");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("model.ckpt"), b"pickle").unwrap();
        std::fs::write(d.join("weights.pt"), b"pickle").unwrap();
        let e = err(&d);
        assert!(
            e.contains("model.ckpt") && e.contains("weights.pt") && e.contains("pickle"),
            "{e}"
        );
    }

    #[test]
    fn unsupported_architecture_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = GgufWriter::default();
        w.meta("general.architecture", Value::String("mamba".into()));
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, w.to_bytes()).unwrap();
        assert!(err(&p).contains("unsupported architecture `mamba`"));
    }
}
