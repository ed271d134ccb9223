//! Tool calling: the OpenAI `tools` / `tool_choice` types, how tools and
//! earlier calls are written into the prompt, the grammar that forces a
//! call, and the parser that turns the model's output back into
//! `tool_calls`.
//!
//! The wire format the model sees is the Hermes one most open models are
//! trained on: a call is `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
//! and a result is `<tool_response>...</tool_response>`. A model whose chat
//! template renders `tools` itself gets them as template input; for others
//! (SmolLM2) the server writes them into the system message.
//!
//! ```
//! use palisade::api::tools::{Function, ToolSet, Choice, parse_output};
//! let set = ToolSet {
//!     functions: vec![Function::new("add", "", serde_json::json!({"type": "object"}))],
//!     choice: Choice::Auto,
//! };
//! let out = parse_output(r#"<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>"#, &set);
//! assert_eq!(out.calls[0].name, "add");
//! assert_eq!(out.calls[0].arguments, r#"{"a":1}"#);
//! assert_eq!(out.content, None);
//! ```

use palisade_engine::Constraint;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::api::error::ApiError;

/// The only tool type of chat completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum FunctionType {
    /// A function the client runs.
    #[default]
    Function,
}

/// A function the model may call.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionDef {
    /// Name (letters, digits, `_` and `-`, at most 64).
    pub name: String,
    /// What it does (shown to the model).
    pub description: Option<String>,
    /// JSON schema of the arguments (an object schema; absent: none).
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
    /// Accepted for compatibility: forced calls always follow the schema.
    pub strict: Option<bool>,
}

/// One entry of `tools`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatTool {
    /// `function`.
    #[serde(rename = "type")]
    pub kind: FunctionType,
    /// The function.
    pub function: FunctionDef,
}

/// `tool_choice` as a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ToolChoiceMode {
    /// Never call a tool (the tools are not shown to the model).
    None,
    /// The model decides.
    Auto,
    /// The model must call one of the tools.
    Required,
}

/// `tool_choice.function`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamedFunction {
    /// The function to call.
    pub name: String,
}

/// `tool_choice` naming a function.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamedToolChoice {
    /// `function`.
    #[serde(rename = "type")]
    pub kind: FunctionType,
    /// Which function.
    pub function: NamedFunction,
}

/// `tool_choice`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ToolChoice {
    /// `none`, `auto` or `required`.
    Mode(ToolChoiceMode),
    /// One named function (the call is forced).
    Named(NamedToolChoice),
}

/// A function call: name and arguments as JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CalledFunction {
    /// The function.
    pub name: String,
    /// Its arguments, JSON text.
    pub arguments: String,
}

/// A tool call in an assistant message (request and response).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageToolCall {
    /// `call_...`; a `tool` message answers it by this id.
    pub id: String,
    /// `function`.
    #[serde(rename = "type", default)]
    pub kind: FunctionType,
    /// The call.
    pub function: CalledFunction,
}

/// A checked function.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Argument schema (an object schema).
    pub parameters: Value,
}

impl Function {
    /// A function from its parts.
    pub fn new(name: &str, description: &str, parameters: Value) -> Self {
        Function {
            name: name.into(),
            description: description.into(),
            parameters,
        }
    }
}

/// What the model must do with the tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Call one or answer in text.
    Auto,
    /// Call one of them (constrained).
    Required,
    /// Call `functions[i]` (constrained).
    Named(usize),
}

/// The tools of a request, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSet {
    /// The functions, in request order.
    pub functions: Vec<Function>,
    /// The choice.
    pub choice: Choice,
}

/// Whether `name` is a valid function name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Checks `tools` and `tool_choice` (`None` when no tool is offered).
pub fn tool_set(
    tools: Option<Vec<ChatTool>>,
    choice: Option<ToolChoice>,
) -> Result<Option<ToolSet>, ApiError> {
    let tools = tools.unwrap_or_default();
    let mut functions = Vec::with_capacity(tools.len());
    for (i, t) in tools.into_iter().enumerate() {
        let f = t.function;
        if !valid_name(&f.name) {
            return Err(ApiError::bad(
                format!("tools[{i}].function.name"),
                format!(
                    "must be 1 to 64 letters, digits, `_` or `-`, got {:?}",
                    f.name
                ),
            ));
        }
        if functions.iter().any(|g: &Function| g.name == f.name) {
            return Err(ApiError::bad(
                format!("tools[{i}].function.name"),
                format!("function `{}` is defined twice", f.name),
            ));
        }
        let parameters = match f.parameters {
            None => json!({"type": "object", "properties": {}}),
            Some(p) if p.is_object() => p,
            Some(p) => {
                return Err(ApiError::bad(
                    format!("tools[{i}].function.parameters"),
                    format!("must be a JSON schema object, got {p}"),
                ));
            }
        };
        functions.push(Function {
            name: f.name,
            description: f.description.unwrap_or_default(),
            parameters,
        });
    }
    let choice = match choice {
        None if functions.is_empty() => return Ok(None),
        None | Some(ToolChoice::Mode(ToolChoiceMode::Auto)) => Choice::Auto,
        Some(ToolChoice::Mode(ToolChoiceMode::None)) => return Ok(None),
        Some(ToolChoice::Mode(ToolChoiceMode::Required)) => Choice::Required,
        Some(ToolChoice::Named(n)) => {
            match functions.iter().position(|f| f.name == n.function.name) {
                Some(i) => Choice::Named(i),
                None => {
                    return Err(ApiError::bad(
                        "tool_choice.function.name",
                        format!("`{}` is not one of `tools`", n.function.name),
                    ));
                }
            }
        }
    };
    if functions.is_empty() {
        return Err(ApiError::bad(
            "tool_choice",
            "`tool_choice` needs at least one entry in `tools`",
        ));
    }
    Ok(Some(ToolSet { functions, choice }))
}

