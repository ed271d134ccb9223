//! The tokenizer input path: arbitrary UTF-8 through the model's
//! byte-level BPE (plain and with special tokens parsed), decoded back
//! whole and token by token. Byte-level BPE is lossless: plain encoding
//! must decode to the same text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_engine::tokenizer::TextStream;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let tok = palisade_fuzz::engine().tokenizer();
    let ids = tok.encode(text, false, false).expect("plain encoding never fails");
    assert_eq!(tok.decode(&ids, false), text, "plain encode/decode round trip");
    let mut stream = TextStream::default();
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(&stream.push(tok, id));
    }
    streamed.push_str(&stream.finish());
    assert_eq!(streamed, text, "streamed decode differs");
    let special = tok.encode(text, true, true).expect("encoding with specials never fails");
    let vocab = tok.vocab_size() as u32;
    assert!(special.iter().all(|&i| i < vocab), "id outside the vocabulary");
});
