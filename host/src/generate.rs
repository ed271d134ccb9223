//! `palisade generate`: stream one completion to standard output.

use std::io::Write;
use std::path::PathBuf;

use palisade_engine::{Engine, EngineOptions, GenerateRequest, SamplingParams};

use crate::HostError;

/// Arguments of `palisade generate`.
#[derive(Debug, Clone, Default)]
pub struct GenerateArgs {
    /// Model path (default: the cached default model).
    pub model: Option<PathBuf>,
    /// A tokenizer.json overriding the model's.
    pub tokenizer: Option<PathBuf>,
    /// The prompt (raw text, or the user message with `chat`).
    pub prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    pub chat: bool,
    /// Optional system message (with `chat`).
    pub system: Option<String>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling temperature (0: greedy).
    pub temperature: f32,
    /// Nucleus sampling.
    pub top_p: f32,
    /// Top-k sampling (0: off).
    pub top_k: usize,
    /// Seed.
    pub seed: Option<u64>,
    /// Compute threads (0: all cores).
    pub threads: usize,
    /// Stop strings.
    pub stop: Vec<String>,
}

fn load(args: &GenerateArgs) -> Result<Engine, HostError> {
    let model = crate::resolve_model(args.model.as_ref())?;
    Ok(Engine::load(&EngineOptions {
        model,
        tokenizer: args.tokenizer.clone(),
        threads: args.threads,
        max_model_len: None,
    })?)
}

/// Loads the model and streams the completion (not the prompt) to `out`.
pub fn run_generate(args: &GenerateArgs, out: &mut dyn Write) -> Result<(), HostError> {
    let engine = load(args)?;
    let prompt = if args.chat {
        let mut msgs = Vec::new();
        if let Some(s) = &args.system {
            msgs.push(serde_json::json!({"role": "system", "content": s}));
        }
        msgs.push(serde_json::json!({"role": "user", "content": args.prompt}));
        engine.chat_prompt(&msgs, None)?.1
    } else {
        engine.tokenizer().encode(&args.prompt, true, false)?
    };
    stream(&engine, args, prompt, out)?;
    writeln!(out)?;
    Ok(())
}

/// An interactive chat: each line of `input` is a user turn; replies stream
/// to `out`. Ends at end of input.
pub fn run_chat(
    args: &GenerateArgs,
    input: &mut dyn std::io::BufRead,
    out: &mut dyn Write,
) -> Result<(), HostError> {
    let engine = load(args)?;
    let mut msgs = Vec::new();
    if let Some(s) = &args.system {
        msgs.push(serde_json::json!({"role": "system", "content": s}));
    }
    eprintln!("chatting with {} (end with Ctrl-D)", engine.name());
    let mut line = String::new();
    loop {
        eprint!("> ");
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        msgs.push(serde_json::json!({"role": "user", "content": text}));
        let prompt = engine.chat_prompt(&msgs, None)?.1;
        let reply = stream(&engine, args, prompt, out)?;
        writeln!(out)?;
        msgs.push(serde_json::json!({"role": "assistant", "content": reply}));
    }
}

fn stream(
    engine: &Engine,
    args: &GenerateArgs,
    prompt: Vec<u32>,
    out: &mut dyn Write,
) -> Result<String, HostError> {
    let max_tokens = args
        .max_tokens
        .min(engine.max_context().saturating_sub(prompt.len()));
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        ..Default::default()
    };
    let req = GenerateRequest {
        prompt,
        max_tokens,
        sampling,
        stop: args.stop.clone(),
        ..Default::default()
    };
    let mut all = String::new();
    for step in engine.generate(req)? {
        let step = step?;
        out.write_all(step.text.as_bytes())?;
        out.flush()?;
        all.push_str(&step.text);
    }
    Ok(all)
}
