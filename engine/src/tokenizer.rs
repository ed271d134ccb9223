//! Tokenizers: from a `tokenizer.json`, or built from a GGUF file's
//! vocabulary, merges and pre-tokenizer type so that token ids equal
//! llama.cpp's.
//!
//! Detokenization goes through a per-token byte table, so streamed text is
//! produced incrementally (a multi-byte character split over two tokens is
//! held until complete) and decoding round-trips exactly.

use std::collections::HashSet;
use std::path::Path;

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{EngineError, Result};
use crate::gguf::{GgufFile, Value};

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token texts that end a turn when they are control tokens (as llama.cpp
/// treats them).
const END_OF_GENERATION: &[&str] = &[
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "</s>",
    "<end_of_turn>",
    "<|eom_id|>",
];

/// A tokenizer with its special tokens and per-token bytes.
#[derive(Clone)]
pub struct Tokenizer {
    /// Splits special-token strings out of the text.
    with_special: tokenizers::Tokenizer,
    /// Treats special-token strings as plain text.
    plain: tokenizers::Tokenizer,
    bytes: Vec<Vec<u8>>,
    special: HashSet<u32>,
    /// Beginning-of-sequence token.
    pub bos: Option<u32>,
    /// End-of-sequence token.
    pub eos: Option<u32>,
    /// Whether prompts start with `bos`.
    pub add_bos: bool,
    /// Tokens that end generation by default.
    pub stop_ids: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.bytes.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

/// GPT-2's byte-to-character map (`bytes_to_unicode`): the character that
/// stands for each byte in a byte-level BPE vocabulary.
pub fn byte_chars() -> [char; 256] {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..=255u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = ['\0'; 256];
    for (b, c) in bs.into_iter().zip(cs) {
        out[b as usize] = char::from_u32(c).expect("valid char");
    }
    out
}

/// GPT-2's byte-to-character map, inverted.
fn byte_decoder() -> std::collections::HashMap<char, u8> {
    byte_chars()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect()
}

impl Tokenizer {
    /// Builds the tokenizer from GGUF metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let model = g.get_str("tokenizer.ggml.model").map_err(tok_err)?;
        if model != "gpt2" {
            return Err(EngineError::Tokenizer(format!(
                "GGUF tokenizer model `{model}` is not built from metadata (only byte-level BPE, `gpt2`, is); pass --tokenizer with the model's tokenizer.json"
            )));
        }
        let tokens = g.get_str_array("tokenizer.ggml.tokens").map_err(tok_err)?;
        let merges: Vec<(String, String)> = g
            .get_str_array("tokenizer.ggml.merges")
            .map_err(tok_err)?
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| tok_err(format!("malformed merge `{m}`")))
            })
            .collect::<Result<_>>()?;
        let types: Vec<u64> = match g.get("tokenizer.ggml.token_type") {
            Some(Value::Array(v)) => v.iter().map(|x| x.as_u64().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tok_err)?;
        let pre = g
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let byte_level = ByteLevel::new(false, true, false);
        let pre_tok: PreTokenizerWrapper = match pre {
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva" => Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            "default" | "gpt2" | "gpt-2" | "phi-2" | "olmo" | "jais" => {
                ByteLevel::new(false, true, true).into()
            }
            "llama3" | "llama-bpe" | "smaug-bpe" | "falcon3" | "pixtral" => {
                split_then_bytes(LLAMA3_REGEX)?
            }
            "qwen2" | "deepseek-r1-qwen" => split_then_bytes(QWEN2_REGEX)?,
            other => {
                return Err(EngineError::Tokenizer(format!(
                    "GGUF pre-tokenizer `{other}` is not supported; pass --tokenizer with the model's tokenizer.json"
                )));
            }
        };
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tok));
        inner.with_decoder(Some(byte_level));
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, ty)| **ty == 3 || **ty == 4)
            .map(|(t, _)| AddedToken::from(t.to_string(), true))
            .collect();
        inner.add_special_tokens(special).map_err(tok_err)?;
        let get_id = |k: &str| {
            g.get(k)
                .and_then(Value::as_u64)
                .map(|v| v as u32)
                .filter(|&v| (v as usize) < tokens.len())
        };
        let bos = get_id("tokenizer.ggml.bos_token_id");
        let eos = get_id("tokenizer.ggml.eos_token_id");
        let add_bos = g
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let dec = byte_decoder();
        let mut special_ids = HashSet::new();
        let bytes: Vec<Vec<u8>> = tokens
            .iter()
            .zip(&types)
            .enumerate()
            .map(|(i, (t, ty))| {
                if *ty == 3 || *ty == 4 {
                    special_ids.insert(i as u32);
                    t.as_bytes().to_vec()
                } else {
                    t.chars()
                        .map(|c| dec.get(&c).copied().unwrap_or(b'?'))
                        .collect()
                }
            })
            .collect();
        let mut stop_ids: Vec<u32> = eos
            .into_iter()
            .chain(get_id("tokenizer.ggml.eot_token_id"))
            .collect();
        for (i, t) in tokens.iter().enumerate() {
            if types[i] == 3 && END_OF_GENERATION.contains(t) && !stop_ids.contains(&(i as u32)) {
                stop_ids.push(i as u32);
            }
        }
        Self::finish(inner, bytes, special_ids, bos, eos, add_bos, stop_ids)
    }

    /// Loads `tokenizer.json` (and `tokenizer_config.json` beside it, for
    /// BOS/EOS and whether to add BOS).
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| tok_err(format!("{}: {e}", path.display())))?;
        // Fixed padding or truncation in a tokenizer.json (some embedding
        // models ship padding to 128) would change what we count and run.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(tok_err)?;
        let cfg = path
            .parent()
            .map(|d| d.join("tokenizer_config.json"))
            .and_then(|p| std::fs::read_to_string(p).ok());
        let cfg: serde_json::Value = cfg
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        let token_str = |k: &str| match &cfg[k] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => {
                o.get("content").and_then(|c| c.as_str()).map(String::from)
            }
            _ => None,
        };
        let bos = token_str("bos_token").and_then(|s| inner.token_to_id(&s));
        let eos = token_str("eos_token").and_then(|s| inner.token_to_id(&s));
        let add_bos = cfg["add_bos_token"].as_bool().unwrap_or(false);
        let n = inner.get_vocab_size(true);
        let special_ids: HashSet<u32> = inner
            .get_added_vocabulary()
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(i, _)| *i)
            .collect();
        let byte_level = matches!(
            inner.get_decoder(),
            Some(tokenizers::DecoderWrapper::ByteLevel(_))
        );
        let dec = byte_decoder();
        let bytes: Vec<Vec<u8>> = (0..n as u32)
            .map(|i| {
                let t = inner.id_to_token(i).unwrap_or_default();
                if special_ids.contains(&i) {
                    t.into_bytes()
                } else if byte_level {
                    t.chars()
                        .map(|c| dec.get(&c).copied().unwrap_or(b'?'))
                        .collect()
                } else if let Some(b) = t
                    .strip_prefix("<0x")
                    .and_then(|h| h.strip_suffix('>'))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    vec![b]
                } else {
                    t.replace('\u{2581}', " ").into_bytes()
                }
            })
            .collect();
        let mut stop_ids: Vec<u32> = eos.into_iter().collect();
        for &i in &special_ids {
            let t = inner.id_to_token(i).unwrap_or_default();
            if END_OF_GENERATION.contains(&t.as_str()) && !stop_ids.contains(&i) {
                stop_ids.push(i);
            }
        }
        Self::finish(inner, bytes, special_ids, bos, eos, add_bos, stop_ids)
    }

    fn finish(
        inner: tokenizers::Tokenizer,
        bytes: Vec<Vec<u8>>,
        special: HashSet<u32>,
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos: bool,
        mut stop_ids: Vec<u32>,
    ) -> Result<Self> {
        stop_ids.sort_unstable();
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);
        Ok(Tokenizer {
            with_special: inner,
            plain,
            bytes,
            special,
            bos,
            eos,
            add_bos,
            stop_ids,
        })
    }

    /// Vocabulary size (including added tokens).
    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// Tokenizes `text`. With `parse_special`, special-token strings such as
    /// `<|im_start|>` become their ids (use for rendered chat templates);
    /// without, they are tokenized as plain text. `add_bos` prepends the BOS
    /// token when the model wants one.
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<u32>> {
        let t = if parse_special {
            &self.with_special
        } else {
            &self.plain
        };
        let enc = t.encode_fast(text, false).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos && self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The raw bytes of one token (special tokens: their text).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Whether `id` is a special (control) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// Decodes `ids` to text (invalid UTF-8 becomes U+FFFD). With
    /// `skip_special`, special tokens are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut b = Vec::new();
        for &i in ids {
            if !(skip_special && self.is_special(i)) {
                b.extend_from_slice(self.token_bytes(i));
            }
        }
        String::from_utf8_lossy(&b).into_owned()
    }

    /// The token's text as the vocabulary spells it (for APIs showing
    /// tokens).
    pub fn token_text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.token_bytes(id)).into_owned()
    }
}

fn split_then_bytes(regex: &str) -> Result<PreTokenizerWrapper> {
    let split = Split::new(
        SplitPattern::Regex(regex.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(tok_err)?;
    Ok(Sequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, false).into(),
    ])
    .into())
}

/// Turns a stream of token ids into text, emitting only complete UTF-8
/// characters.
#[derive(Debug, Default, Clone)]
pub struct TextStream {
    pending: Vec<u8>,
}

impl TextStream {
    /// Adds a token's bytes and returns the text that is now complete.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.pending.extend_from_slice(tok.token_bytes(id));
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    // SAFETY-free: `good` bytes were validated just above.
                    out.push_str(std::str::from_utf8(&self.pending[..good]).unwrap_or_default());
                    match e.error_len() {
                        // Incomplete sequence at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..good + bad);
                        }
                    }
                }
            }
        }
    }

    /// Flushes what is left (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}
