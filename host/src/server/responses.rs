//! `POST /v1/responses`: model turns with tools. A call of a function the
//! client defined ends the response (the client runs it and sends the
//! output back); a call of the built-in `code_interpreter` runs in the tool
//! plugin the route grants, its result goes back to the model, and the next
//! turn follows, up to the route's `max_tool_steps`. A call the policy does
//! not grant is refused: the model is told so, the client sees the refusal
//! in the call's item, and nothing runs. Every tool call is a `tool` stage
//! record in the audit line.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Extension;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::response::sse::{Event, Sse};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::generate::settle_unused;
use super::guard::Scope;
use super::sandbox::{Sandbox, granted_sandbox, logs, run_tool, sandbox_function};
use super::{ApiResult, AppState, json};
use crate::api::ApiError;
use crate::api::json::StrictJson;
use crate::api::responses::*;
use crate::api::tools::{self, Choice, Function, ToolSet};
use crate::api::validate;
use crate::plugins::bindings::shared::palisade::plugin::types::RequestContext;
use crate::plugins::pipeline::{OutputChain, OutputStop, StageRecord};
use crate::plugins::runtime::LoadedPlugin;
use crate::scheduler::SeqEvent;

/// `POST /v1/responses`.
#[utoipa::path(post, path = "/v1/responses", request_body = ResponsesRequest,
    responses((status = 200, description = "a response, or (`stream: true`) server-sent events (`response.created` ... `response.completed`)",
                content((ResponseObject = "application/json"), (String = "text/event-stream"))),
              (status = 400, description = "invalid request"), (status = 404, description = "unknown model"),
              (status = 429, description = "busy"), (status = 503, description = "loading or draining")))]
pub async fn responses(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    StrictJson(req): StrictJson<ResponsesRequest>,
) -> ApiResult {
    let l = state.loaded()?;
    if req.model != l.model_name {
        return Err(ApiError::ModelNotFound(req.model));
    }
    let mut conv = conversation(&req)?;
    let (offered, choice) = offered_tools(&req)?;
    let sandbox = granted_sandbox(&scope);
    let functions: Vec<Function> = offered
        .iter()
        .map(|(name, t)| match t {
            OfferedTool::Function(f) => f.clone(),
            OfferedTool::Server => sandbox_function(name, sandbox.as_ref().map(|s| &s.1)),
        })
        .collect();
    let limits = &state.config.limits;
    let budget = match req.max_output_tokens {
        Some(0) => return Err(ApiError::bad("max_output_tokens", "must be at least 1")),
        Some(m) => (m as usize).min(limits.max_tokens),
        None => limits.max_tokens,
    };
    let first_set = (!functions.is_empty()).then(|| ToolSet {
        functions: functions.clone(),
        choice,
    });
    let mut v0 = validate::responses_turn(
        &l.engine,
        limits,
        conv.clone(),
        first_set.as_ref(),
        budget,
        req.temperature,
        req.top_p,
    )?;
    let mut admitted = None;
    if !scope.rule.admission.is_empty() {
        let ctx = super::generate::request_context(&scope, &v0, &l.model_name);
        let mut recs = Vec::new();
        let r = scope.pipeline.admit(&scope.rule, &ctx, &mut recs);
        scope.add_records(recs);
        admitted = Some(ctx);
        for rw in r? {
            if let Some(sys) = &rw.prepend_system {
                conv.insert(0, json!({"role": "system", "content": sys}));
            }
            validate::apply_rewrite(&l.engine, &mut v0, rw.max_tokens, rw.temperature, None)
                .inspect_err(|_| settle_unused(&scope, admitted.as_ref()))?;
        }
    }
    let started = async {
        let chain = scope.pipeline.output_chain(&scope.rule)?;
        let permit = state.acquire_slot().await?;
        Ok::<_, ApiError>((chain, permit))
    }
    .await;
    let (chain, permit) = started.inspect_err(|_| settle_unused(&scope, admitted.as_ref()))?;
    let created_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let max_steps = scope
        .rule
        .max_tool_steps
        .min(req.max_tool_calls.unwrap_or(u32::MAX));
    let run = Run {
        response: ResponseObject {
            id: state.new_id("resp"),
            object: "response",
            created_at,
            status: "in_progress",
            incomplete_details: None,
            error: None,
            instructions: req.instructions.clone(),
            max_output_tokens: req.max_output_tokens,
            model: l.model_name.clone(),
            output: vec![],
            parallel_tool_calls: true,
            temperature: v0.sampling.temperature,
            top_p: v0.sampling.top_p,
            tool_choice: req.tool_choice.clone().unwrap_or_else(|| "auto".into()),
            tools: req.tools.clone().unwrap_or_default(),
            text: json!({"format": {"type": "text"}}),
            truncation: "disabled",
            metadata: req.metadata.clone().unwrap_or_default(),
            user: req.user.clone(),
            store: false,
            usage: None,
        },
        state: state.clone(),
        scope,
        engine: l.engine.clone(),
        handle: l.handle.clone(),
        admitted,
        chain: Some(chain),
        conv,
        functions,
        offered,
        first_choice: choice,
        sandbox,
        budget: budget.min(v0.max_tokens),
        max_steps,
        temperature: Some(v0.sampling.temperature),
        top_p: req.top_p,
        tokens: (0, 0),
    };
    if req.stream.unwrap_or(false) {
        run.scope.audited.store(true, Ordering::Relaxed); // written when the stream ends
        let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(32);
        tokio::spawn(async move {
            let _permit = permit;
            let mut events = Events {
                tx: Some(tx),
                seq: 0,
            };
            let _ = run.go(&mut events).await; // a failure is sent as `response.failed`
        });
        return Ok(Sse::new(ReceiverStream::new(rx)).into_response());
    }
    let _permit = permit;
    let mut events = Events { tx: None, seq: 0 };
    let (status, resp) = run.go(&mut events).await;
    match status {
        Ok(()) => Ok(json(&resp)),
        Err(e) => Err(e),
    }
}

