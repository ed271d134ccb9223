//! The OpenAI Responses API (`POST /v1/responses`), core subset: `input`
//! (text or message, function call and function call output items),
//! `instructions`, `tools` (functions the client runs, and the built-in
//! `code_interpreter` the server runs in its sandbox when the policy grants
//! it), `tool_choice`, `max_output_tokens`, sampling, and streaming events.
//! Nothing is stored: `previous_response_id` is refused.
//!
//! ```
//! use palisade::api::responses::{ResponsesRequest, conversation};
//! let r: ResponsesRequest = serde_json::from_value(serde_json::json!({
//!     "model": "m", "instructions": "Be brief.", "input": "Hi"
//! })).unwrap();
//! let msgs = conversation(&r).unwrap();
//! assert_eq!(msgs[0]["role"], "system");
//! assert_eq!(msgs[1]["content"], "Hi");
//! ```

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::api::error::ApiError;
use crate::api::tools;

/// `POST /v1/responses` request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponsesRequest {
    /// Model id.
    pub model: String,
    /// A user message, or a list of input items.
    #[schema(value_type = Object)]
    pub input: Value,
    /// A system message put first.
    pub instructions: Option<String>,
    /// `{"type": "function", "name", "description", "parameters"}` (run by
    /// the client) and `{"type": "code_interpreter"}` (run by the server).
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    /// `auto`, `none`, `required`, `{"type": "function", "name"}` or
    /// `{"type": "code_interpreter"}`.
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// Most tokens generated over all turns.
    pub max_output_tokens: Option<u32>,
    /// Most server tool calls (the policy's `max_tool_steps` caps it).
    pub max_tool_calls: Option<u32>,
    /// 0 to 2.
    pub temperature: Option<f32>,
    /// (0, 1].
    pub top_p: Option<f32>,
    /// Stream events.
    pub stream: Option<bool>,
    /// Accepted; responses are never stored.
    pub store: Option<bool>,
    /// Refused: nothing is stored to continue from.
    pub previous_response_id: Option<String>,
    /// Returned as given.
    pub metadata: Option<HashMap<String, String>>,
    /// End-user id.
    pub user: Option<String>,
    /// Accepted (every call the model writes is run or returned).
    pub parallel_tool_calls: Option<bool>,
}

/// The built-in tool type the server runs.
pub const CODE_INTERPRETER: &str = "code_interpreter";

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq)]
pub enum OfferedTool {
    /// The client runs it (the call is returned as a `function_call`).
    Function(tools::Function),
    /// The server runs it (built-in `code_interpreter`).
    Server,
}

fn text_of(content: &Value, field: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for (k, p) in parts.iter().enumerate() {
                match (p["type"].as_str(), p["text"].as_str()) {
                    (Some("input_text" | "output_text" | "text"), Some(t)) => out.push_str(t),
                    _ => {
                        return Err(ApiError::bad(
                            format!("{field}[{k}]"),
                            "only `input_text` and `output_text` parts are supported",
                        ));
                    }
                }
            }
            Ok(out)
        }
        _ => Err(ApiError::bad(
            field,
            "must be a string or a list of text parts",
        )),
    }
}

fn str_field<'a>(item: &'a Value, key: &str, at: &str) -> Result<&'a str, ApiError> {
    item[key]
        .as_str()
        .ok_or_else(|| ApiError::bad(format!("{at}.{key}"), format!("`{key}` must be a string")))
}

