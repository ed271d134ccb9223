//! OpenAI API request and response types. Requests are strict: unknown
//! fields and wrong types are rejected with the field named. The OpenAPI
//! document is generated from these types.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::tools::{ChatTool, MessageToolCall, ToolChoice};

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopSpec {
    /// A single stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// System instructions.
    System,
    /// Developer instructions (treated as system).
    Developer,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool result.
    Tool,
}

/// One part of a multi-part message content.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ContentPart {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
}

/// Message content: a string or a list of text parts.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Text parts, concatenated.
    Parts(Vec<ContentPart>),
}

/// A chat message.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// Author role.
    pub role: Role,
    /// Content (may be null for an assistant message).
    pub content: Option<Content>,
    /// Optional author name.
    pub name: Option<String>,
    /// Calls the assistant made (assistant messages).
    pub tool_calls: Option<Vec<MessageToolCall>>,
    /// The call a `tool` message answers.
    pub tool_call_id: Option<String>,
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a final chunk with token usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// `POST /v1/chat/completions` request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatCompletionRequest {
    /// Model id (see `GET /v1/models`).
    pub model: String,
    /// The conversation, at least one message.
    pub messages: Vec<ChatMessage>,
    /// Most tokens to generate (deprecated name).
    pub max_tokens: Option<u32>,
    /// Most tokens to generate.
    pub max_completion_tokens: Option<u32>,
    /// 0 to 2; 0 is greedy.
    pub temperature: Option<f32>,
    /// Nucleus sampling, (0, 1].
    pub top_p: Option<f32>,
    /// Choices to generate.
    pub n: Option<u32>,
    /// Stream chunks as server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Up to 4 stop strings.
    pub stop: Option<StopSpec>,
    /// Seed for reproducible sampling.
    pub seed: Option<i64>,
    /// -2 to 2.
    pub presence_penalty: Option<f32>,
    /// -2 to 2.
    pub frequency_penalty: Option<f32>,
    /// Return log-probabilities of the output tokens.
    pub logprobs: Option<bool>,
    /// 0 to 20 alternatives per token (needs `logprobs`).
    pub top_logprobs: Option<u32>,
    /// Token id (as a string) to bias, -100 to 100.
    pub logit_bias: Option<HashMap<String, f32>>,
    /// End-user id (recorded, not used for generation).
    pub user: Option<String>,
    /// Extension: keep the k most likely tokens.
    pub top_k: Option<u32>,
    /// Extension: drop tokens below min_p times the top probability.
    pub min_p: Option<f32>,
    /// Extension: llama.cpp-style repetition penalty.
    pub repetition_penalty: Option<f32>,
    /// Functions the model may call (at most 128).
    pub tools: Option<Vec<ChatTool>>,
    /// `none`, `auto` (the default with tools), `required`, or a named
    /// function; the last two constrain the output to a valid call.
    pub tool_choice: Option<ToolChoice>,
    /// Whether the model may make several calls in one turn (accepted;
    /// every call the model writes is returned).
    pub parallel_tool_calls: Option<bool>,
    /// Structured output: plain text, any JSON object, or JSON matching a
    /// schema (generation is constrained to it).
    pub response_format: Option<ResponseFormat>,
}

/// `response_format`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseFormat {
    /// Free text (the default).
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching `json_schema.schema`.
    JsonSchema {
        /// The schema and its name.
        json_schema: JsonSchemaFormat,
    },
}

/// `response_format.json_schema`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonSchemaFormat {
    /// Name of the format (letters, digits, `_` and `-`, at most 64).
    pub name: String,
    /// What the format is for.
    pub description: Option<String>,
    /// The JSON schema (an object); absent means any JSON.
    #[schema(value_type = Option<Object>)]
    pub schema: Option<serde_json::Value>,
    /// Accepted for compatibility: output always follows the schema.
    pub strict: Option<bool>,
}

