//! Parse, don't validate: API requests become [`ValidGeneration`] once, at
//! the edge, with every limit checked and every error naming the field, the
//! limit and the value given. Nothing downstream re-checks.

use std::collections::HashMap;

use palisade_engine::{Constraint, Engine, GenerateRequest, SamplingParams};

use crate::api::error::ApiError;
use crate::api::tools::{self, ToolSet};
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
    /// The grammar the output must follow (`response_format`, a forced
    /// tool call).
    pub constraint: Option<Constraint>,
    /// The tools offered (chat with `tools`): the output is parsed for
    /// calls.
    pub tools: Option<ToolSet>,
    /// Extra chat template input (`tools`, for templates that render them).
    pub template_extra: Option<serde_json::Value>,
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
        tools: None,
        template_extra: None,
    })
}

/// Most tools per request.
pub const MAX_TOOLS: usize = 128;

fn message_json(
    m: &ChatMessage,
    i: usize,
    native_tools: bool,
    call_ids: &mut Vec<String>,
) -> Result<serde_json::Value, ApiError> {
    let field = |f: &str| format!("messages[{i}].{f}");
    let content = match &m.content {
        None if m.role == Role::Assistant => String::new(),
        None => {
            return Err(ApiError::bad(
                field("content"),
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
    if m.tool_calls.is_some() && m.role != Role::Assistant {
        return Err(ApiError::bad(
            field("tool_calls"),
            "only assistant messages carry `tool_calls`",
        ));
    }
    if m.tool_call_id.is_some() != (m.role == Role::Tool) {
        return Err(ApiError::bad(
            field("tool_call_id"),
            "`tool` messages need `tool_call_id` (the id of the call they answer); other roles have none",
        ));
    }
    let mut v = match m.role {
        Role::System | Role::Developer => serde_json::json!({"role": "system", "content": content}),
        Role::User => serde_json::json!({"role": "user", "content": content}),
        Role::Assistant => {
            let calls = m.tool_calls.as_deref().unwrap_or_default();
            for (j, c) in calls.iter().enumerate() {
                if !tools::valid_name(&c.function.name) {
                    return Err(ApiError::bad(
                        format!("messages[{i}].tool_calls[{j}].function.name"),
                        format!("not a function name: {:?}", c.function.name),
                    ));
                }
                call_ids.push(c.id.clone());
            }
            if native_tools && !calls.is_empty() {
                let calls: Vec<serde_json::Value> = calls
                    .iter()
                    .map(|c| {
                        let args = serde_json::from_str::<serde_json::Value>(&c.function.arguments)
                            .unwrap_or_else(|_| c.function.arguments.clone().into());
                        serde_json::json!({"id": c.id, "type": "function",
                            "function": {"name": c.function.name, "arguments": args}})
                    })
                    .collect();
                serde_json::json!({"role": "assistant", "content": content, "tool_calls": calls})
            } else {
                serde_json::json!({"role": "assistant", "content": tools::render_calls(&content, calls)})
            }
        }
        Role::Tool => {
            let id = m.tool_call_id.as_deref().unwrap_or_default();
            if !call_ids.iter().any(|c| c == id) {
                return Err(ApiError::bad(
                    field("tool_call_id"),
                    format!("`{id}` is not the id of a call in an earlier assistant message"),
                ));
            }
            if native_tools {
                serde_json::json!({"role": "tool", "content": content, "tool_call_id": id})
            } else {
                serde_json::json!({"role": "user", "content": tools::render_result(&content)})
            }
        }
    };
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
    let msgs = messages_json(messages, engine.template_renders_tools())?;
    Ok(engine.chat_prompt(&msgs, None)?)
}

/// The messages as template input (`role`, `content`, optional `name`;
/// tool calls and results in the form the template expects:
/// `native_tools` when it renders them itself, else as text).
pub fn messages_json(
    messages: &[ChatMessage],
    native_tools: bool,
) -> Result<Vec<serde_json::Value>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad(
            "messages",
            "`messages` must contain at least one message",
        ));
    }
    let mut call_ids = Vec::new();
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| message_json(m, i, native_tools, &mut call_ids))
        .collect()
}

/// Offers `set` to the model: as template input for templates that
/// render tools, else as a system message (merged into the first one).
pub fn offer_tools(
    engine: &Engine,
    messages: &mut Vec<serde_json::Value>,
    set: &ToolSet,
) -> Option<serde_json::Value> {
    if engine.template_renders_tools() {
        return Some(set.template_extra());
    }
    let text = set.system_text();
    match messages.first_mut() {
        Some(m) if m["role"] == "system" => {
            let old = m["content"].as_str().unwrap_or_default();
            m["content"] = format!("{old}\n\n{text}").into();
        }
        _ => messages.insert(0, serde_json::json!({"role": "system", "content": text})),
    }
    None
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
        let (text, ids) = engine.chat_prompt(&v.messages, v.template_extra.as_ref())?;
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
    if let Some(t) = &r.tools
        && (t.is_empty() || t.len() > MAX_TOOLS)
    {
        return Err(ApiError::bad(
            "tools",
            format!("`tools` must list 1 to {MAX_TOOLS} functions (leave it out for none)"),
        ));
    }
    let tool_set = tools::tool_set(r.tools, r.tool_choice)?;
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
    let mut messages = messages_json(&r.messages, engine.template_renders_tools())?;
    let extra = tool_set
        .as_ref()
        .and_then(|t| offer_tools(engine, &mut messages, t));
    let (text, ids) = engine.chat_prompt(&messages, extra.as_ref())?;
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
    if let Some(forced) = tool_set.as_ref().and_then(ToolSet::constraint) {
        if v.constraint.is_some() {
            return Err(ApiError::bad(
                "tool_choice",
                "a forced tool call cannot be combined with `response_format` (the call's arguments already follow the function's schema)",
            ));
        }
        v.constraint = Some(forced);
    }
    v.tools = tool_set;
    v.template_extra = extra;
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

/// One model turn of a Responses API request: `messages` (tools offered
/// when `tools` is given, its constraint forcing a call), at most
/// `max_tokens`.
pub fn responses_turn(
    engine: &Engine,
    limits: &LimitsSection,
    mut messages: Vec<serde_json::Value>,
    tools: Option<&ToolSet>,
    max_tokens: usize,
    temperature: Option<f32>,
    top_p: Option<f32>,
) -> Result<ValidGeneration, ApiError> {
    let extra = tools.and_then(|t| offer_tools(engine, &mut messages, t));
    let (text, ids) = engine.chat_prompt(&messages, extra.as_ref())?;
    let c = Common {
        temperature,
        top_p,
        top_k: None,
        min_p: None,
        repetition_penalty: None,
        presence_penalty: None,
        frequency_penalty: None,
        seed: None,
        logit_bias: None,
        logprobs: None,
        n: None,
        max_tokens: None,
        max_tokens_field: "max_output_tokens",
        default_max_tokens: Some(max_tokens.max(1)),
    };
    let mut v = finish(
        engine,
        limits,
        c,
        vec![ids],
        vec![text],
        vec![],
        false,
        false,
        false,
    )?;
    v.messages = messages;
    v.constraint = tools.and_then(ToolSet::constraint);
    v.tools = tools.cloned();
    v.template_extra = extra;
    Ok(v)
}