/// The conversation as chat template messages: `instructions`, then the
/// input items (function calls and their outputs written as the model
/// writes them).
pub fn conversation(r: &ResponsesRequest) -> Result<Vec<Value>, ApiError> {
    if r.previous_response_id.is_some() {
        return Err(ApiError::bad(
            "previous_response_id",
            "this server stores no responses; send the whole conversation in `input`",
        ));
    }
    let mut out = Vec::new();
    if let Some(i) = &r.instructions {
        out.push(json!({"role": "system", "content": i}));
    }
    let items = match &r.input {
        Value::String(s) => {
            out.push(json!({"role": "user", "content": s}));
            return Ok(out);
        }
        Value::Array(items) if !items.is_empty() => items,
        _ => {
            return Err(ApiError::bad(
                "input",
                "`input` must be a string or a non-empty list of items",
            ));
        }
    };
    let mut call_ids: Vec<&str> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        match item["type"].as_str().unwrap_or("message") {
            "message" => {
                let role = match item["role"].as_str() {
                    Some("user") => "user",
                    Some("system" | "developer") => "system",
                    Some("assistant") => "assistant",
                    other => {
                        return Err(ApiError::bad(
                            format!("{at}.role"),
                            format!("must be user, system, developer or assistant, got {other:?}"),
                        ));
                    }
                };
                let content = text_of(&item["content"], &format!("{at}.content"))?;
                out.push(json!({"role": role, "content": content}));
            }
            "function_call" => {
                let call = tools::MessageToolCall {
                    id: str_field(item, "call_id", &at)?.to_string(),
                    kind: tools::FunctionType::Function,
                    function: tools::CalledFunction {
                        name: str_field(item, "name", &at)?.to_string(),
                        arguments: str_field(item, "arguments", &at)?.to_string(),
                    },
                };
                call_ids.push(str_field(item, "call_id", &at)?);
                out.push(json!({"role": "assistant", "content": tools::render_calls("", &[call])}));
            }
            "function_call_output" => {
                let id = str_field(item, "call_id", &at)?;
                if !call_ids.contains(&id) {
                    return Err(ApiError::bad(
                        format!("{at}.call_id"),
                        format!("`{id}` is not the call_id of an earlier function_call item"),
                    ));
                }
                let output = str_field(item, "output", &at)?;
                out.push(json!({"role": "user", "content": tools::render_result(output)}));
            }
            other => {
                return Err(ApiError::bad(
                    format!("{at}.type"),
                    format!(
                        "`{other}` items are not supported (message, function_call, function_call_output are)"
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// The tools of the request (`None` when no tool is offered) and which
/// must be called on the first turn (`tool_choice`).
pub fn offered_tools(
    r: &ResponsesRequest,
) -> Result<(Vec<(String, OfferedTool)>, tools::Choice), ApiError> {
    let mut out: Vec<(String, OfferedTool)> = Vec::new();
    for (i, t) in r.tools.iter().flatten().enumerate() {
        let at = format!("tools[{i}]");
        let (name, tool) = match t["type"].as_str() {
            Some("function") => {
                let name = str_field(t, "name", &at)?;
                if !tools::valid_name(name) || name == CODE_INTERPRETER {
                    return Err(ApiError::bad(
                        format!("{at}.name"),
                        format!(
                            "must be 1 to 64 letters, digits, `_` or `-` (and not `{CODE_INTERPRETER}`), got {name:?}"
                        ),
                    ));
                }
                let parameters = match &t["parameters"] {
                    Value::Null => json!({"type": "object", "properties": {}}),
                    p if p.is_object() => p.clone(),
                    p => {
                        return Err(ApiError::bad(
                            format!("{at}.parameters"),
                            format!("must be a JSON schema object, got {p}"),
                        ));
                    }
                };
                let description = t["description"].as_str().unwrap_or_default();
                (
                    name.to_string(),
                    OfferedTool::Function(tools::Function::new(name, description, parameters)),
                )
            }
            Some(CODE_INTERPRETER) => (CODE_INTERPRETER.to_string(), OfferedTool::Server),
            other => {
                return Err(ApiError::bad(
                    format!("{at}.type"),
                    format!(
                        "tool type {other:?} is not supported (function and code_interpreter are)"
                    ),
                ));
            }
        };
        if out.iter().any(|(n, _)| *n == name) {
            return Err(ApiError::bad(at, format!("tool `{name}` is listed twice")));
        }
        out.push((name, tool));
    }
    let position = |name: &str| {
        out.iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| ApiError::bad("tool_choice", format!("`{name}` is not one of `tools`")))
    };
    let choice = match &r.tool_choice {
        None => tools::Choice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => tools::Choice::Auto,
            "required" => tools::Choice::Required,
            "none" => return Ok((vec![], tools::Choice::Auto)),
            other => {
                return Err(ApiError::bad(
                    "tool_choice",
                    format!("must be auto, none, required or a tool, got {other:?}"),
                ));
            }
        },
        Some(v) => match (v["type"].as_str(), v["name"].as_str()) {
            (Some("function"), Some(n)) => tools::Choice::Named(position(n)?),
            (Some(CODE_INTERPRETER), _) => tools::Choice::Named(position(CODE_INTERPRETER)?),
            _ => {
                return Err(ApiError::bad(
                    "tool_choice",
                    format!("not a tool choice: {v}"),
                ));
            }
        },
    };
    if out.is_empty() && choice != tools::Choice::Auto {
        return Err(ApiError::bad(
            "tool_choice",
            "`tool_choice` needs at least one entry in `tools`",
        ));
    }
    Ok((out, choice))
}

/// Token usage of a response.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ResponseUsage {
    /// Prompt tokens over all turns.
    pub input_tokens: u32,
    /// `{"cached_tokens": 0}`.
    #[schema(value_type = Object)]
    pub input_tokens_details: Value,
    /// Generated tokens over all turns.
    pub output_tokens: u32,
    /// `{"reasoning_tokens": 0}`.
    #[schema(value_type = Object)]
    pub output_tokens_details: Value,
    /// Sum.
    pub total_tokens: u32,
}

impl ResponseUsage {
    /// Usage from token counts.
    pub fn new(input: usize, output: usize) -> Self {
        ResponseUsage {
            input_tokens: input as u32,
            input_tokens_details: json!({"cached_tokens": 0}),
            output_tokens: output as u32,
            output_tokens_details: json!({"reasoning_tokens": 0}),
            total_tokens: (input + output) as u32,
        }
    }
}

/// A `response` object.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResponseObject {
    /// `resp_...`.
    pub id: String,
    /// `response`.
    pub object: &'static str,
    /// Unix seconds.
    pub created_at: u64,
    /// `in_progress`, `completed`, `incomplete` or `failed`.
    pub status: &'static str,
    /// Why it is incomplete (`{"reason": "max_output_tokens"}`).
    #[schema(value_type = Option<Object>)]
    pub incomplete_details: Option<Value>,
    /// Error, if failed.
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    /// The request's instructions.
    pub instructions: Option<String>,
    /// The request's limit.
    pub max_output_tokens: Option<u32>,
    /// Model id.
    pub model: String,
    /// Messages, function calls and code interpreter calls, in order.
    #[schema(value_type = Vec<Object>)]
    pub output: Vec<Value>,
    /// Always true here.
    pub parallel_tool_calls: bool,
    /// Sampling temperature used.
    pub temperature: f32,
    /// Nucleus sampling used.
    pub top_p: f32,
    /// The request's tool choice.
    #[schema(value_type = Object)]
    pub tool_choice: Value,
    /// The request's tools.
    #[schema(value_type = Vec<Object>)]
    pub tools: Vec<Value>,
    /// `{"format": {"type": "text"}}`.
    #[schema(value_type = Object)]
    pub text: Value,
    /// `disabled`.
    pub truncation: &'static str,
    /// The request's metadata.
    pub metadata: HashMap<String, String>,
    /// End-user id.
    pub user: Option<String>,
    /// Never stored.
    pub store: bool,
    /// Token usage (absent while in progress).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<ResponseUsage>,
}
