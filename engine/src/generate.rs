//! Generation: what to generate, the per-sequence decoding state (sampling,
//! text deltas, stop handling), and [`Generation`], an iterator over one
//! sequence's tokens for callers that run a single sequence.

use crate::Engine;
use crate::constraint::{Constraint, TokenConstraint};
use crate::error::{EngineError, Result};
use crate::kv::BLOCK_SIZE;
use crate::sampling::{Sampled, Sampler, SamplingParams};
use crate::scheduler::{Output, Scheduler, SchedulerConfig, SeqId};
use crate::stop::{StopEvent, StopStrings};
use crate::tokenizer::{TextStream, Tokenizer};

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
    /// Keep generating past the model's end-of-generation tokens (ignored
    /// under a constraint, which ends when its grammar is complete).
    pub ignore_eos: bool,
    /// A grammar the output must match.
    pub constraint: Option<Constraint>,
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

/// The decoding state of one sequence: sampler, text assembly and stop
/// handling. The scheduler feeds it logits; it returns the [`Step`].
#[derive(Debug)]
pub(crate) struct Decoder {
    sampler: Sampler,
    text: TextStream,
    stops: StopStrings,
    stop_token_ids: Vec<u32>,
    ignore_eos: bool,
    max_tokens: usize,
    generated: usize,
    constraint: Option<TokenConstraint>,
}

impl Decoder {
    /// Validates `req` against the engine and sets up its state.
    pub(crate) fn new(engine: &Engine, req: &GenerateRequest) -> Result<Self> {
        req.sampling.validate(engine.model.config.vocab)?;
        if req.prompt.is_empty() {
            return Err(EngineError::InvalidParameter {
                field: "prompt",
                message: "the prompt has no tokens".into(),
            });
        }
        if req.max_tokens == 0 {
            return Err(EngineError::InvalidParameter {
                field: "max_tokens",
                message: "must be at least 1".into(),
            });
        }
        let vocab = engine.model.config.vocab;
        if let Some(&bad) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::InvalidParameter {
                field: "prompt",
                message: format!("token id {bad} is outside the vocabulary (0..{vocab})"),
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
        let constraint = match &req.constraint {
            Some(c) => Some(TokenConstraint::new(engine.parser_factory()?, c)?),
            None => None,
        };
        Ok(Decoder {
            constraint,
            sampler: Sampler::new(req.sampling.clone(), &req.prompt),
            text: TextStream::default(),
            stops: StopStrings::new(req.stop.clone()),
            stop_token_ids: req.stop_token_ids.clone(),
            ignore_eos: req.ignore_eos,
            max_tokens: req.max_tokens,
            generated: 0,
        })
    }

    /// Samples the next token from `logits` (modified in place).
    pub(crate) fn accept(&mut self, tok: &Tokenizer, logits: &mut [f32]) -> Step {
        let ignore_eos = self.ignore_eos && self.constraint.is_none();
        if let Some(c) = &mut self.constraint {
            let mut stops = tok.stop_ids.clone();
            stops.extend_from_slice(&self.stop_token_ids);
            c.mask(logits, &stops);
        }
        let sampled = self.sampler.sample(logits);
        self.generated += 1;
        let is_stop_token = (!ignore_eos && tok.stop_ids.contains(&sampled.token))
            || self.stop_token_ids.contains(&sampled.token);
        let grammar_done = !is_stop_token
            && self
                .constraint
                .as_mut()
                .is_some_and(|c| c.advance(sampled.token));
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
            if finish.is_none() && grammar_done {
                finish = Some(FinishReason::Stop);
                text.push_str(&self.flush());
            }
            if finish.is_none() && self.generated >= self.max_tokens {
                finish = Some(FinishReason::Length);
                text.push_str(&self.flush());
            }
        }
        Step {
            sampled,
            text,
            finish,
        }
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

/// An in-progress generation of one sequence, run by a private
/// [`Scheduler`] whose cache holds exactly this sequence; iterate it to get
/// [`Step`]s. (A server shares one scheduler between all its sequences.)
pub struct Generation<'e> {
    sched: Scheduler<'e>,
    id: SeqId,
    out: Vec<Output>,
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
        let positions = req.prompt.len() + req.max_tokens;
        let mut sched = Scheduler::new(
            engine,
            SchedulerConfig {
                max_num_seqs: 1,
                max_num_batched_tokens: PREFILL_CHUNK,
                kv_blocks: positions.div_ceil(BLOCK_SIZE).max(1),
            },
        )?;
        let id = sched.add(req)?;
        Ok(Generation {
            sched,
            id,
            out: Vec::new(),
            generated: 0,
            done: false,
        })
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.generated
    }
}

impl Iterator for Generation<'_> {
    type Item = Result<Step>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            if let Some(o) = self.out.pop() {
                debug_assert_eq!(o.id, self.id);
                match &o.event {
                    Ok(step) => {
                        self.generated += 1;
                        self.done = step.finish.is_some();
                    }
                    Err(_) => self.done = true,
                }
                return Some(o.event);
            }
            if !self.sched.step(&|_| false, &mut self.out) {
                self.done = true;
            }
        }
        None
    }
}
