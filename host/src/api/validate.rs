//! Parse, don't validate: API requests become [`ValidGeneration`] once, at
//! the edge, with every limit checked and every error naming the field, the
//! limit and the value given. Nothing downstream re-checks.

use std::collections::HashMap;

use palisade_engine::{Constraint, Engine, GenerateRequest, SamplingParams};

use crate::api::error::ApiError;
use crate::api::types::{
    ChatCompletionRequest, ChatMessage, CompletionRequest, Content, ContentPart, PromptInput,
    ResponseFormat, Role, StopSpec,
};
use crate::config::LimitsSection;

/// Most stop strings per request (OpenAI's limit).
pub const MAX_STOP: usize = 4;

/// A generation request that passed every check.
#[derive(Debug, Clone)]
pub struct ValidGeneration {
    /// Prompts (chat: one; completions: one per prompt).
    pub prompts: Vec<Vec<u32>>,
    /// Prompt texts (for `echo`).
    pub prompt_texts: Vec<String>,
    /// Choices per prompt.
    pub n: usize,
    /// Tokens to generate per choice.
    pub max_tokens: usize,
    /// Sampling (the seed is offset per choice).
    pub sampling: SamplingParams,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Stream as server-sent events.
    pub stream: bool,
    /// Final usage chunk in streams.
    pub include_usage: bool,
    /// Echo the prompt (completions).
    pub echo: bool,
    /// The chat messages as the template saw them (chat only).
    pub messages: Vec<serde_json::Value>,
    /// The grammar the output must follow (`response_format`).
    pub constraint: Option<Constraint>,
}

impl ValidGeneration {
    /// The engine request of choice `choice` (`prompt * n + i`).
    pub fn engine_request(&self, choice: usize) -> GenerateRequest {
        let mut sampling = self.sampling.clone();
        if let Some(s) = sampling.seed {
            sampling.seed = Some(s.wrapping_add(choice as u64));
        }
        GenerateRequest {
            prompt: self.prompts[choice / self.n].clone(),
            max_tokens: self.max_tokens,
            sampling,
            stop: self.stop.clone(),
            constraint: self.constraint.clone(),
            ..Default::default()
        }
    }

    /// Total choices.
    pub fn choices(&self) -> usize {
        self.prompts.len() * self.n
    }

    /// Prompt tokens over all prompts, counted once per choice as OpenAI
    /// does for `n` > 1 (each choice re-reads the prompt).
    pub fn prompt_tokens(&self) -> usize {
        self.prompts.iter().map(|p| p.len()).sum()
    }
}

fn stop_list(stop: Option<StopSpec>) -> Result<Vec<String>, ApiError> {
    let list = match stop {
        None => vec![],
        Some(StopSpec::One(s)) => vec![s],
        Some(StopSpec::Many(v)) => v,
    };
    if list.len() > MAX_STOP {
        return Err(ApiError::bad(
            "stop",
            format!(
                "at most {MAX_STOP} stop sequences are allowed, got {}",
                list.len()
            ),
        ));
    }
    if list.iter().any(|s| s.is_empty()) {
        return Err(ApiError::bad("stop", "stop sequences must not be empty"));
    }
    Ok(list)
}

fn logit_bias(map: Option<HashMap<String, f32>>) -> Result<Vec<(u32, f32)>, ApiError> {
    map.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let id = k.parse::<u32>().map_err(|_| {
                ApiError::bad(
                    "logit_bias",
                    format!("`logit_bias` key `{k}` is not a token id"),
                )
            })?;
            Ok((id, v))
        })
        .collect()
}

struct Common {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    seed: Option<i64>,
    logit_bias: Option<HashMap<String, f32>>,
    logprobs: Option<usize>,
    n: Option<u32>,
    max_tokens: Option<u32>,
    max_tokens_field: &'static str,
    default_max_tokens: Option<usize>,
}

