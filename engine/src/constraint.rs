//! Constrained decoding: a grammar (JSON schema, any JSON object, or a Lark
//! grammar) that masks each step's logits so that only tokens continuing a
//! valid output can be sampled, advanced with every sampled token. The
//! model's end-of-generation tokens are allowed only once the grammar is
//! complete.
//!
//! Built on `llguidance`: the token trie is made from this engine's own
//! tokenizer (the per-token byte table), once per engine.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use crate::error::{EngineError, Result};
use crate::tokenizer::Tokenizer;

/// What the generated text must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// JSON matching this JSON schema.
    JsonSchema(serde_json::Value),
    /// Any JSON object.
    JsonObject,
    /// A Lark grammar (llguidance's dialect; may embed `%json {...}`).
    Lark(String),
}

impl Constraint {
    fn grammar(&self) -> TopLevelGrammar {
        match self {
            Constraint::JsonSchema(schema) => TopLevelGrammar::from_json_schema(compact(schema)),
            Constraint::JsonObject => {
                TopLevelGrammar::from_json_schema(compact(&serde_json::json!({"type": "object"})))
            }
            Constraint::Lark(src) => TopLevelGrammar::from_lark(src.clone()),
        }
    }
}

/// Without an explicit choice, JSON is generated without optional
/// whitespace: a model cannot then pad the output until `max_tokens`.
fn compact(schema: &serde_json::Value) -> serde_json::Value {
    let mut s = schema.clone();
    if let Some(obj) = s.as_object_mut()
        && !obj.contains_key("x-guidance")
    {
        obj.insert(
            "x-guidance".into(),
            serde_json::json!({"whitespace_flexible": false}),
        );
    }
    s
}

/// The tokenizer as llguidance sees it: the trie of token bytes (special
/// tokens behind the 0xFF marker, so no grammar text can produce them) and
/// plain-text tokenization for forced text.
struct TokEnvImpl {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for TokEnvImpl {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        let text = String::from_utf8_lossy(s);
        self.tokenizer
            .encode(&text, false, false)
            .unwrap_or_else(|_| self.trie.greedy_tokenize(s))
    }
}

/// Builds the parser factory for `tok` over a vocabulary of `vocab` logits
/// (the model's embedding may have more rows than the tokenizer has tokens).
pub(crate) fn parser_factory(tok: &Tokenizer, vocab: usize) -> Result<ParserFactory> {
    let eos = tok
        .eos
        .or_else(|| tok.stop_ids.first().copied())
        .ok_or_else(|| {
            EngineError::Tokenizer("no end-of-sequence token to end a grammar".into())
        })?;
    let words: Vec<Vec<u8>> = (0..vocab as u32)
        .map(|id| {
            if id as usize >= tok.vocab_size() {
                Vec::new()
            } else if tok.is_special(id) {
                let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                w.extend_from_slice(tok.token_bytes(id));
                w
            } else {
                tok.token_bytes(id).to_vec()
            }
        })
        .collect();
    let mut info = TokRxInfo::new(vocab as u32, eos);
    info.tok_bos = tok.bos;
    let env: TokEnv = Arc::new(TokEnvImpl {
        trie: TokTrie::from(&info, &words),
        tokenizer: tok.clone(),
    });
    let mut factory = ParserFactory::new_simple(&env)
        .map_err(|e| EngineError::Tokenizer(format!("grammar token table: {e}")))?;
    factory.quiet();
    Ok(factory)
}

/// One sequence's grammar state.
pub(crate) struct TokenConstraint {
    matcher: Matcher,
    eos: u32,
}

impl std::fmt::Debug for TokenConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConstraint").finish_non_exhaustive()
    }
}