/// `prompt` of a completion: text, texts, token ids, or lists of ids.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PromptInput {
    /// One text.
    Text(String),
    /// Several texts (one completion each).
    Texts(Vec<String>),
    /// One prompt as token ids.
    Tokens(Vec<u32>),
    /// Several prompts as token ids.
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions` request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    /// Model id.
    pub model: String,
    /// The prompt(s).
    pub prompt: PromptInput,
    /// Most tokens to generate (default 16).
    pub max_tokens: Option<u32>,
    /// 0 to 2; 0 is greedy.
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Choices per prompt.
    pub n: Option<u32>,
    /// Stream chunks as server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Up to 4 stop strings.
    pub stop: Option<StopSpec>,
    /// Seed.
    pub seed: Option<i64>,
    /// -2 to 2.
    pub presence_penalty: Option<f32>,
    /// -2 to 2.
    pub frequency_penalty: Option<f32>,
    /// 0 to 5 alternatives per token.
    pub logprobs: Option<u32>,
    /// Echo the prompt before the completion.
    pub echo: Option<bool>,
    /// Must equal `n` if given.
    pub best_of: Option<u32>,
    /// Not supported (insertion).
    pub suffix: Option<String>,
    /// Token id (as a string) to bias.
    pub logit_bias: Option<HashMap<String, f32>>,
    /// End-user id.
    pub user: Option<String>,
    /// Extension: top-k.
    pub top_k: Option<u32>,
    /// Extension: min-p.
    pub min_p: Option<f32>,
    /// Extension: repetition penalty.
    pub repetition_penalty: Option<f32>,
}

/// Token usage.
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens (all prompts).
    pub prompt_tokens: u32,
    /// Generated tokens (all choices).
    pub completion_tokens: u32,
    /// Sum.
    pub total_tokens: u32,
}

/// An alternative token with its log-probability.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopLogprob {
    /// Token text.
    pub token: String,
    /// Natural log of its probability.
    pub logprob: f32,
    /// The token's UTF-8 bytes.
    pub bytes: Vec<u8>,
}

/// One output token's log-probability (chat format).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenLogprob {
    /// Token text.
    pub token: String,
    /// Natural log of its probability.
    pub logprob: f32,
    /// The token's bytes.
    pub bytes: Vec<u8>,
    /// Most likely alternatives.
    pub top_logprobs: Vec<TopLogprob>,
}

/// `choices[].logprobs` of a chat completion.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ChoiceLogprobs {
    /// Per output token.
    pub content: Vec<TokenLogprob>,
}

/// The assistant's message.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: Role,
    /// The generated text (null when the message is only tool calls).
    pub content: Option<String>,
    /// The calls the model made (`finish_reason` is then `tool_calls`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<MessageToolCall>,
}

/// A tool call in a stream delta (sent whole, in one chunk).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeltaToolCall {
    /// Position among the message's calls.
    pub index: u32,
    /// `call_...`.
    pub id: String,
    /// `function`.
    #[serde(rename = "type")]
    pub kind: crate::api::tools::FunctionType,
    /// Name and arguments.
    pub function: crate::api::tools::CalledFunction,
}

/// One chat choice.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatChoice {
    /// Position in `choices`.
    pub index: u32,
    /// The message.
    pub message: AssistantMessage,
    /// Log-probabilities if requested.
    pub logprobs: Option<ChoiceLogprobs>,
    /// `stop` or `length`.
    pub finish_reason: String,
}

/// `POST /v1/chat/completions` response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-...`.
    pub id: String,
    /// `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Model id.
    pub model: String,
    /// Build and model identifier.
    pub system_fingerprint: String,
    /// The choices.
    pub choices: Vec<ChatChoice>,
    /// Token usage.
    pub usage: Usage,
}

/// A streamed delta.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ChatDelta {
    /// `assistant` on a choice's first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Tool calls (each whole, in the choice's last chunks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<DeltaToolCall>>,
}

/// One choice in a stream chunk.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatChunkChoice {
    /// Choice index.
    pub index: u32,
    /// The delta.
    pub delta: ChatDelta,
    /// Log-probabilities of this chunk's tokens.
    pub logprobs: Option<ChoiceLogprobs>,
    /// Set on the choice's last chunk.
    pub finish_reason: Option<String>,
}