fn finish(
    engine: &Engine,
    limits: &LimitsSection,
    c: Common,
    prompts: Vec<Vec<u32>>,
    prompt_texts: Vec<String>,
    stop: Vec<String>,
    stream: bool,
    include_usage: bool,
    echo: bool,
) -> Result<ValidGeneration, ApiError> {
    let n = c.n.unwrap_or(1) as usize;
    if n == 0 || n > limits.max_n {
        return Err(ApiError::bad(
            "n",
            format!("`n` must be between 1 and {}, got {n}", limits.max_n),
        ));
    }
    let context = engine.max_context();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if longest == 0 {
        return Err(ApiError::bad("prompt", "the prompt is empty"));
    }
    if longest >= context {
        return Err(ApiError::bad(
            "messages",
            format!(
                "the prompt has {longest} tokens; this model's context length is {context} tokens"
            ),
        ));
    }
    let room = context - longest;
    let max_tokens = match c.max_tokens {
        Some(0) => {
            return Err(ApiError::bad(
                c.max_tokens_field,
                format!("`{}` must be at least 1, got 0", c.max_tokens_field),
            ));
        }
        Some(m) => {
            let m = m as usize;
            if m > limits.max_tokens {
                return Err(ApiError::bad(
                    c.max_tokens_field,
                    format!(
                        "`{}` is {m}, above this server's limit of {}",
                        c.max_tokens_field, limits.max_tokens
                    ),
                ));
            }
            if m > room {
                return Err(ApiError::bad(
                    c.max_tokens_field,
                    format!(
                        "this model's context length is {context} tokens; the prompt has {longest} and `{}` asks for {m} more",
                        c.max_tokens_field
                    ),
                ));
            }
            m
        }
        None => c
            .default_max_tokens
            .unwrap_or(limits.max_tokens)
            .min(limits.max_tokens)
            .min(room),
    };
    let sampling = SamplingParams {
        temperature: c.temperature.unwrap_or(1.0),
        top_p: c.top_p.unwrap_or(1.0),
        top_k: c.top_k.unwrap_or(0) as usize,
        min_p: c.min_p.unwrap_or(0.0),
        repetition_penalty: c.repetition_penalty.unwrap_or(1.0),
        presence_penalty: c.presence_penalty.unwrap_or(0.0),
        frequency_penalty: c.frequency_penalty.unwrap_or(0.0),
        seed: c.seed.map(|s| s as u64),
        logit_bias: logit_bias(c.logit_bias)?,
        logprobs: c.logprobs,
    };
    sampling.validate(engine.model().config.vocab)?;
    Ok(ValidGeneration {
        prompts,
        prompt_texts,
        n,
        max_tokens,
        sampling,
        stop,
        stream,
        include_usage,
        echo,
        messages: vec![],
        constraint: None,
    })
}

fn message_json(m: &ChatMessage, i: usize) -> Result<serde_json::Value, ApiError> {
    let content = match &m.content {
        None if m.role == Role::Assistant => String::new(),
        None => {
            return Err(ApiError::bad(
                format!("messages[{i}].content"),
                "content is required for this role",
            ));
        }
        Some(Content::Text(t)) => t.clone(),
        Some(Content::Parts(parts)) => parts
            .iter()
            .map(|ContentPart::Text { text }| text.as_str())
            .collect::<Vec<_>>()
            .join(""),
    };
    let role = match m.role {
        Role::System | Role::Developer => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => {
            return Err(ApiError::bad(
                format!("messages[{i}].role"),
                "`tool` messages need tool calling, which this server does not support yet",
            ));
        }
    };
    let mut v = serde_json::json!({"role": role, "content": content});
    if let Some(name) = &m.name {
        v["name"] = name.clone().into();
    }
    Ok(v)
}

/// Renders and tokenizes the conversation.
pub fn chat_messages(
    engine: &Engine,
    messages: &[ChatMessage],
) -> Result<(String, Vec<u32>), ApiError> {
    let msgs = messages_json(messages)?;
    Ok(engine.chat_prompt(&msgs, None)?)
}

