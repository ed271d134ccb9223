//! Request bodies: the strict serde path every generation, embedding and
//! tokenizer route takes, then validation against a real engine (template
//! rendering, tokenization, limits). Client input must never panic and
//! never become a 5xx; a request that validates must respect the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade::api::ApiError;
use palisade::api::json::parse;
use palisade::api::types::{
    ChatCompletionRequest, CompletionRequest, DetokenizeRequest, EmbeddingRequest,
    TokenizeRequest,
};
use palisade::api::validate;
use palisade::config::LimitsSection;

fn client_error(e: &ApiError, what: &str) {
    let status = e.status().as_u16();
    assert!(
        (400..500).contains(&status),
        "{what}: client input gave {status}: {e:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let engine = palisade_fuzz::engine();
    let limits = LimitsSection {
        max_tokens: 64,
        ..LimitsSection::default()
    };
    let ctx = engine.max_context();
    match parse::<ChatCompletionRequest>(data) {
        Ok(r) => match validate::chat(engine, &limits, r) {
            Ok(v) => {
                assert!(v.n >= 1 && v.n <= limits.max_n, "n {}", v.n);
                assert!(v.max_tokens <= limits.max_tokens, "max_tokens {}", v.max_tokens);
                assert_eq!(v.prompts.len(), 1);
                assert!(v.prompts[0].len() + v.max_tokens <= ctx, "prompt + max_tokens over the context");
            }
            Err(e) => client_error(&e, "chat validation"),
        },
        Err(e) => client_error(&e, "chat parse"),
    }
    match parse::<CompletionRequest>(data) {
        Ok(r) => match validate::completion(engine, &limits, r) {
            Ok(v) => {
                assert!(v.n >= 1 && v.n <= limits.max_n, "n {}", v.n);
                assert!(v.max_tokens <= limits.max_tokens, "max_tokens {}", v.max_tokens);
                assert!(!v.prompts.is_empty());
                for p in &v.prompts {
                    assert!(p.len() + v.max_tokens <= ctx, "prompt + max_tokens over the context");
                }
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
});
