//! The Palisade inference engine: loads Llama-family models from GGUF files
//! or Hugging Face directories (memory-mapped), tokenizes and renders chat
//! templates like the reference implementations, and generates text on CPU
//! with our own kernels.
//!
//! The engine knows nothing of HTTP, WebAssembly or policy.
//!
//! ```no_run
//! use palisade_engine::{Engine, EngineOptions, GenerateRequest};
//! let engine = Engine::load(&EngineOptions { model: "model.gguf".into(), ..Default::default() })?;
//! let prompt = engine.tokenizer().encode("The capital of France is", true, false)?;
//! let req = GenerateRequest { prompt, max_tokens: 16, ..Default::default() };
//! for step in engine.generate(req)? {
//!     print!("{}", step?.text);
//! }
//! # Ok::<(), palisade_engine::EngineError>(())
//! ```

pub mod chat;
pub mod config;
pub mod constraint;
pub mod embed;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod hf;
mod kquant;
pub mod kv;
mod linear;
pub mod model;
pub mod sampling;
pub mod scheduler;
pub mod stop;
pub mod tensor;
pub mod testing;
pub mod tokenizer;

use std::path::{Path, PathBuf};

pub use chat::ChatTemplate;
pub use config::ModelConfig;
pub use constraint::Constraint;
pub use embed::EmbeddingModel;
pub use error::{EngineError, Result};
pub use generate::{FinishReason, GenerateRequest, Generation, Step};
pub use model::{BatchSeq, KvCache, Logits, Model, Workspace};
pub use palisade_kernels::pool::ThreadPool;
pub use sampling::{Sampled, SamplingParams};
pub use scheduler::{Output, Scheduler, SchedulerConfig, SchedulerStats, SeqId};
pub use tokenizer::Tokenizer;

/// How to load an engine.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// A GGUF file or a Hugging Face model directory.
    pub model: PathBuf,
    /// A `tokenizer.json` to use instead of the model's own.
    pub tokenizer: Option<PathBuf>,
    /// Compute threads (0: all cores).
    pub threads: usize,
    /// Cap on prompt + completion tokens (default: the model's trained
    /// context length).
    pub max_model_len: Option<usize>,
}

/// A loaded model with its tokenizer, chat template and compute threads.
pub struct Engine {
    model: Model,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    pool: ThreadPool,
    max_context: usize,
    name: String,
    /// Built on the first constrained request.
    grammar: std::sync::OnceLock<std::result::Result<llguidance::ParserFactory, String>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.model)
            .field("threads", &self.pool.threads())
            .finish()
    }
}

impl Engine {
    /// Loads the model, tokenizer and template.
    pub fn load(opts: &EngineOptions) -> Result<Self> {
        let path = &opts.model;
        let (model, tokenizer, template_src) = if path.is_dir() {
            let model = Model::load(path)?;
            let tok = Tokenizer::from_file(
                opts.tokenizer
                    .as_deref()
                    .unwrap_or(&path.join("tokenizer.json")),
            )?;
            (model, tok, hf_template(path))
        } else {
            hf::refuse_pickle(path)?;
            // Parsed once: the weights, the vocabulary and the template all
            // come from the same metadata.
            let g = gguf::GgufFile::open(path)?;
            let model = Model::from_gguf(&g, path)?;
            let tok = match &opts.tokenizer {
                Some(t) => Tokenizer::from_file(t)?,
                None => Tokenizer::from_gguf(&g)?,
            };
            let src = g
                .get("tokenizer.chat_template")
                .and_then(|v| v.as_str())
                .map(String::from);
            (model, tok, src)
        };
        if tokenizer.vocab_size() > model.config.vocab {
            return Err(EngineError::Tokenizer(format!(
                "the tokenizer has {} tokens but the model's embedding has only {} rows",
                tokenizer.vocab_size(),
                model.config.vocab
            )));
        }
        let text = |id: Option<u32>| id.map(|i| tokenizer.token_text(i)).unwrap_or_default();
        let template = match template_src {
            Some(src) => Some(ChatTemplate::new(
                &src,
                &text(tokenizer.bos),
                &text(tokenizer.eos),
            )?),
            None => None,
        };
        let max_context = opts
            .max_model_len
            .unwrap_or(model.config.context_length)
            .min(model.config.context_length)
            .max(1);
        let name = model_name(path);
        Ok(Engine {
            model,
            tokenizer,
            template,
            pool: ThreadPool::new(opts.threads),
            max_context,
            name,
            grammar: std::sync::OnceLock::new(),
        })
    }

    /// Starts generating; iterate the result for tokens.
    pub fn generate(&self, req: GenerateRequest) -> Result<Generation<'_>> {
        Generation::new(self, req)
    }

    /// The grammar parser factory (token trie over this tokenizer), built
    /// once on first use.
    pub(crate) fn parser_factory(&self) -> Result<&llguidance::ParserFactory> {
        self.grammar
            .get_or_init(|| {
                constraint::parser_factory(&self.tokenizer, self.model.config.vocab)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| EngineError::Tokenizer(e.clone()))
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Compute threads.
    pub fn pool(&self) -> &ThreadPool {
        &self.pool
    }

    /// Most prompt + completion tokens per sequence.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// A short name for the model (its file or directory name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the model's chat template renders a `tools` list itself.
    pub fn template_renders_tools(&self) -> bool {
        self.template
            .as_ref()
            .is_some_and(ChatTemplate::renders_tools)
    }

    /// Renders `messages` with the chat template and tokenizes the result
    /// (see [`ChatTemplate::render`]).
    pub fn chat_prompt(
        &self,
        messages: &[serde_json::Value],
        extra: Option<&serde_json::Value>,
    ) -> Result<(String, Vec<u32>)> {
        let t = self
            .template
            .as_ref()
            .ok_or_else(|| EngineError::Template("this model has no chat template".into()))?;
        let text = t.render(messages, true, extra)?;
        // A template that writes the BOS token itself must not get a second.
        let starts_with_bos = self
            .tokenizer
            .bos
            .is_some_and(|b| text.starts_with(&self.tokenizer.token_text(b)));
        let ids = self.tokenizer.encode(&text, !starts_with_bos, true)?;
        Ok((text, ids))
    }
}

fn hf_template(dir: &Path) -> Option<String> {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?)
            .ok()?;
    match &cfg["chat_template"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .or(list.first())
            .and_then(|t| t["template"].as_str())
            .map(String::from),
        _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
    }
}

fn model_name(path: &Path) -> String {
    let stem = if path.is_dir() {
        path.file_name()
    } else {
        path.file_stem()
    };
    stem.and_then(|s| s.to_str()).unwrap_or("model").to_string()
}