/// The messages as template input (`role`, `content`, optional `name`).
pub fn messages_json(messages: &[ChatMessage]) -> Result<Vec<serde_json::Value>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad(
            "messages",
            "`messages` must contain at least one message",
        ));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| message_json(m, i))
        .collect()
}

/// Applies an admission rewrite: lower `max_tokens`, replace the
/// temperature, put a system message first (chat: re-rendered and
/// re-tokenized, and the context limit checked again).
pub fn apply_rewrite(
    engine: &Engine,
    v: &mut ValidGeneration,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    prepend_system: Option<String>,
) -> Result<(), ApiError> {
    if let Some(m) = max_tokens {
        v.max_tokens = v.max_tokens.min((m as usize).max(1));
    }
    if let Some(t) = temperature {
        v.sampling.temperature = t.clamp(0.0, 2.0);
    }
    if let Some(sys) = prepend_system
        && !v.messages.is_empty()
    {
        v.messages
            .insert(0, serde_json::json!({"role": "system", "content": sys}));
        let (text, ids) = engine.chat_prompt(&v.messages, None)?;
        if ids.len() + v.max_tokens > engine.max_context() {
            return Err(ApiError::bad(
                "messages",
                format!(
                    "with the policy's system message the prompt has {} tokens, too long for max_tokens {} in a context of {}",
                    ids.len(),
                    v.max_tokens,
                    engine.max_context()
                ),
            ));
        }
        v.prompts = vec![ids];
        v.prompt_texts = vec![text];
    }
    Ok(())
}

/// The constraint `response_format` asks for.
fn response_format(f: Option<ResponseFormat>) -> Result<Option<Constraint>, ApiError> {
    let Some(ResponseFormat::JsonSchema { json_schema: f }) = f else {
        return Ok(match f {
            Some(ResponseFormat::JsonObject) => Some(Constraint::JsonObject),
            _ => None,
        });
    };
    let name_ok = !f.name.is_empty()
        && f.name.len() <= 64
        && f.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !name_ok {
        return Err(ApiError::bad(
            "response_format.json_schema.name",
            format!(
                "must be 1 to 64 letters, digits, `_` or `-`, got {:?}",
                f.name
            ),
        ));
    }
    match f.schema {
        None => Ok(Some(Constraint::JsonSchema(serde_json::json!({})))),
        Some(s) if s.is_object() => Ok(Some(Constraint::JsonSchema(s))),
        Some(s) => Err(ApiError::bad(
            "response_format.json_schema.schema",
            format!("must be a JSON schema object, got {s}"),
        )),
    }
}

