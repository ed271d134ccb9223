//! `POST /v1/chat/completions` and `POST /v1/completions`, streaming (SSE)
//! and not. Both go through the same path: validate, take a slot, submit
//! one engine sequence per choice, then either collect or stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Extension;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::sse::{Event, Sse};
use futures_util::StreamExt;
use palisade_engine::{Engine, Sampled};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::guard::Scope;
use super::{ApiResult, AppState, json};
use crate::api::ApiError;
use crate::api::json::StrictJson;
use crate::api::tools::{self, MessageToolCall};
use crate::api::types::*;
use crate::api::validate::{self, ValidGeneration};
use crate::plugins::bindings::shared::palisade::plugin::types::{
    Message, Principal, RequestContext, Role as PRole, Sampling,
};
use crate::plugins::pipeline::{OutputChain, OutputStop};
use crate::scheduler::SeqEvent;

/// Chat or text completion.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

/// `POST /v1/chat/completions`.
#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatCompletionRequest,
    responses((status = 200, description = "a completion, or (`stream: true`) server-sent events each carrying a ChatCompletionChunk, then `data: [DONE]`",
                content((ChatCompletion = "application/json"), (String = "text/event-stream"))),
              (status = 400, description = "invalid request"), (status = 404, description = "unknown model"),
              (status = 429, description = "busy"), (status = 503, description = "loading or draining")))]
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    StrictJson(req): StrictJson<ChatCompletionRequest>,
) -> ApiResult {
    let start = Instant::now();
    let l = state.loaded()?;
    if req.model != l.model_name {
        return Err(ApiError::ModelNotFound(req.model));
    }
    let valid = validate::chat(&l.engine, &state.config.limits, req)?;
    run(state.clone(), scope, valid, Kind::Chat, start).await
}

/// `POST /v1/completions`.
#[utoipa::path(post, path = "/v1/completions", request_body = CompletionRequest,
    responses((status = 200, description = "a completion, or (`stream: true`) server-sent events each carrying a Completion, then `data: [DONE]`",
                content((Completion = "application/json"), (String = "text/event-stream"))),
              (status = 400, description = "invalid request"), (status = 404, description = "unknown model")))]
pub async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    StrictJson(req): StrictJson<CompletionRequest>,
) -> ApiResult {
    let start = Instant::now();
    let l = state.loaded()?;
    if req.model != l.model_name {
        return Err(ApiError::ModelNotFound(req.model));
    }
    let valid = validate::completion(&l.engine, &state.config.limits, req)?;
    run(state.clone(), scope, valid, Kind::Text, start).await
}

/// The read-only view admission plugins get.
pub(super) fn request_context(scope: &Scope, v: &ValidGeneration, model: &str) -> RequestContext {
    let principal = scope.principal.clone().unwrap_or(Principal {
        id: "anonymous".into(),
        tenant: String::new(),
        scopes: vec![],
        labels: vec![],
    });
    let messages = v
        .messages
        .iter()
        .map(|m| Message {
            role: match m["role"].as_str() {
                Some("system") => PRole::System,
                Some("assistant") => PRole::Assistant,
                Some("tool") => PRole::Tool,
                _ => PRole::User,
            },
            content: m["content"].as_str().unwrap_or_default().to_string(),
        })
        .collect();
    RequestContext {
        principal,
        route: scope.route.clone(),
        model: model.to_string(),
        messages,
        prompts: if v.messages.is_empty() {
            v.prompt_texts.clone()
        } else {
            vec![]
        },
        prompt_tokens: v.prompt_tokens() as u32,
        max_tokens: v.max_tokens as u32,
        n: v.n as u32,
        sampling: Sampling {
            temperature: v.sampling.temperature,
            top_p: v.sampling.top_p,
            seed: v.sampling.seed,
            presence_penalty: v.sampling.presence_penalty,
            frequency_penalty: v.sampling.frequency_penalty,
        },
        client_addr: scope.client.clone(),
        request_id: scope.request_id.clone(),
    }
}

struct Ctx {
    scope: Scope,
    admitted: Option<RequestContext>,
    state: Arc<AppState>,
    engine: Arc<Engine>,
    valid: ValidGeneration,
    kind: Kind,
    id: String,
    model: String,
    start: Instant,
}

