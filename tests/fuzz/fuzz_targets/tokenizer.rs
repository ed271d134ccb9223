//! The tokenizer input path: arbitrary UTF-8 through the model's
//! byte-level BPE (plain and with special tokens parsed), decoded back
//! whole and token by token. Byte-level BPE is lossless: plain encoding
//! must decode to the same text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| palisade_fuzz::targets::tokenizer(data));