/// Validates a chat completion request.
pub fn chat(
    engine: &Engine,
    limits: &LimitsSection,
    r: ChatCompletionRequest,
) -> Result<ValidGeneration, ApiError> {
    for (field, present) in [
        ("tools", r.tools.is_some()),
        ("tool_choice", r.tool_choice.is_some()),
    ] {
        if present {
            return Err(ApiError::bad(
                field,
                format!("`{field}` is not supported by this server yet"),
            ));
        }
    }
    let logprobs = match (r.logprobs.unwrap_or(false), r.top_logprobs) {
        (false, Some(_)) => {
            return Err(ApiError::bad(
                "top_logprobs",
                "`top_logprobs` needs `logprobs: true`",
            ));
        }
        (false, None) => None,
        (true, k) => Some(k.unwrap_or(0) as usize),
    };
    let stop = stop_list(r.stop)?;
    let messages = messages_json(&r.messages)?;
    let (text, ids) = engine.chat_prompt(&messages, None)?;
    let (field, max) = match (r.max_completion_tokens, r.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    let c = Common {
        temperature: r.temperature,
        top_p: r.top_p,
        top_k: r.top_k,
        min_p: r.min_p,
        repetition_penalty: r.repetition_penalty,
        presence_penalty: r.presence_penalty,
        frequency_penalty: r.frequency_penalty,
        seed: r.seed,
        logit_bias: r.logit_bias,
        logprobs,
        n: r.n,
        max_tokens: max,
        max_tokens_field: field,
        default_max_tokens: None,
    };
    let stream = r.stream.unwrap_or(false);
    let include_usage = r.stream_options.is_some_and(|o| o.include_usage);
    let mut v = finish(
        engine,
        limits,
        c,
        vec![ids],
        vec![text],
        stop,
        stream,
        include_usage,
        false,
    )?;
    v.messages = messages;
    v.constraint = response_format(r.response_format)?;
    Ok(v)
}

/// Validates a text completion request.
pub fn completion(
    engine: &Engine,
    limits: &LimitsSection,
    r: CompletionRequest,
) -> Result<ValidGeneration, ApiError> {
    if r.suffix.is_some() {
        return Err(ApiError::bad(
            "suffix",
            "`suffix` (insertion) is not supported by this model",
        ));
    }
    if let Some(b) = r.best_of
        && b != r.n.unwrap_or(1)
    {
        return Err(ApiError::bad(
            "best_of",
            format!("`best_of` must equal `n` ({}), got {b}", r.n.unwrap_or(1)),
        ));
    }
    if let Some(k) = r.logprobs
        && k > 5
    {
        return Err(ApiError::bad(
            "logprobs",
            format!("`logprobs` must be between 0 and 5, got {k}"),
        ));
    }
    let tok = engine.tokenizer();
    let vocab = engine.model().config.vocab as u32;
    let check_ids = |ids: Vec<u32>, i: usize| -> Result<Vec<u32>, ApiError> {
        if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
            return Err(ApiError::bad(
                format!("prompt[{i}]"),
                format!("token id {bad} is outside the vocabulary (0..{vocab})"),
            ));
        }
        Ok(ids)
    };
    let (prompts, texts): (Vec<Vec<u32>>, Vec<String>) = match r.prompt {
        PromptInput::Text(t) => (vec![tok.encode(&t, true, false)?], vec![t]),
        PromptInput::Texts(ts) => {
            let ids = ts
                .iter()
                .map(|t| tok.encode(t, true, false))
                .collect::<Result<Vec<_>, _>>()?;
            (ids, ts)
        }
        PromptInput::Tokens(ids) => {
            let text = tok.decode(&ids, false);
            (vec![check_ids(ids, 0)?], vec![text])
        }
        PromptInput::TokenLists(lists) => {
            let texts = lists.iter().map(|l| tok.decode(l, false)).collect();
            (
                lists
                    .into_iter()
                    .enumerate()
                    .map(|(i, l)| check_ids(l, i))
                    .collect::<Result<_, _>>()?,
                texts,
            )
        }
    };
    if prompts.is_empty() {
        return Err(ApiError::bad(
            "prompt",
            "`prompt` must not be an empty list",
        ));
    }
    if prompts.len() * r.n.unwrap_or(1) as usize > limits.max_n.max(1) * 4 {
        return Err(ApiError::bad(
            "prompt",
            format!("at most {} prompts x n per request", limits.max_n * 4),
        ));
    }
    let c = Common {
        temperature: r.temperature,
        top_p: r.top_p,
        top_k: r.top_k,
        min_p: r.min_p,
        repetition_penalty: r.repetition_penalty,
        presence_penalty: r.presence_penalty,
        frequency_penalty: r.frequency_penalty,
        seed: r.seed,
        logit_bias: r.logit_bias,
        logprobs: r.logprobs.map(|k| k as usize),
        n: r.n,
        max_tokens: r.max_tokens,
        max_tokens_field: "max_tokens",
        default_max_tokens: Some(16),
    };
    let stop = stop_list(r.stop)?;
    let stream = r.stream.unwrap_or(false);
    let include_usage = r.stream_options.is_some_and(|o| o.include_usage);
    finish(
        engine,
        limits,
        c,
        prompts,
        texts,
        stop,
        stream,
        include_usage,
        r.echo.unwrap_or(false),
    )
}