async fn run(
    state: Arc<AppState>,
    scope: Scope,
    mut valid: ValidGeneration,
    kind: Kind,
    start: Instant,
) -> ApiResult {
    let l = state.loaded()?;
    let mut admitted = None;
    if !scope.rule.admission.is_empty() {
        let ctx = request_context(&scope, &valid, &l.model_name);
        let mut recs = Vec::new();
        let r = scope.pipeline.admit(&scope.rule, &ctx, &mut recs);
        scope.add_records(recs);
        // Settlement (`completed`) gets the context the stages admitted,
        // so reservations made from it cancel exactly.
        admitted = Some(ctx);
        for rw in r? {
            validate::apply_rewrite(
                &l.engine,
                &mut valid,
                rw.max_tokens,
                rw.temperature,
                rw.prepend_system,
            )
            .inspect_err(|_| settle_unused(&scope, admitted.as_ref()))?;
        }
    }
    let started = async {
        let chain = scope.pipeline.output_chain(&scope.rule)?;
        let permit = state.acquire_slot().await?;
        let rxs = l.handle.submit(
            (0..valid.choices())
                .map(|i| valid.engine_request(i))
                .collect(),
        )?;
        Ok::<_, ApiError>((chain, permit, rxs))
    }
    .await;
    let (chain, permit, rxs) = started.inspect_err(|_| settle_unused(&scope, admitted.as_ref()))?;
    state
        .metrics
        .prompt_tokens
        .fetch_add(valid.prompt_tokens() as u64, Ordering::Relaxed);
    let id = state.new_id(if kind == Kind::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    });
    let ctx = Ctx {
        scope,
        admitted,
        engine: l.engine.clone(),
        model: l.model_name.clone(),
        state: state.clone(),
        valid,
        kind,
        id,
        start,
    };
    if ctx.valid.stream {
        ctx.scope.audited.store(true, Ordering::Relaxed); // written when the stream ends
        Ok(stream(ctx, rxs, permit, chain))
    } else {
        collect(ctx, rxs, permit, chain).await
    }
}

/// Tells the admission stages a request they admitted will not run.
pub(super) fn settle_unused(scope: &Scope, admitted: Option<&RequestContext>) {
    if let Some(ctx) = admitted {
        scope.pipeline.completed(&scope.rule, ctx, 0);
    }
}

