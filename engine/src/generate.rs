//! Generation of one sequence: prefill the prompt, then sample and decode
//! token by token, streaming text deltas with stop handling.

use crate::Engine;
use crate::error::{EngineError, Result};
use crate::model::{KvCache, Workspace};
use crate::sampling::{Sampled, Sampler, SamplingParams};
use crate::stop::{StopEvent, StopStrings};
use crate::tokenizer::TextStream;

/// Longest run of prompt tokens evaluated in one forward call.
pub const PREFILL_CHUNK: usize = 512;

/// What to generate.
#[derive(Debug, Clone, Default)]
pub struct GenerateRequest {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// Stop strings (not included in the output).
    pub stop: Vec<String>,
    /// Extra stop token ids (besides the model's end-of-generation tokens).
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past the model's end-of-generation tokens.
    pub ignore_eos: bool,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` or the context window was reached.
    Length,
}

impl FinishReason {
    /// OpenAI's name.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One generated token.
#[derive(Debug, Clone)]
pub struct Step {
    /// The token and its logprobs.
    pub sampled: Sampled,
    /// Text released by this step (may be empty while text is held back).
    pub text: String,
    /// Set on the last step.
    pub finish: Option<FinishReason>,
}

/// An in-progress generation; iterate it to get [`Step`]s.
pub struct Generation<'e> {
    engine: &'e Engine,
    req: GenerateRequest,
    cache: KvCache,
    ws: Workspace,
    sampler: Sampler,
    text: TextStream,
    stops: StopStrings,
    last: Option<u32>,
    generated: usize,
    done: bool,
}

impl std::fmt::Debug for Generation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("generated", &self.generated)
            .field("done", &self.done)
            .finish()
    }
}

impl<'e> Generation<'e> {
    pub(crate) fn new(engine: &'e Engine, req: GenerateRequest) -> Result<Self> {
        let vocab = engine.model.config.vocab;
        req.sampling.validate(vocab)?;
        if req.prompt.is_empty() {
            return Err(EngineError::InvalidParameter {
                field: "prompt",
                message: "the prompt has no tokens".into(),
            });
        }
        let context = engine.max_context();
        if req.prompt.len() + req.max_tokens > context {
            return Err(EngineError::ContextLength {
                prompt: req.prompt.len(),
                max_tokens: req.max_tokens,
                context,
            });
        }
        let cache = KvCache::new(&engine.model.config, req.prompt.len() + req.max_tokens);
        let sampler = Sampler::new(req.sampling.clone(), &req.prompt);
        let stops = StopStrings::new(req.stop.clone());
        Ok(Generation {
            engine,
            req,
            cache,
            ws: Workspace::default(),
            sampler,
            text: TextStream::default(),
            stops,
            last: None,
            generated: 0,
            done: false,
        })
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    fn logits_for_next(&mut self) -> Result<Vec<f32>> {
        let m = &self.engine.model;
        let pool = &self.engine.pool;
        match self.last {
            None => {
                let prompt = self.req.prompt.clone();
                let mut start = 0;
                let mut logits = Vec::new();
                for chunk in prompt.chunks(PREFILL_CHUNK) {
                    logits = m
                        .forward(pool, &mut self.ws, &mut self.cache, chunk, start, false)?
                        .to_vec();
                    start += chunk.len();
                }
                Ok(logits)
            }
            Some(t) => {
                let pos = self.cache.len;
                Ok(
                    m.forward(pool, &mut self.ws, &mut self.cache, &[t], pos, false)?
                        .to_vec(),
                )
            }
        }
    }

    fn step(&mut self) -> Result<Step> {
        let mut logits = self.logits_for_next()?;
        let sampled = self.sampler.sample(&mut logits);
        let tok = &self.engine.tokenizer;
        self.generated += 1;
        self.last = Some(sampled.token);
        let is_stop_token = (!self.req.ignore_eos && tok.stop_ids.contains(&sampled.token))
            || self.req.stop_token_ids.contains(&sampled.token);
        let mut finish = None;
        let mut text;
        if is_stop_token {
            finish = Some(FinishReason::Stop);
            text = self.flush();
        } else {
            let delta = self.text.push(tok, sampled.token);
            match self.stops.push(&delta) {
                StopEvent::Text(t) => text = t,
                StopEvent::Stop(t) => {
                    text = t;
                    finish = Some(FinishReason::Stop);
                }
            }
            if finish.is_none() && self.generated >= self.req.max_tokens {
                finish = Some(FinishReason::Length);
                text.push_str(&self.flush());
            }
        }
        if finish.is_some() {
            self.done = true;
        }
        Ok(Step {
            sampled,
            text,
            finish,
        })
    }

    /// Releases everything still held (an incomplete character, a partial
    /// stop string) at the end of generation.
    fn flush(&mut self) -> String {
        let rest = self.text.finish();
        match self.stops.push(&rest) {
            StopEvent::Text(mut t) => {
                t.push_str(&self.stops.finish());
                t
            }
            StopEvent::Stop(t) => t,
        }
    }
}

impl Iterator for Generation<'_> {
    type Item = Result<Step>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.req.max_tokens == 0 {
            return None;
        }
        let r = self.step();
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}