/// A `chat.completion.chunk` event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    /// Same for all chunks of a response.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Model id.
    pub model: String,
    /// Build and model identifier.
    pub system_fingerprint: String,
    /// Choices (empty in the usage chunk).
    pub choices: Vec<ChatChunkChoice>,
    /// Usage, in the final chunk when `include_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// `choices[].logprobs` of a text completion (legacy format).
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct CompletionLogprobs {
    /// Token texts.
    pub tokens: Vec<String>,
    /// Their log-probabilities.
    pub token_logprobs: Vec<f32>,
    /// Alternatives per token.
    pub top_logprobs: Vec<HashMap<String, f32>>,
    /// Character offset of each token in the choice text.
    pub text_offset: Vec<u32>,
}

/// One text completion choice.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CompletionChoice {
    /// Position in `choices`.
    pub index: u32,
    /// Generated text (with the prompt when `echo`).
    pub text: String,
    /// Log-probabilities if requested.
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop` or `length` (null in intermediate stream chunks).
    pub finish_reason: Option<String>,
}

/// `POST /v1/completions` response and stream chunk.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Completion {
    /// `cmpl-...`.
    pub id: String,
    /// `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Model id.
    pub model: String,
    /// Build and model identifier.
    pub system_fingerprint: String,
    /// The choices.
    pub choices: Vec<CompletionChoice>,
    /// Usage (in streams: the final chunk, when `include_usage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// `GET /v1/models/{id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelCard {
    /// Model id.
    pub id: String,
    /// `model`.
    pub object: &'static str,
    /// Unix seconds when the server loaded it.
    pub created: u64,
    /// `palisade`.
    pub owned_by: &'static str,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelList {
    /// `list`.
    pub object: &'static str,
    /// The models.
    pub data: Vec<ModelCard>,
}

/// `input` of an embeddings request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One input as token ids.
    Tokens(Vec<u32>),
    /// Several inputs as token ids.
    TokenLists(Vec<Vec<u32>>),
}

/// `float` or `base64` (little-endian f32).
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    /// JSON numbers.
    #[default]
    Float,
    /// Base64 of little-endian f32 values.
    Base64,
}

/// `POST /v1/embeddings` request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingRequest {
    /// Embedding model id.
    pub model: String,
    /// What to embed.
    pub input: EmbeddingInput,
    /// Output encoding.
    pub encoding_format: Option<EncodingFormat>,
    /// Must equal the model's dimension if given.
    pub dimensions: Option<u32>,
    /// End-user id.
    pub user: Option<String>,
}

/// An embedding vector, as floats or base64.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    /// Floats.
    Float(Vec<f32>),
    /// Base64 of little-endian f32.
    Base64(String),
}

/// One embedding.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EmbeddingData {
    /// `embedding`.
    pub object: &'static str,
    /// Input position.
    pub index: u32,
    /// The vector.
    pub embedding: EmbeddingVector,
}

/// Embedding usage.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct EmbeddingUsage {
    /// Tokens in all inputs.
    pub prompt_tokens: u32,
    /// Same.
    pub total_tokens: u32,
}

/// `POST /v1/embeddings` response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EmbeddingResponse {
    /// `list`.
    pub object: &'static str,
    /// One per input.
    pub data: Vec<EmbeddingData>,
    /// Model id.
    pub model: String,
    /// Usage.
    pub usage: EmbeddingUsage,
}

/// `POST /tokenize` request: a prompt, or chat messages (rendered with the
/// chat template).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    /// Model id (optional).
    pub model: Option<String>,
    /// Raw text.
    pub prompt: Option<String>,
    /// Chat messages.
    pub messages: Option<Vec<ChatMessage>>,
    /// Prepend BOS if the model uses one (raw text only; default true).
    pub add_special_tokens: Option<bool>,
}

/// `POST /tokenize` response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenizeResponse {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// How many.
    pub count: usize,
    /// The context window.
    pub max_model_len: usize,
}

/// `POST /detokenize` request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    /// Model id (optional).
    pub model: Option<String>,
    /// Token ids.
    pub tokens: Vec<u32>,
}

/// `POST /detokenize` response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DetokenizeResponse {
    /// The text.
    pub prompt: String,
}

/// `GET /health` and `GET /ready`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Status {
    /// `ok`, `loading` or `draining`.
    pub status: &'static str,
}