/// Per-choice progress.
#[derive(Default)]
struct ChoiceState {
    text: String,
    tokens: Vec<Sampled>,
    finish: Option<String>,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Ctx {
    fn created(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn observe_token(&self, c: &mut ChoiceState, any_first: &mut bool) {
        let now = Instant::now();
        if !*any_first {
            *any_first = true;
            self.state
                .metrics
                .ttft
                .observe(now.duration_since(self.start).as_secs_f64());
        }
        if let Some(last) = c.last {
            self.state
                .metrics
                .tpot
                .observe(now.duration_since(last).as_secs_f64());
        }
        c.first.get_or_insert(now);
        c.last = Some(now);
        self.state
            .metrics
            .completion_tokens
            .fetch_add(1, Ordering::Relaxed);
    }

    fn chat_logprobs(&self, tokens: &[Sampled]) -> Option<ChoiceLogprobs> {
        self.valid.sampling.logprobs?;
        let tok = self.engine.tokenizer();
        let entry = |id: u32, lp: f32| TopLogprob {
            token: tok.token_text(id),
            logprob: lp,
            bytes: tok.token_bytes(id).to_vec(),
        };
        Some(ChoiceLogprobs {
            content: tokens
                .iter()
                .map(|s| {
                    let e = entry(s.token, s.logprob.unwrap_or(0.0));
                    TokenLogprob {
                        token: e.token,
                        logprob: e.logprob,
                        bytes: e.bytes,
                        top_logprobs: s.top.iter().map(|&(t, lp)| entry(t, lp)).collect(),
                    }
                })
                .collect(),
        })
    }

    fn text_logprobs(&self, tokens: &[Sampled], offset: usize) -> Option<CompletionLogprobs> {
        self.valid.sampling.logprobs?;
        let tok = self.engine.tokenizer();
        let mut out = CompletionLogprobs::default();
        let mut at = offset;
        for s in tokens {
            let t = tok.token_text(s.token);
            out.text_offset.push(at as u32);
            at += t.len();
            out.tokens.push(t);
            out.token_logprobs.push(s.logprob.unwrap_or(0.0));
            out.top_logprobs.push(
                s.top
                    .iter()
                    .map(|&(id, lp)| (tok.token_text(id), lp))
                    .collect(),
            );
        }
        Some(out)
    }

    /// The assistant message of a finished choice: its text, or (with
    /// tools) the calls parsed from it and the text around them.
    fn message_parts(&self, c: &ChoiceState) -> (Option<String>, Vec<MessageToolCall>, String) {
        let finish = c.finish.clone().unwrap_or_else(|| "length".into());
        let Some(set) = self
            .valid
            .tools
            .as_ref()
            .filter(|_| finish != "content_filter")
        else {
            return (Some(c.text.clone()), vec![], finish);
        };
        let parsed = tools::parse_output(&c.text, set);
        if parsed.calls.is_empty() {
            return (Some(c.text.clone()), vec![], finish);
        }
        let calls = parsed
            .calls
            .into_iter()
            .map(|p| MessageToolCall {
                id: self.state.new_id("call"),
                kind: tools::FunctionType::Function,
                function: tools::CalledFunction {
                    name: p.name,
                    arguments: p.arguments,
                },
            })
            .collect();
        (parsed.content, calls, "tool_calls".into())
    }

    fn usage(&self, completion: usize) -> Usage {
        let prompt = self.valid.prompt_tokens() as u32;
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion as u32,
            total_tokens: prompt + completion as u32,
        }
    }

    fn echo_prefix(&self, choice: usize) -> &str {
        if self.valid.echo {
            &self.valid.prompt_texts[choice / self.valid.n]
        } else {
            ""
        }
    }

    /// Settles admission reservations and writes the audit record (the
    /// response completes after it).
    async fn finish(
        &self,
        chain: OutputChain,
        status: u16,
        outcome: &str,
        completion: usize,
        choices: &[ChoiceState],
    ) {
        self.scope.add_records(chain.into_records());
        if let Some(ctx) = &self.admitted {
            self.scope
                .pipeline
                .completed(&self.scope.rule, ctx, completion as u32);
        }
        self.scope
            .audit(
                &self.state,
                status,
                outcome,
                Some(&self.model),
                Some((self.valid.prompt_tokens(), completion)),
                self.state.audit.include_text.then(|| {
                    serde_json::json!({
                        "prompts": self.valid.prompt_texts,
                        "completions": choices.iter().map(|c| c.text.as_str()).collect::<Vec<_>>(),
                    })
                }),
            )
            .await;
    }
}

async fn collect(
    ctx: Ctx,
    rxs: Vec<mpsc::Receiver<SeqEvent>>,
    _permit: OwnedSemaphorePermit,
    mut chain: OutputChain,
) -> ApiResult {
    let mut choices: Vec<ChoiceState> = (0..rxs.len()).map(|_| ChoiceState::default()).collect();
    let mut merged = futures_util::stream::select_all(
        rxs.into_iter()
            .enumerate()
            .map(|(i, rx)| ReceiverStream::new(rx).map(move |e| (i, e))),
    );
    let mut any_first = false;
    let mut outcome = "ok";
    while let Some((i, ev)) = merged.next().await {
        match ev {
            SeqEvent::Step(step) => {
                ctx.observe_token(&mut choices[i], &mut any_first);
                let mut released = chain.filter(i as u32, &step.text);
                if step.finish.is_some()
                    && let Ok(t) = &mut released
                {
                    match chain.finish(i as u32) {
                        Ok(rest) => t.push_str(&rest),
                        Err(stop) => released = Err(stop),
                    }
                }
                let c = &mut choices[i];
                c.tokens.push(step.sampled);
                match released {
                    Ok(t) => c.text.push_str(&t),
                    Err(OutputStop::Abort(reason)) => {
                        tracing::info!(request_id = %ctx.scope.request_id, %reason, "output filter stopped the response");
                        for c in choices.iter_mut().filter(|c| c.finish.is_none()) {
                            c.finish = Some("content_filter".into());
                        }
                        outcome = "aborted";
                        break;
                    }
                    Err(OutputStop::Failed) => {
                        let completion = choices.iter().map(|c| c.tokens.len()).sum();
                        ctx.finish(chain, 503, "error", completion, &choices).await;
                        return Err(ApiError::Unavailable(
                            "a security check (output) could not run; the response was withheld"
                                .into(),
                        ));
                    }
                }
                if let Some(f) = step.finish {
                    choices[i].finish = Some(f.as_str().to_string());
                }
            }
            SeqEvent::Error(e) => {
                let err: ApiError = e.into();
                let completion = choices.iter().map(|c| c.tokens.len()).sum();
                ctx.finish(chain, err.status().as_u16(), "error", completion, &choices)
                    .await;
                return Err(err);
            }
        }
    }
    drop(merged); // cancels sequences still running after an abort
    let completion: usize = choices.iter().map(|c| c.tokens.len()).sum();
    ctx.finish(chain, 200, outcome, completion, &choices).await;
    let usage = ctx.usage(completion);
    let (created, fp) = (ctx.created(), ctx.state.fingerprint());
    Ok(match ctx.kind {
        Kind::Chat => json(&ChatCompletion {
            id: ctx.id.clone(),
            object: "chat.completion",
            created,
            model: ctx.model.clone(),
            system_fingerprint: fp,
            choices: choices
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let (content, tool_calls, finish_reason) = ctx.message_parts(c);
                    ChatChoice {
                        index: i as u32,
                        message: AssistantMessage {
                            role: Role::Assistant,
                            content,
                            tool_calls,
                        },
                        logprobs: ctx.chat_logprobs(&c.tokens),
                        finish_reason,
                    }
                })
                .collect(),
            usage,
        }),
        Kind::Text => json(&Completion {
            id: ctx.id.clone(),
            object: "text_completion",
            created,
            model: ctx.model.clone(),
            system_fingerprint: fp,
            choices: choices
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let prefix = ctx.echo_prefix(i);
                    CompletionChoice {
                        index: i as u32,
                        text: format!("{prefix}{}", c.text),
                        logprobs: ctx.text_logprobs(&c.tokens, prefix.len()),
                        finish_reason: Some(c.finish.clone().unwrap_or_else(|| "length".into())),
                    }
                })
                .collect(),
            usage: Some(usage),
        }),
    })
}

