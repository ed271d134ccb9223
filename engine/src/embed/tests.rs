//! Tests of the BERT embedding model on tiny random models written by
//! [`crate::testing::bert`].

use super::*;
use crate::testing::bert::{
    TinyBertSpec, tiny_bert_tensors, write_bert_safetensors, write_tiny_bert,
};

fn tiny(spec: &TinyBertSpec) -> (tempfile::TempDir, EmbeddingModel) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = write_tiny_bert(&tmp.path().join("tiny-bert"), spec);
    let m = EmbeddingModel::load(&dir).expect("loading the tiny BERT");
    (tmp, m)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn shapes_names_and_unit_length() {
    let (_t, m) = tiny(&TinyBertSpec::default());
    assert_eq!((m.dim(), m.max_tokens(), m.name()), (32, 24, "tiny-bert"));
    let ids = m.tokenize("A man is eating food.").expect("tokenize");
    // [CLS] a man is eating food . [SEP]; no padding to 16.
    assert_eq!(ids, vec![2, 18, 6, 7, 8, 9, 90, 3]);
    // No truncation to 8 either.
    assert_eq!(
        m.tokenize("the girl is carrying a piece of bread .")
            .expect("tokenize")
            .len(),
        11
    );
    let texts = [
        "A man is eating food.",
        "The girl is carrying a baby.",
        "xyz",
        "42!",
    ];
    let batch: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| m.tokenize(t).expect("tokenize"))
        .collect();
    let out = m.embed(&batch).expect("embed");
    assert_eq!(out.len(), 4);
    for v in &out {
        assert_eq!(v.len(), 32);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    assert!(
        max_diff(&out[0], &out[1]) > 1e-2,
        "different texts, different vectors"
    );
    assert!(m.embed(&[]).expect("empty batch").is_empty());
}

#[test]
fn padding_does_not_change_an_embedding() {
    let (_t, m) = tiny(&TinyBertSpec::default());
    let a = m.tokenize("a man").expect("tokenize");
    let b = m
        .tokenize("the girl is carrying a baby, eating bread!")
        .expect("tokenize");
    assert!(b.len() > a.len() + 5);
    let alone = m.embed(std::slice::from_ref(&a)).expect("embed");
    let with_b = m.embed(&[a.clone(), b.clone()]).expect("embed");
    let reversed = m.embed(&[b.clone(), a.clone()]).expect("embed");
    assert!(
        max_diff(&alone[0], &with_b[0]) < 1e-5,
        "{}",
        max_diff(&alone[0], &with_b[0])
    );
    assert!(max_diff(&alone[0], &reversed[1]) < 1e-5);
    assert!(max_diff(&with_b[1], &reversed[0]) < 1e-5);
}

#[test]
fn large_batches_are_split_and_keep_their_order() {
    let (_t, m) = tiny(&TinyBertSpec::default());
    // 8192 / 24 tokens: at most 341 full-length inputs per forward pass.
    let batch: Vec<Vec<u32>> = (0..400)
        .map(|i| (0..1 + i % 24).map(|j| ((i * 7 + j) % 90) as u32).collect())
        .collect();
    let all = m.embed(&batch).expect("embed");
    for i in [0, 23, 200, 399] {
        let one = m.embed(&batch[i..=i]).expect("embed");
        assert!(max_diff(&one[0], &all[i]) < 1e-5, "input {i}");
    }
}

#[test]
fn bert_prefixed_tensor_names_load_the_same_model() {
    let (_t, plain) = tiny(&TinyBertSpec::default());
    let (_u, prefixed) = tiny(&TinyBertSpec {
        bert_prefix: true,
        ..Default::default()
    });
    let ids = vec![plain.tokenize("a baby").expect("tokenize")];
    let (a, b) = (
        plain.embed(&ids).expect("embed"),
        prefixed.embed(&ids).expect("embed"),
    );
    assert_eq!(a, b);
}

