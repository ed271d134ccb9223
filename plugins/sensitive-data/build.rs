//! Compiles the built-in detectors to DFAs and serializes them into
//! `OUT_DIR`, so an instance deserializes them instead of compiling
//! (compiling all of them costs milliseconds; loading, microseconds).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::{env, fs};

#[allow(dead_code)]
#[path = "src/automaton.rs"]
mod automaton;

fn main() {
    println!("cargo::rerun-if-changed=src/automaton.rs");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let mut list = String::from("[\n");
    for (name, regex, _) in automaton::BUILTINS {
        let dfa =
            automaton::build(regex, false).unwrap_or_else(|e| panic!("built-in `{name}`: {e}"));
        // Wasm and the test hosts are little-endian.
        let (bytes, pad) = dfa.to_bytes_little_endian();
        let path = out.join(format!("{name}.dfa"));
        fs::write(&path, &bytes[pad..]).expect("write DFA");
        writeln!(
            list,
            "    &Aligned {{ _align: [], bytes: *include_bytes!({:?}) }},",
            path.display().to_string()
        )
        .unwrap();
    }
    list.push(']');
    fs::write(out.join("dfas.rs"), list).expect("write dfas.rs");
}