fn event<T: serde::Serialize>(v: &T) -> Event {
    Event::default().data(serde_json::to_string(v).unwrap_or_default())
}

fn stream(
    ctx: Ctx,
    rxs: Vec<mpsc::Receiver<SeqEvent>>,
    permit: OwnedSemaphorePermit,
    mut chain: OutputChain,
) -> axum::response::Response {
    let (tx, out) = mpsc::channel::<Result<Event, Infallible>>(16);
    tokio::spawn(async move {
        let _permit = permit;
        let n = rxs.len();
        let mut merged = futures_util::stream::select_all(
            rxs.into_iter()
                .enumerate()
                .map(|(i, rx)| ReceiverStream::new(rx).map(move |e| (i, e))),
        );
        let mut choices: Vec<ChoiceState> = (0..n).map(|_| ChoiceState::default()).collect();
        let (created, fp) = (ctx.created(), ctx.state.fingerprint());
        let chat_chunk =
            |choices: Vec<ChatChunkChoice>, usage: Option<Usage>| ChatCompletionChunk {
                id: ctx.id.clone(),
                object: "chat.completion.chunk",
                created,
                model: ctx.model.clone(),
                system_fingerprint: fp.clone(),
                choices,
                usage,
            };
        let text_chunk = |choices: Vec<CompletionChoice>, usage: Option<Usage>| Completion {
            id: ctx.id.clone(),
            object: "text_completion",
            created,
            model: ctx.model.clone(),
            system_fingerprint: fp.clone(),
            choices,
            usage,
        };
        // Opening chunks: the role (chat) or the echoed prompt (text).
        for i in 0..n {
            let ev = match ctx.kind {
                Kind::Chat => event(&chat_chunk(
                    vec![ChatChunkChoice {
                        index: i as u32,
                        delta: ChatDelta {
                            role: Some(Role::Assistant),
                            content: Some(String::new()),
                            tool_calls: None,
                        },
                        logprobs: None,
                        finish_reason: None,
                    }],
                    None,
                )),
                Kind::Text if ctx.valid.echo => event(&text_chunk(
                    vec![CompletionChoice {
                        index: i as u32,
                        text: ctx.echo_prefix(i).to_string(),
                        logprobs: None,
                        finish_reason: None,
                    }],
                    None,
                )),
                Kind::Text => continue,
            };
            if tx.send(Ok(ev)).await.is_err() {
                ctx.finish(chain, 499, "cancelled", 0, &[]).await;
                return;
            }
        }
        let mut any_first = false;
        let mut outcome = "ok";
        loop {
            let next = tokio::select! {
                _ = tx.closed() => None, // the client went away: dropping `merged` cancels the sequences
                next = merged.next() => Some(next),
            };
            let Some(next) = next else {
                outcome = "cancelled";
                break;
            };
            let Some((i, ev)) = next else { break };
            let step = match ev {
                SeqEvent::Step(step) => step,
                SeqEvent::Error(e) => {
                    let err: ApiError = e.into();
                    let _ = tx.send(Ok(Event::default().data(err.sse_event()))).await;
                    outcome = "error";
                    break;
                }
            };
            ctx.observe_token(&mut choices[i], &mut any_first);
            let mut finish = step.finish.map(|f| f.as_str().to_string());
            let offset = choices[i].text.len() + ctx.echo_prefix(i).len();
            let mut released = chain.filter(i as u32, &step.text);
            if finish.is_some()
                && let Ok(t) = &mut released
            {
                match chain.finish(i as u32) {
                    Ok(rest) => t.push_str(&rest),
                    Err(stop) => released = Err(stop),
                }
            }
            let mut stop_all = false;
            let text = match released {
                Ok(t) => t,
                Err(OutputStop::Abort(reason)) => {
                    tracing::info!(request_id = %ctx.scope.request_id, %reason, "output filter stopped the response");
                    finish = Some("content_filter".into());
                    outcome = "aborted";
                    stop_all = true;
                    String::new()
                }
                Err(OutputStop::Failed) => {
                    let err = ApiError::Unavailable(
                        "a security check (output) could not run; the response was withheld".into(),
                    );
                    let _ = tx.send(Ok(Event::default().data(err.sse_event()))).await;
                    outcome = "error";
                    break;
                }
            };
            choices[i].text.push_str(&text);
            choices[i].tokens.push(step.sampled.clone());
            let step = palisade_engine::Step { text, ..step };
            if step.text.is_empty() && finish.is_none() && ctx.valid.sampling.logprobs.is_none() {
                continue;
            }
            let toks = std::slice::from_ref(&step.sampled);
            let ev = match ctx.kind {
                // With tools the text may be a call: the choice is sent
                // whole when it ends, as text or as `tool_calls`.
                Kind::Chat if ctx.valid.tools.is_some() => {
                    if finish.is_none() {
                        continue;
                    }
                    choices[i].finish = finish.clone();
                    let (content, calls, finish_reason) = ctx.message_parts(&choices[i]);
                    let tool_calls = (!calls.is_empty()).then(|| {
                        calls
                            .into_iter()
                            .enumerate()
                            .map(|(k, c)| DeltaToolCall {
                                index: k as u32,
                                id: c.id,
                                kind: c.kind,
                                function: c.function,
                            })
                            .collect()
                    });
                    event(&chat_chunk(
                        vec![ChatChunkChoice {
                            index: i as u32,
                            delta: ChatDelta {
                                role: None,
                                content,
                                tool_calls,
                            },
                            logprobs: ctx.chat_logprobs(&choices[i].tokens),
                            finish_reason: Some(finish_reason),
                        }],
                        None,
                    ))
                }
                Kind::Chat => event(&chat_chunk(
                    vec![ChatChunkChoice {
                        index: i as u32,
                        delta: ChatDelta {
                            role: None,
                            content: (!step.text.is_empty()).then(|| step.text.clone()),
                            tool_calls: None,
                        },
                        logprobs: ctx.chat_logprobs(toks),
                        finish_reason: finish,
                    }],
                    None,
                )),
                Kind::Text => event(&text_chunk(
                    vec![CompletionChoice {
                        index: i as u32,
                        text: step.text.clone(),
                        logprobs: ctx.text_logprobs(toks, offset),
                        finish_reason: finish,
                    }],
                    None,
                )),
            };
            if tx.send(Ok(ev)).await.is_err() {
                outcome = "cancelled";
                break;
            }
            if stop_all {
                break;
            }
        }
        drop(merged); // cancels sequences still running (abort, disconnect)
        let completion: usize = choices.iter().map(|c| c.tokens.len()).sum();
        if outcome == "error" || outcome == "cancelled" {
            ctx.finish(
                chain,
                if outcome == "error" { 503 } else { 499 },
                outcome,
                completion,
                &choices,
            )
            .await;
            return;
        }
        ctx.finish(chain, 200, outcome, completion, &choices).await;
        if ctx.valid.include_usage {
            let usage = ctx.usage(choices.iter().map(|c| c.tokens.len()).sum());
            let ev = match ctx.kind {
                Kind::Chat => event(&chat_chunk(vec![], Some(usage))),
                Kind::Text => event(&text_chunk(vec![], Some(usage))),
            };
            if tx.send(Ok(ev)).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Ok(Event::default().data("[DONE]"))).await;
    });
    Sse::new(ReceiverStream::new(out)).into_response()
}
