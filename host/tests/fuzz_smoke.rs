//! The fuzz targets (tests/fuzz) for a bounded time inside the test suite:
//! a mutation fuzzer without coverage feedback (the coverage-guided runs are
//! libFuzzer's, `make fuzz`), built with the ordinary test build so CI pays
//! no instrumented build of wasmtime and candle.
//!
//! Each target starts from its committed seeds (tests/fuzz/seeds/<target>)
//! and, for a share of `PALISADE_FUZZ_SMOKE_SECS` seconds (default 40 for
//! all five targets together), runs inputs made from them by random
//! mutations: bit flips, interesting bytes, insertions, deletions,
//! duplicated ranges, dictionary tokens (tests/fuzz/dicts), splices of two
//! inputs, truncation. One mutated input in 16 joins the pool, so mutations
//! compound. A panic is a finding: its input is written to
//! tests/fuzz/artifacts/smoke/<target>-<n> and the test fails naming it.
//! The run prints executions and findings per target (`--nocapture`).
//! `PALISADE_FUZZ_SMOKE_SEED` fixes the random seed (default: the clock).

#[path = "../../tests/fuzz/src/targets.rs"]
mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The message of the last panic (the quiet hook records it).
static LAST_PANIC: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// xorshift64*: enough randomness for mutations, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz")
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = fuzz_dir().join("seeds").join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.expect("seed entry").path()).expect("reading a seed"))
        .collect();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out.sort();
    out
}

/// Tokens of a libFuzzer dictionary (`name="token"` lines, `\xNN` and `\"`
/// escapes).
fn dictionary(target: &str) -> Vec<Vec<u8>> {
    let Ok(text) = std::fs::read_to_string(fuzz_dir().join("dicts").join(format!("{target}.dict")))
    else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let start = l.find('"')?;
            let end = l.rfind('"')?;
            (end > start).then(|| unescape(&l[start + 1..end]))
        })
        .collect()
}

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            if b[i + 1] == b'x' && i + 3 < b.len() {
                if let Ok(v) = u8::from_str_radix(&s[i + 2..i + 4], 16) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
            out.push(b[i + 1]);
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

const INTERESTING: [u8; 10] = [0, 1, 0x7f, 0x80, 0xff, b'"', b'{', b'}', b'\\', b'\n'];
const MAX_LEN: usize = 1 << 16;

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, pool: &[Vec<u8>], dict: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                input.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let piece = input[i..i + n].to_vec();
                let at = rng.below(input.len() + 1);
                input.splice(at..at, piece);
            }
            5 | 6 if !dict.is_empty() => {
                let tok = &dict[rng.below(dict.len())];
                let at = rng.below(len + 1);
                input.splice(at..at, tok.iter().copied());
            }
            7 => {
                let other = &pool[rng.below(pool.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            _ if len > 0 => input.truncate(rng.below(len)),
            _ => input.push(rng.next() as u8),
        }
    }
    input.truncate(MAX_LEN);
}

/// Runs `f` on inputs from `target`'s seeds for `budget`; returns the
/// executions and the paths of the findings written.
fn run(target: &str, f: fn(&[u8]), budget: Duration, rng: &mut Rng) -> (u64, Vec<PathBuf>) {
    let mut pool = seeds(target);
    let dict = dictionary(target);
    let mut findings = Vec::new();
    let mut execs = 0u64;
    let check = |input: &[u8], execs: &mut u64, findings: &mut Vec<PathBuf>| {
        *execs += 1;
        if catch_unwind(AssertUnwindSafe(|| f(input))).is_err() {
            let dir = fuzz_dir().join("artifacts/smoke");
            std::fs::create_dir_all(&dir).expect("creating the artifacts directory");
            let path = dir.join(format!("{target}-{}", findings.len()));
            std::fs::write(&path, input).expect("writing a finding");
            let message = LAST_PANIC.lock().map(|m| m.clone()).unwrap_or_default();
            std::fs::write(path.with_extension("panic.txt"), &message).expect("writing a finding");
            println!(
                "fuzz smoke: {target}: finding {}: {message}",
                path.display()
            );
            findings.push(path);
        }
    };
    for s in pool.clone() {
        check(&s, &mut execs, &mut findings);
    }
    let end = Instant::now() + budget;
    while Instant::now() < end && findings.len() < 10 {
        let mut input = pool[rng.below(pool.len())].clone();
        mutate(rng, &mut input, &pool, &dict);
        check(&input, &mut execs, &mut findings);
        if rng.below(16) == 0 && pool.len() < 4096 {
            pool.push(input);
        }
    }
    (execs, findings)
}

#[test]
fn fuzz_targets_survive_a_bounded_mutation_run() {
    let secs: f64 = std::env::var("PALISADE_FUZZ_SMOKE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40.0);
    let seed = std::env::var("PALISADE_FUZZ_SMOKE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        | 1;
    // Load the engine before the clock starts (the first request and
    // tokenizer inputs would otherwise pay for it).
    targets::engine();
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        if let Ok(mut m) = LAST_PANIC.lock() {
            *m = info.to_string();
        }
    }));
    let mut rng = Rng(seed);
    let budget = Duration::from_secs_f64(secs / targets::TARGETS.len() as f64);
    let mut all = Vec::new();
    let mut report = Vec::new();
    for (name, f) in targets::TARGETS {
        let (execs, findings) = run(name, f, budget, &mut rng);
        report.push(format!(
            "fuzz smoke: {name}: {execs} executions in {:.1} s, {} findings",
            budget.as_secs_f64(),
            findings.len()
        ));
        all.extend(findings);
    }
    std::panic::set_hook(quiet);
    for line in &report {
        println!("{line}");
    }
    assert!(
        all.is_empty(),
        "fuzz smoke (seed {seed}) found inputs that panic a target: {all:?}; \
         replay one with `cargo fuzz run --fuzz-dir tests/fuzz TARGET FILE`"
    );
}
