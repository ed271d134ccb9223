//! The real embedding model (all-MiniLM-L6-v2) against reference vectors
//! computed once by an independent numpy implementation
//! (`scripts/make_embedding_fixtures.py`, committed as
//! `tests/fixtures/embeddings.json`).
//!
//! Needs the model directory: `PALISADE_EMBED_MODEL` or the cached default
//! (`~/.cache/palisade/all-minilm-l6-v2`, fetched by
//! `scripts/fetch-embedding-model.sh`). Without it the tests fail under CI
//! and are skipped with a message otherwise.

use std::path::PathBuf;

use palisade_engine::EmbeddingModel;
use serde_json::Value;

fn model_dir() -> Option<PathBuf> {
    let p = std::env::var_os("PALISADE_EMBED_MODEL")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("PALISADE_CACHE_DIR")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/palisade"))
                })?;
            Some(cache.join("all-minilm-l6-v2"))
        })?;
    if p.join("model.safetensors").exists() {
        return Some(p);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the embedding model is missing at {}: run scripts/fetch-embedding-model.sh",
        p.display()
    );
    eprintln!(
        "skipping: the embedding model is not at {} (run scripts/fetch-embedding-model.sh)",
        p.display()
    );
    None
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

fn embed_texts(m: &EmbeddingModel, texts: &[&str]) -> Vec<Vec<f32>> {
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| m.tokenize(t).unwrap()).collect();
    m.embed(&ids).unwrap()
}

#[test]
fn similar_sentences_are_closer() {
    let Some(dir) = model_dir() else { return };
    let m = EmbeddingModel::load(&dir).unwrap();
    assert_eq!(m.dim(), 384);
    assert_eq!(m.max_tokens(), 512);
    let v = embed_texts(
        &m,
        &[
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The girl is carrying a baby.",
        ],
    );
    let (close, far) = (cosine(&v[0], &v[1]), cosine(&v[0], &v[2]));
    assert!(
        close > far + 0.5,
        "cosine to the similar sentence {close}, to the different one {far}"
    );
}

#[test]
fn vectors_equal_the_numpy_reference() {
    let Some(dir) = model_dir() else { return };
    let m = EmbeddingModel::load(&dir).unwrap();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/embeddings.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 3);
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    // All in one batch: different lengths, so padding is exercised too.
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| m.tokenize(t).unwrap()).collect();
    let got = m.embed(&ids).unwrap();
    let mut worst = 0f32;
    for (i, case) in cases.iter().enumerate() {
        let want_ids: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids[i], want_ids, "token ids of {:?}", texts[i]);
        let want: Vec<f32> = case["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got[i].len(), want.len());
        let diff = got[i]
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-4, "{:?}: max abs difference {diff}", texts[i]);
        worst = worst.max(diff);
    }
    eprintln!("max abs difference from the numpy reference: {worst:.3e}");
}

#[test]
fn long_inputs_are_refused_not_truncated() {
    let Some(dir) = model_dir() else { return };
    let m = EmbeddingModel::load(&dir).unwrap();
    let ids = m.tokenize(&"word ".repeat(600)).unwrap();
    assert_eq!(
        ids.len(),
        602,
        "no truncation to 128 (the shipped tokenizer.json truncates)"
    );
    let err = m.embed(&[vec![101, 102], ids]).unwrap_err();
    assert!(
        err.to_string()
            .contains("input 1 has 602 tokens, more than the model's limit of 512"),
        "{err}"
    );
    let short = m.tokenize("hi").unwrap();
    assert_eq!(short.len(), 3, "no padding to 128");
}