impl TokenConstraint {
    /// Compiles `c`; a schema or grammar that cannot be compiled is an
    /// [`EngineError::InvalidConstraint`].
    pub(crate) fn new(factory: &ParserFactory, c: &Constraint) -> Result<Self> {
        let parser = factory
            .create_parser(c.grammar())
            .map_err(|e| EngineError::InvalidConstraint(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(EngineError::InvalidConstraint(e));
        }
        Ok(TokenConstraint {
            matcher,
            eos: factory.tok_env().tok_trie().eos_token(),
        })
    }

    /// Sets the logits of tokens the grammar does not allow to -inf. The
    /// `stop_ids` are allowed exactly when the grammar may end here. When
    /// the grammar is in error (it cannot continue), only the stop tokens
    /// remain.
    pub(crate) fn mask(&mut self, logits: &mut [f32], stop_ids: &[u32]) {
        let (mask, may_end) = match self.matcher.compute_mask_or_eos() {
            Ok(m) => {
                let end = m.is_allowed(self.eos);
                (Some(m), end)
            }
            Err(_) => (None, true),
        };
        let saved: Vec<(usize, f32)> = stop_ids
            .iter()
            .filter_map(|&s| logits.get(s as usize).map(|&l| (s as usize, l)))
            .collect();
        for (i, l) in logits.iter_mut().enumerate() {
            if !mask.as_ref().is_some_and(|m| m.is_allowed(i as u32)) {
                *l = f32::NEG_INFINITY;
            }
        }
        for (i, l) in saved {
            logits[i] = if may_end { l } else { f32::NEG_INFINITY };
        }
    }

    /// Advances over a sampled token. Returns whether the grammar is done
    /// (no further token can follow) or can no longer continue.
    pub(crate) fn advance(&mut self, token: u32) -> bool {
        self.matcher.consume_token(token).is_err() || self.matcher.is_stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_engine;
    use crate::{Engine, FinishReason, GenerateRequest, SamplingParams};
    use palisade_kernels::quant::WeightType;
    use serde_json::{Value, json};

    fn engine(dir: &std::path::Path) -> Engine {
        tiny_engine(dir, WeightType::Q8_0)
    }

    fn run(e: &Engine, c: Constraint, temperature: f32, seed: u64) -> (String, FinishReason) {
        let req = GenerateRequest {
            prompt: vec![1, 70, 80, 90, 100, 3, 50],
            max_tokens: 240, // the tiny model has 256 positions
            sampling: SamplingParams {
                temperature,
                seed: Some(seed),
                ..Default::default()
            },
            constraint: Some(c),
            ..Default::default()
        };
        let (mut text, mut fin) = (String::new(), None);
        for step in e.generate(req).unwrap() {
            let step = step.unwrap();
            text.push_str(&step.text);
            fin = step.finish;
        }
        (text, fin.unwrap())
    }

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 6},
                "age": {"type": "integer", "minimum": 0, "maximum": 120},
                "color": {"enum": ["red", "green", "blue"]},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 3},
                "inner": {
                    "type": "object",
                    "properties": {"ok": {"type": "boolean"}},
                    "required": ["ok"],
                    "additionalProperties": false
                }
            },
            "required": ["name", "age", "color", "tags", "inner"],
            "additionalProperties": false
        })
    }

    /// Checks `v` against [`schema`] by hand.
    fn check(v: &Value) -> std::result::Result<(), String> {
        let o = v.as_object().ok_or("not an object")?;
        let keys: Vec<&str> = o.keys().map(String::as_str).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        if sorted != ["age", "color", "inner", "name", "tags"] {
            return Err(format!("keys {keys:?}"));
        }
        let name = o["name"].as_str().ok_or("name")?;
        if name.chars().count() > 6 {
            return Err(format!("name {name:?}"));
        }
        let age = o["age"].as_i64().ok_or("age")?;
        if !(0..=120).contains(&age) {
            return Err(format!("age {age}"));
        }
        if !["red", "green", "blue"].contains(&o["color"].as_str().ok_or("color")?) {
            return Err("color".into());
        }
        let tags = o["tags"].as_array().ok_or("tags")?;
        if tags.len() > 3
            || tags
                .iter()
                .any(|t| t.as_str().is_none_or(|s| s.chars().count() > 3))
        {
            return Err(format!("tags {tags:?}"));
        }
        let inner = o["inner"].as_object().ok_or("inner")?;
        if inner.len() != 1 || !inner["ok"].is_boolean() {
            return Err(format!("inner {inner:?}"));
        }
        Ok(())
    }

    #[test]
    fn random_weights_follow_a_json_schema_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        for (temperature, seed) in [(0.0, 0), (0.7, 1), (1.0, 2), (1.0, 3), (1.5, 4), (2.0, 5)] {
            let (text, fin) = run(&e, Constraint::JsonSchema(schema()), temperature, seed);
            assert_eq!(fin, FinishReason::Stop, "{text}");
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("t={temperature} seed={seed}: {err}: {text}"));
            if let Err(m) = check(&v) {
                panic!("t={temperature} seed={seed}: {m}: {text}");
            }
        }
    }

    #[test]
    fn json_object_and_lark_constraints_hold() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        for seed in 0..3 {
            let (text, fin) = run(&e, Constraint::JsonObject, 1.0, seed);
            if fin == FinishReason::Stop {
                let v: Value =
                    serde_json::from_str(&text).unwrap_or_else(|m| panic!("{m}: {text}"));
                assert!(v.is_object(), "{text}");
            } else {
                // Unbounded content may run to max_tokens; it still starts an object.
                assert!(text.starts_with('{'), "{text}");
            }
            let lark = r#"start: "answer: " ("yes" | "no")"#.to_string();
            let (text, fin) = run(&e, Constraint::Lark(lark), 1.0, seed);
            assert_eq!(fin, FinishReason::Stop);
            assert!(text == "answer: yes" || text == "answer: no", "{text:?}");
        }
    }

    #[test]
    fn a_bad_schema_is_an_invalid_constraint() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        let bad = Constraint::JsonSchema(json!({"type": "no-such-type"}));
        let req = GenerateRequest {
            prompt: vec![1, 70],
            max_tokens: 4,
            constraint: Some(bad),
            ..Default::default()
        };
        let err = e.generate(req).unwrap_err();
        assert!(matches!(err, EngineError::InvalidConstraint(_)), "{err}");
        assert!(err.to_string().contains("no-such-type"), "{err}");
    }
}