#[test]
fn bad_inputs_name_the_input_and_the_limit() {
    let (_t, m) = tiny(&TinyBertSpec::default());
    let ok = vec![2, 6, 3];
    let cases: [(Vec<u32>, &str); 3] = [
        (vec![], "input 1 is empty"),
        (
            vec![6; 25],
            "input 1 has 25 tokens, more than the model's limit of 24",
        ),
        (
            vec![2, 5000, 3],
            "input 1 has token id 5000, outside the vocabulary of 97 tokens",
        ),
    ];
    for (bad, want) in cases {
        let err = m.embed(&[ok.clone(), bad]).expect_err("must fail");
        assert!(
            matches!(err, EngineError::InvalidParameter { field: "input", .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains(want), "{err}");
    }
    assert_eq!(
        m.embed(&[vec![6; 24]]).expect("exactly the limit")[0].len(),
        32
    );
}

/// Loads a tiny model after `edit` changed its directory.
fn load_edited(edit: impl FnOnce(&Path)) -> EngineError {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = write_tiny_bert(&tmp.path().join("m"), &TinyBertSpec::default());
    edit(&dir);
    EmbeddingModel::load(&dir).expect_err("must fail")
}

fn rewrite_tensors(dir: &Path, edit: impl FnOnce(&mut Vec<crate::testing::bert::NamedTensor>)) {
    let mut t = tiny_bert_tensors(&TinyBertSpec::default());
    edit(&mut t);
    write_bert_safetensors(&dir.join("model.safetensors"), &t, 24);
}

#[test]
fn broken_models_give_errors_naming_file_and_tensor() {
    let e = load_edited(|d| {
        rewrite_tensors(d, |t| {
            t.retain(|(n, _, _)| n != "encoder.layer.1.output.dense.bias")
        })
    });
    assert!(
        matches!(&e, EngineError::MissingTensor { path, tensor } if path.ends_with("model.safetensors") && tensor == "encoder.layer.1.output.dense.bias"),
        "{e:?}"
    );
    let e = load_edited(|d| {
        rewrite_tensors(d, |t| {
            let q = t
                .iter_mut()
                .find(|(n, _, _)| n == "encoder.layer.0.attention.self.query.weight")
                .expect("query");
            q.1 = vec![16, 64];
        })
    });
    assert!(
        matches!(&e, EngineError::TensorShape { tensor, expected, actual, .. }
        if tensor == "encoder.layer.0.attention.self.query.weight" && expected == &[32, 32] && actual == &[16, 64]),
        "{e:?}"
    );
    let e = load_edited(|d| {
        let p = d.join("model.safetensors");
        let bytes = std::fs::read(&p).expect("read");
        std::fs::write(&p, &bytes[..bytes.len() / 2]).expect("truncate");
    });
    assert!(
        matches!(&e, EngineError::Format { path, .. } if path.ends_with("model.safetensors")),
        "{e:?}"
    );
    let e = load_edited(|d| {
        std::fs::remove_file(d.join("model.safetensors")).expect("rm");
        std::fs::write(d.join("pytorch_model.bin"), b"pickle").expect("write");
    });
    assert!(matches!(e, EngineError::UnsupportedFormat { .. }), "{e:?}");
}

#[test]
fn broken_config_or_tokenizer_give_errors_naming_the_file() {
    let e = load_edited(|d| std::fs::remove_file(d.join("config.json")).expect("rm"));
    assert!(
        matches!(&e, EngineError::Io { path, .. } if path.ends_with("config.json")),
        "{e:?}"
    );
    let e = load_edited(|d| {
        std::fs::write(d.join("config.json"), r#"{"hidden_size": 32}"#).expect("write")
    });
    assert!(
        matches!(&e, EngineError::Format { .. }) && e.to_string().contains("vocab_size"),
        "{e}"
    );
    let e = load_edited(|d| {
        let p = d.join("config.json");
        let s = std::fs::read_to_string(&p)
            .expect("read")
            .replace(r#""hidden_act":"gelu""#, r#""hidden_act":"relu""#);
        std::fs::write(&p, s).expect("write");
    });
    assert!(
        matches!(&e, EngineError::Config { key, .. } if key == "hidden_act"),
        "{e:?}"
    );
    let e = load_edited(|d| {
        let p = d.join("config.json");
        let s = std::fs::read_to_string(&p)
            .expect("read")
            .replace(r#""num_attention_heads":4"#, r#""num_attention_heads":5"#);
        std::fs::write(&p, s).expect("write");
    });
    assert!(
        matches!(&e, EngineError::Config { key, .. } if key == "num_attention_heads"),
        "{e:?}"
    );
    let e = load_edited(|d| std::fs::remove_file(d.join("tokenizer.json")).expect("rm"));
    assert!(
        matches!(&e, EngineError::Io { path, .. } if path.ends_with("tokenizer.json")),
        "{e:?}"
    );
    let e = load_edited(|d| std::fs::write(d.join("tokenizer.json"), "{").expect("write"));
    assert!(
        matches!(&e, EngineError::Tokenizer(m) if m.contains("tokenizer.json")),
        "{e:?}"
    );
}