impl ToolSet {
    /// The system text that tells a model without tool support in its
    /// template what it may call and how.
    pub fn system_text(&self) -> String {
        let mut s = String::from(
            "You may call functions. To call one, reply with only\n<tool_call>\n{\"name\": <function name>, \"arguments\": <arguments as a JSON object>}\n</tool_call>\nThe result comes back in <tool_response></tool_response>.\nFunctions:\n",
        );
        for f in &self.functions {
            s.push_str(&self.function_json(f).to_string());
            s.push('\n');
        }
        s
    }

    fn function_json(&self, f: &Function) -> Value {
        json!({"name": f.name, "description": f.description, "parameters": f.parameters})
    }

    /// Template input for templates that render `tools` themselves.
    pub fn template_extra(&self) -> Value {
        let tools: Vec<Value> = self
            .functions
            .iter()
            .map(|f| json!({"type": "function", "function": self.function_json(f)}))
            .collect();
        json!({ "tools": tools })
    }

    /// The constraint forcing a call (`required` or a named function):
    /// the output is `{"name": ..., "arguments": ...}` with arguments
    /// matching the function's schema.
    pub fn constraint(&self) -> Option<Constraint> {
        let call = |f: &Function| {
            json!({
                "type": "object",
                "properties": {"name": {"const": f.name}, "arguments": f.parameters},
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        };
        match self.choice {
            Choice::Auto => None,
            Choice::Named(i) => Some(Constraint::JsonSchema(call(&self.functions[i]))),
            Choice::Required if self.functions.len() == 1 => {
                Some(Constraint::JsonSchema(call(&self.functions[0])))
            }
            Choice::Required => Some(Constraint::JsonSchema(
                json!({"anyOf": self.functions.iter().map(call).collect::<Vec<_>>()}),
            )),
        }
    }
}

/// The prompt text of an assistant turn that made `calls`.
pub fn render_calls(content: &str, calls: &[MessageToolCall]) -> String {
    let mut s = content.to_string();
    for c in calls {
        let args = serde_json::from_str::<Value>(&c.function.arguments)
            .unwrap_or_else(|_| Value::String(c.function.arguments.clone()));
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str("<tool_call>\n");
        s.push_str(&json!({"name": c.function.name, "arguments": args}).to_string());
        s.push_str("\n</tool_call>");
    }
    s
}

/// The prompt text of a tool result.
pub fn render_result(content: &str) -> String {
    format!("<tool_response>\n{content}\n</tool_response>")
}

/// A call parsed from the model's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCall {
    /// Function name (one of the tool set's).
    pub name: String,
    /// Arguments, compact JSON text.
    pub arguments: String,
}

/// The model's output split into text and calls.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    /// Text outside the calls (`None` when there is none).
    pub content: Option<String>,
    /// The calls, in order.
    pub calls: Vec<ParsedCall>,
}

fn call_of(v: &Value, set: &ToolSet) -> Option<ParsedCall> {
    let name = v.get("name")?.as_str()?;
    set.functions.iter().find(|f| f.name == name)?;
    let args = match v.get("arguments").or_else(|| v.get("parameters")) {
        None => json!({}),
        Some(Value::String(s)) => serde_json::from_str::<Value>(s).ok()?,
        Some(a) => a.clone(),
    };
    args.is_object().then(|| ParsedCall {
        name: name.to_string(),
        arguments: args.to_string(),
    })
}