/// Server-sent events of a streamed response (none when not streaming).
struct Events {
    tx: Option<mpsc::Sender<Result<Event, Infallible>>>,
    seq: u64,
}

impl Events {
    /// Sends one event; false when the client went away.
    async fn send(&mut self, kind: &str, mut data: Value) -> bool {
        let Some(tx) = &self.tx else { return true };
        data["type"] = kind.into();
        data["sequence_number"] = self.seq.into();
        self.seq += 1;
        let ev = Event::default().event(kind).data(data.to_string());
        tx.send(Ok(ev)).await.is_ok()
    }

    /// Sends an `output_item.added` / `.done` event for the item at `index`.
    async fn item(&mut self, kind: &str, index: usize, item: &Value) -> bool {
        self.send(kind, json!({"output_index": index, "item": item}))
            .await
    }
}

struct Run {
    response: ResponseObject,
    state: Arc<AppState>,
    scope: Scope,
    engine: Arc<palisade_engine::Engine>,
    handle: crate::scheduler::EngineHandle,
    admitted: Option<RequestContext>,
    chain: Option<OutputChain>,
    conv: Vec<Value>,
    functions: Vec<Function>,
    offered: Vec<(String, OfferedTool)>,
    first_choice: Choice,
    sandbox: Option<Sandbox>,
    budget: usize,
    max_steps: u32,
    temperature: Option<f32>,
    top_p: Option<f32>,
    /// Prompt and generated tokens over all turns.
    tokens: (usize, usize),
}

/// An open message item of a streamed response.
struct Message {
    /// `item_id`, `output_index`, `content_index` of its events.
    at: Value,
    index: usize,
    item: Value,
    /// The client still listens.
    ok: bool,
}

impl Message {
    fn with(&self, extra: Value) -> Value {
        merged(&self.at, &extra)
    }

    /// Sends a text delta; false when the client went away.
    async fn delta(&self, ev: &mut Events, text: &str) -> bool {
        ev.send(
            "response.output_text.delta",
            self.with(json!({"delta": text})),
        )
        .await
    }
}