/// Splits output into text and calls of `set`'s functions. A call is a
/// `<tool_call>` block holding `{"name", "arguments"}` (the closing tag may
/// be cut off at the end), or, for the whole output, that object alone (a
/// forced call). Blocks that are not a valid call of a known function stay
/// text.
pub fn parse_output(text: &str, set: &ToolSet) -> Parsed {
    if let Ok(v) = serde_json::from_str::<Value>(text.trim())
        && let Some(c) = call_of(&v, set)
    {
        return Parsed {
            content: None,
            calls: vec![c],
        };
    }
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    let mut calls = Vec::new();
    let mut content = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        let body_start = at + OPEN.len();
        let (body, block_end) = match rest[body_start..].find(CLOSE) {
            Some(end) => (
                &rest[body_start..body_start + end],
                body_start + end + CLOSE.len(),
            ),
            None => (&rest[body_start..], rest.len()),
        };
        match serde_json::from_str::<Value>(body.trim())
            .ok()
            .and_then(|v| call_of(&v, set))
        {
            Some(c) => {
                content.push_str(&rest[..at]);
                calls.push(c);
            }
            None => content.push_str(&rest[..block_end]),
        }
        rest = &rest[block_end..];
    }
    content.push_str(rest);
    let content = content.trim();
    Parsed {
        content: (!content.is_empty()).then(|| content.to_string()),
        calls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(choice: Choice) -> ToolSet {
        ToolSet {
            functions: vec![
                Function::new("get_weather", "weather", json!({"type": "object"})),
                Function::new("add", "sum", json!({"type": "object"})),
            ],
            choice,
        }
    }

    #[test]
    fn blocks_bare_objects_and_text_are_told_apart() {
        let s = set(Choice::Auto);
        let p = parse_output(
            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\n<tool_call>{\"name\": \"add\", \"arguments\": \"{\\\"a\\\": 2}\"}",
            &s,
        );
        assert_eq!(p.content.as_deref(), Some("Let me check."));
        assert_eq!(
            p.calls,
            [
                ParsedCall {
                    name: "get_weather".into(),
                    arguments: r#"{"city":"Oslo"}"#.into()
                },
                ParsedCall {
                    name: "add".into(),
                    arguments: r#"{"a":2}"#.into()
                }
            ]
        );
        let bare = parse_output(r#" {"name": "add", "arguments": {}} "#, &s);
        assert_eq!(bare.calls.len(), 1);
        assert_eq!(bare.content, None);
        // Unknown functions, broken JSON and non-object arguments stay text.
        for text in [
            "<tool_call>{\"name\": \"rm\", \"arguments\": {}}</tool_call>",
            "<tool_call>{\"name\": \"add\", \"arguments\": </tool_call>",
            "<tool_call>{\"name\": \"add\", \"arguments\": 3}</tool_call>",
            "just words",
        ] {
            let p = parse_output(text, &s);
            assert!(p.calls.is_empty(), "{text}");
            assert_eq!(p.content.as_deref(), Some(text.trim()), "{text}");
        }
    }

    #[test]
    fn choices_are_checked_and_forced_calls_constrained() {
        let tool = |name: &str| ChatTool {
            kind: FunctionType::Function,
            function: FunctionDef {
                name: name.into(),
                description: None,
                parameters: None,
                strict: None,
            },
        };
        assert_eq!(tool_set(None, None).unwrap(), None);
        assert_eq!(
            tool_set(
                Some(vec![tool("a")]),
                Some(ToolChoice::Mode(ToolChoiceMode::None))
            )
            .unwrap(),
            None
        );
        let named = |n: &str| {
            Some(ToolChoice::Named(NamedToolChoice {
                kind: FunctionType::Function,
                function: NamedFunction { name: n.into() },
            }))
        };
        let e = tool_set(Some(vec![tool("a")]), named("b")).unwrap_err();
        assert!(e.to_string().contains("`b`"), "{e}");
        let e = tool_set(Some(vec![tool("a"), tool("a")]), None).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e = tool_set(Some(vec![tool("a b")]), None).unwrap_err();
        assert!(e.to_string().contains("letters"), "{e}");
        let e = tool_set(None, Some(ToolChoice::Mode(ToolChoiceMode::Required))).unwrap_err();
        assert!(e.to_string().contains("at least one"), "{e}");
        let s = tool_set(Some(vec![tool("a"), tool("b")]), named("b"))
            .unwrap()
            .unwrap();
        assert_eq!(s.choice, Choice::Named(1));
        let Some(Constraint::JsonSchema(c)) = s.constraint() else {
            panic!("named choice must be constrained")
        };
        assert_eq!(c["properties"]["name"]["const"], "b");
        assert!(set(Choice::Auto).constraint().is_none());
        let Some(Constraint::JsonSchema(any)) = set(Choice::Required).constraint() else {
            panic!("required must be constrained")
        };
        assert_eq!(any["anyOf"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn earlier_calls_render_as_the_model_writes_them() {
        let call = MessageToolCall {
            id: "call_1".into(),
            kind: FunctionType::Function,
            function: CalledFunction {
                name: "add".into(),
                arguments: r#"{"a": 1}"#.into(),
            },
        };
        let text = render_calls("", std::slice::from_ref(&call));
        assert_eq!(
            text,
            "<tool_call>\n{\"name\":\"add\",\"arguments\":{\"a\":1}}\n</tool_call>"
        );
        let back = parse_output(&text, &set(Choice::Auto));
        assert_eq!(back.calls[0].arguments, r#"{"a":1}"#);
    }
}