/// `base` with the fields of `extra` added (both JSON objects).
fn merged(base: &Value, extra: &Value) -> Value {
    let mut d = base.clone();
    if let (Some(m), Some(e)) = (d.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    d
}

/// How a turn ended.
enum TurnEnd {
    /// Generated text (and the finish reason).
    Text(String, String),
    /// The client went away.
    Gone,
}

impl Run {
    /// Runs the turns; returns the outcome and the final response (also
    /// sent as `response.completed` / `response.failed` when streaming).
    async fn go(mut self, ev: &mut Events) -> (Result<(), ApiError>, ResponseObject) {
        let snapshot = serde_json::to_value(&self.response).unwrap_or_default();
        let _ = ev
            .send("response.created", json!({"response": snapshot}))
            .await;
        let _ = ev
            .send("response.in_progress", json!({"response": snapshot}))
            .await;
        let r = self.turns(ev).await;
        let (status, outcome) = match &r {
            Ok(true) => (200, "ok"),
            Ok(false) => (499, "cancelled"),
            Err(e) => (e.status().as_u16(), "error"),
        };
        let (pt, ct) = self.tokens;
        self.response.usage = Some(ResponseUsage::new(pt, ct));
        if let Err(e) = &r {
            self.response.status = "failed";
            self.response.error = Some(json!({"code": "server_error", "message": e.to_string()}));
        } else if self.response.status == "in_progress" {
            self.response.status = "completed";
        }
        if let Some(chain) = self.chain.take() {
            self.scope.add_records(chain.into_records());
        }
        if let Some(c) = &self.admitted {
            self.scope
                .pipeline
                .completed(&self.scope.rule, c, ct as u32);
        }
        let text = self
            .state
            .audit
            .include_text
            .then(|| json!({"input": self.conv, "output": self.response.output}));
        self.scope
            .audit(
                &self.state,
                status,
                outcome,
                Some(&self.response.model),
                Some((pt, ct)),
                text,
            )
            .await;
        let done = serde_json::to_value(&self.response).unwrap_or_default();
        let kind = if r.is_err() {
            "response.failed"
        } else {
            "response.completed"
        };
        let _ = ev.send(kind, json!({"response": done})).await;
        (r.map(|_| ()), self.response)
    }

    /// The turn loop; `Ok(false)` when the client went away.
    async fn turns(&mut self, ev: &mut Events) -> Result<bool, ApiError> {
        let mut steps = 0;
        for turn in 0.. {
            let remaining = self.budget.saturating_sub(self.tokens.1);
            if remaining == 0 {
                self.incomplete("max_output_tokens");
                return Ok(true);
            }
            let set = (!self.functions.is_empty() && steps < self.max_steps).then(|| ToolSet {
                functions: self.functions.clone(),
                choice: if turn == 0 {
                    self.first_choice
                } else {
                    Choice::Auto
                },
            });
            let v = validate::responses_turn(
                &self.engine,
                &self.state.config.limits,
                self.conv.clone(),
                set.as_ref(),
                remaining,
                self.temperature,
                self.top_p,
            )?;
            self.tokens.0 += v.prompt_tokens();
            // A turn without tools is text: streamed as it is generated.
            if set.is_none() && ev.tx.is_some() {
                let m = self.message_start(ev).await;
                let (text, finish) = match self.generate(&v, turn, Some((&mut *ev, &m))).await? {
                    TurnEnd::Text(t, f) => (t, f),
                    TurnEnd::Gone => return Ok(false),
                };
                let ok = m.ok;
                if !self.message_end(ev, m, &text, ok).await {
                    return Ok(false);
                }
                self.finish_reason(&finish);
                return Ok(true);
            }
            let (text, finish) = match self.generate(&v, turn, None).await? {
                TurnEnd::Text(t, f) => (t, f),
                TurnEnd::Gone => return Ok(false),
            };
            let parsed = set
                .as_ref()
                .map(|s| tools::parse_output(&text, s))
                .filter(|p| !p.calls.is_empty() && finish != "content_filter");
            let Some(parsed) = parsed else {
                if !self.message(ev, &text).await {
                    return Ok(false);
                }
                self.finish_reason(&finish);
                return Ok(true);
            };
            if let Some(c) = &parsed.content
                && !self.message(ev, c).await
            {
                return Ok(false);
            }
            let mut client_side = false;
            for p in &parsed.calls {
                let call_id = self.state.new_id("call");
                let call = tools::MessageToolCall {
                    id: call_id.clone(),
                    kind: tools::FunctionType::Function,
                    function: tools::CalledFunction {
                        name: p.name.clone(),
                        arguments: p.arguments.clone(),
                    },
                };
                let server = self
                    .offered
                    .iter()
                    .any(|(n, t)| *n == p.name && *t == OfferedTool::Server);
                if !server {
                    client_side = true;
                    let item = json!({"type": "function_call", "id": self.state.new_id("fc"),
                        "call_id": call_id, "name": p.name, "arguments": p.arguments, "status": "completed"});
                    if !self.item(ev, item).await {
                        return Ok(false);
                    }
                    continue;
                }
                let code = serde_json::from_str::<Value>(&p.arguments)
                    .ok()
                    .and_then(|a| a["code"].as_str().map(str::to_string))
                    .unwrap_or_default();
                let id = self.state.new_id("ci");
                let mut item = json!({"type": "code_interpreter_call", "id": id, "status": "in_progress",
                    "code": code, "container_id": "palisade-sandbox", "outputs": null});
                let index = self.response.output.len();
                let head = json!({"output_index": index, "item_id": id});
                let mut ok = ev.item("response.output_item.added", index, &item).await;
                for (kind, extra) in [
                    ("response.code_interpreter_call.in_progress", json!({})),
                    (
                        "response.code_interpreter_call_code.delta",
                        json!({"delta": code}),
                    ),
                    (
                        "response.code_interpreter_call_code.done",
                        json!({"code": code}),
                    ),
                    ("response.code_interpreter_call.interpreting", json!({})),
                ] {
                    ok = ok && ev.send(kind, merged(&head, &extra)).await;
                }
                let out = run_tool(self.sandbox_access(), &p.arguments).await;
                self.scope.add_records([StageRecord {
                    stage: "tool",
                    plugin: CODE_INTERPRETER.into(),
                    verdict: out.verdict.clone(),
                    micros: out.micros,
                    detail: Some(format!("call {call_id}")),
                }]);
                item["status"] = if out.ok { "completed" } else { "failed" }.into();
                item["outputs"] = json!([{"type": "logs", "logs": logs(&out.for_model)}]);
                if !out.ok {
                    item["error"] = out.for_model.clone().into();
                }
                self.conv.push(json!({"role": "assistant", "content": tools::render_calls("", std::slice::from_ref(&call))}));
                self.conv
                    .push(json!({"role": "user", "content": tools::render_result(&out.for_model)}));
                ok = ok
                    && ev
                        .send("response.code_interpreter_call.completed", head.clone())
                        .await;
                ok = ok && ev.item("response.output_item.done", index, &item).await;
                self.response.output.push(item);
                if !ok {
                    return Ok(false);
                }
            }
            if client_side {
                return Ok(true);
            }
            steps += 1;
        }
        Ok(true)
    }

    /// Marks the response incomplete when the last turn was cut off.
    fn finish_reason(&mut self, finish: &str) {
        match finish {
            "length" => self.incomplete("max_output_tokens"),
            "content_filter" => self.incomplete("content_filter"),
            _ => {}
        }
    }

    fn incomplete(&mut self, reason: &str) {
        self.response.status = "incomplete";
        self.response.incomplete_details = Some(json!({ "reason": reason }));
    }

    /// Adds a finished item (added and done events).
    async fn item(&mut self, ev: &mut Events, item: Value) -> bool {
        let index = self.response.output.len();
        let ok = ev.item("response.output_item.added", index, &item).await
            && ev.item("response.output_item.done", index, &item).await;
        self.response.output.push(item);
        ok
    }

    /// Adds an assistant message item with its content events.
    async fn message(&mut self, ev: &mut Events, text: &str) -> bool {
        let m = self.message_start(ev).await;
        let ok = m.ok && (text.is_empty() || m.delta(ev, text).await);
        self.message_end(ev, m, text, ok).await
    }

    /// Opens a message item (`output_item.added`, `content_part.added`).
    async fn message_start(&mut self, ev: &mut Events) -> Message {
        let id = self.state.new_id("msg");
        let index = self.response.output.len();
        let item = json!({"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []});
        let m = Message {
            at: json!({"item_id": id, "output_index": index, "content_index": 0}),
            index,
            item,
            ok: true,
        };
        let ok = ev.item("response.output_item.added", index, &m.item).await
            && ev
                .send(
                    "response.content_part.added",
                    m.with(json!({"part": {"type": "output_text", "text": "", "annotations": []}})),
                )
                .await;
        Message { ok, ..m }
    }

    /// Closes a message item with its whole text.
    async fn message_end(&mut self, ev: &mut Events, mut m: Message, text: &str, ok: bool) -> bool {
        let part = json!({"type": "output_text", "text": text, "annotations": []});
        let ok = ok
            && ev
                .send("response.output_text.done", m.with(json!({"text": text})))
                .await
            && ev
                .send("response.content_part.done", m.with(json!({"part": part})))
                .await;
        m.item["status"] = "completed".into();
        m.item["content"] = json!([part]);
        let ok = ok && ev.item("response.output_item.done", m.index, &m.item).await;
        self.response.output.push(m.item);
        ok
    }

    /// One generation through the output filters (stream index `turn`).
    async fn generate(
        &mut self,
        v: &validate::ValidGeneration,
        turn: u32,
        mut live: Option<(&mut Events, &Message)>,
    ) -> Result<TurnEnd, ApiError> {
        let mut rx = self
            .handle
            .submit(vec![v.engine_request(0)])?
            .pop()
            .ok_or_else(|| ApiError::Unavailable("the engine took no sequence".into()))?;
        self.state
            .metrics
            .prompt_tokens
            .fetch_add(v.prompt_tokens() as u64, Ordering::Relaxed);
        let mut text = String::new();
        let Some(chain) = self.chain.as_mut() else {
            return Err(ApiError::Unavailable("the output filters are gone".into()));
        };
        while let Some(event) = rx.recv().await {
            let step = match event {
                SeqEvent::Step(s) => s,
                SeqEvent::Error(e) => return Err(e.into()),
            };
            self.tokens.1 += 1;
            self.state
                .metrics
                .completion_tokens
                .fetch_add(1, Ordering::Relaxed);
            let mut released = chain.filter(turn, &step.text);
            if step.finish.is_some()
                && let Ok(t) = &mut released
            {
                match chain.finish(turn) {
                    Ok(rest) => t.push_str(&rest),
                    Err(stop) => released = Err(stop),
                }
            }
            match released {
                Ok(t) => {
                    if let Some((ev, m)) = live.as_mut()
                        && !t.is_empty()
                        && !m.delta(ev, &t).await
                    {
                        return Ok(TurnEnd::Gone);
                    }
                    text.push_str(&t)
                }
                Err(OutputStop::Abort(reason)) => {
                    tracing::info!(request_id = %self.scope.request_id, %reason, "output filter stopped the response");
                    return Ok(TurnEnd::Text(text, "content_filter".into()));
                }
                Err(OutputStop::Failed) => {
                    return Err(ApiError::Unavailable(
                        "a security check (output) could not run; the response was withheld".into(),
                    ));
                }
            }
            if let Some(f) = step.finish {
                return Ok(TurnEnd::Text(text, f.as_str().to_string()));
            }
        }
        Ok(TurnEnd::Gone)
    }

    /// The code interpreter, if the policy lets this caller run it.
    fn sandbox_access(&self) -> Result<Arc<LoadedPlugin>, String> {
        match &self.sandbox {
            None => Err(format!(
                "refused by policy: this route grants no `{CODE_INTERPRETER}` tool; the code was not run"
            )),
            Some((Err(m), _)) => Err(format!("{m}; the code was not run")),
            Some((Ok(p), _)) => Ok(p.clone()),
        }
    }
}
