//! REST handlers: parse and check the request, call the task manager, answer JSON. Runs on
//! the HTTP worker threads; every failure is an `ApiError` answered once, here.

use std::time::Instant;

use serde_json::{json, Value};
use tiny_http::Request;

use super::body::{docker_task, shell_task, NewTask};
use super::json::{agent_json, created_json, detail_json, summary_json};
use super::routes::Route;
use super::{stream, ApiState};
use crate::http::request::{read_json_object, require_bearer, Query};
use crate::http::{respond, ApiError, Params};
use crate::limits::Limit;
use std::sync::Arc;

use crate::tasks::{Origin, TaskFilter, TaskId, TaskStatus, MAX_LIST_LIMIT};

/// Answers one request and records it in the metrics; the HTTP workers' handler.
pub fn handle(state: &ApiState, req: Request) {
    let started = Instant::now();
    let (route, code) = dispatch(state, req);
    state
        .metrics
        .observe_request(route, code, started.elapsed());
}

/// Routes, authenticates and answers; returns the route pattern and the status sent.
fn dispatch(state: &ApiState, mut req: Request) -> (&'static str, u16) {
    let route = match state.router.resolve(req.method().as_str(), req.url()) {
        Ok(r) => r,
        Err(e) => {
            respond::error(req, &e);
            return ("unmatched", e.status());
        }
    };
    let label = route.pattern;
    if !matches!(route.name, Route::Health | Route::Ready) {
        if let Some(token) = &state.api_token {
            if let Err(e) = require_bearer(&req, token) {
                respond::error(req, &e);
                return (label, e.status());
            }
        }
    }
    let query = Query::from_url(req.url());
    let result = match route.name {
        // Streams take the connection over (or answer the error themselves).
        Route::Stream => {
            let code = stream::serve(state, req, &query);
            // `stream::serve` answers its errors itself; its only 503 outside shutdown
            // is the hub's client limit.
            if code == 503 && !state.hub.is_shutting_down() {
                state.hits.hit(Limit::SseClients);
            }
            return (label, code);
        }
        Route::Metrics => return (label, metrics(state, req)),
        Route::Health => Ok(json!({"status": "ok"})),
        Route::Ready => ready(state),
        Route::CreateShell => read_json_object(&mut req, state.max_body_bytes)
            .and_then(|b| shell_task(&b))
            .and_then(|t| create(state, t, origin(&req))),
        Route::CreateDocker => read_json_object(&mut req, state.max_body_bytes)
            .and_then(|b| docker_task(&b))
            .and_then(|t| create(state, t, origin(&req))),
        Route::ListTasks => list_tasks(state, &query, None),
        Route::GetTask => task_id(&route.params).and_then(|id| {
            state
                .manager
                .lookup_task(id)?
                .map(|t| detail_json(&t))
                .ok_or_else(|| not_found(id))
        }),
        Route::CancelTask => task_id(&route.params).and_then(|id| cancel(state, id, origin(&req))),
        Route::ListAgents => Ok(list_agents(state)),
        Route::AgentTasks => agent_tasks(state, &route.params, &query),
    };
    match result {
        Ok(body) => {
            respond::json(req, 200, &body);
            (label, 200)
        }
        Err(e) => {
            if let Some(limit) = e.limit() {
                state.hits.hit(limit);
            }
            respond::error(req, &e);
            (label, e.status())
        }
    }
}

/// `GET /metrics`: the Prometheus/OpenMetrics text exposition.
fn metrics(state: &ApiState, req: Request) -> u16 {
    match state.metrics.render() {
        Ok(text) => {
            let mut resp = tiny_http::Response::from_string(text);
            if let Some(h) = respond::make_header("Content-Type", METRICS_CONTENT_TYPE) {
                resp.add_header(h);
            }
            respond::send(req, resp);
            200
        }
        Err(_) => {
            let e = ApiError::internal("could not encode metrics");
            respond::error(req, &e);
            e.status()
        }
    }
}

/// What prometheus-client's text encoder produces.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn not_found(id: TaskId) -> ApiError {
    ApiError::from(crate::tasks::TaskError::NotFound(id))
}

/// The `{id}` of a task path; anything that is not a UUID cannot name a task (404).
fn task_id(params: &Params) -> Result<TaskId, ApiError> {
    let raw = params.get("id").unwrap_or_default();
    TaskId::parse_str(raw)
        .map_err(|_| ApiError::not_found("task not found").with_details(json!({ "task_id": raw })))
}

/// `GET /readyz`: both listeners up, not stopping, and durable history writable.
fn ready(state: &ApiState) -> Result<Value, ApiError> {
    if !state.is_ready() {
        return Err(ApiError::service_unavailable(
            "not ready: starting or shutting down",
            None,
        ));
    }
    if let Some(why) = state.store.as_ref().and_then(|s| s.failure()) {
        return Err(ApiError::service_unavailable(
            format!("not ready: storage unavailable: {why}"),
            None,
        ));
    }
    Ok(json!({"status": "ready"}))
}

/// Who is asking: the one API token's holder, from the client's address.
fn origin(req: &Request) -> Origin {
    Origin {
        actor: Arc::from(API_TOKEN_NAME),
        peer: Arc::from(
            req.remote_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
                .as_str(),
        ),
    }
}

/// The name the audit trail gives the `--api-token` holder.
const API_TOKEN_NAME: &str = "api-token";

/// Hands a parsed creation request to the manager and answers with the new task.
fn create(state: &ApiState, task: NewTask, origin: Origin) -> Result<Value, ApiError> {
    let task = state
        .manager
        .send_task_as(&task.agent_id, task.spec, task.timeout, origin)?;
    Ok(created_json(&task))
}

fn cancel(state: &ApiState, id: TaskId, origin: Origin) -> Result<Value, ApiError> {
    let task = state.manager.cancel_task_as(id, origin)?;
    Ok(json!({
        "message": "Task cancelled successfully",
        "task_id": task.id.to_string(),
        "status": task.status.as_str(),
    }))
}

fn filter(query: &Query, agent: Option<&str>) -> Result<TaskFilter, ApiError> {
    let status = match query.get("status") {
        None => None,
        Some(s) => Some(TaskStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown status `{s}`; expected created, sent, in_progress, completed, failed, timeout or cancelled"
            ))
            .with_details(json!({ "parameter": "status" }))
        })?),
    };
    let limit = match query.u64("limit")? {
        Some(0) => {
            return Err(
                ApiError::bad_request("query parameter `limit` must be at least 1")
                    .with_details(json!({ "parameter": "limit" })),
            )
        }
        Some(n) if n > MAX_LIST_LIMIT as u64 => {
            return Err(ApiError::bad_request(format!(
                "query parameter `limit` must be between 1 and {MAX_LIST_LIMIT}"
            ))
            .with_details(json!({ "parameter": "limit" })))
        }
        Some(n) => Some(n as usize),
        None => None,
    };
    let agent_id = agent
        .map(str::to_string)
        .or_else(|| query.get("agent_id").map(str::to_string));
    let cursor = match query.get("cursor") {
        None => None,
        Some(c) if valid_cursor(c) => Some(c.to_string()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "query parameter `cursor` is not a cursor this server handed out; use `next_cursor` of the previous page",
            )
            .with_details(json!({ "parameter": "cursor" })))
        }
    };
    Ok(TaskFilter {
        status,
        agent_id,
        limit,
        since: time_param(query, "since")?,
        until: time_param(query, "until")?,
        cursor,
    })
}

/// Cursors come from the store (`t…`) or, in memory only, from the registry (`m…`).
fn valid_cursor(c: &str) -> bool {
    crate::store::Store::valid_cursor(c)
        || c.strip_prefix('m')
            .is_some_and(|h| !h.is_empty() && u64::from_str_radix(h, 16).is_ok())
}

/// An RFC 3339 UTC time parameter (`2026-12-01T21:00:00Z`).
fn time_param(query: &Query, key: &str) -> Result<Option<std::time::SystemTime>, ApiError> {
    match query.get(key) {
        None => Ok(None),
        Some(v) => humantime::parse_rfc3339_weak(v).map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "query parameter `{key}` must be an RFC 3339 UTC time such as 2026-12-01T21:00:00Z"
            ))
            .with_details(json!({ "parameter": key }))
        }),
    }
}

fn list_tasks(state: &ApiState, query: &Query, agent: Option<&str>) -> Result<Value, ApiError> {
    let page = state.manager.list_tasks(&filter(query, agent)?)?;
    let tasks: Vec<Value> = page.tasks.iter().map(summary_json).collect();
    Ok(json!({ "tasks": tasks, "next_cursor": page.next_cursor }))
}

fn agent_tasks(state: &ApiState, params: &Params, query: &Query) -> Result<Value, ApiError> {
    let agent = params.get("id").unwrap_or_default();
    let mut body = list_tasks(state, query, Some(agent))?;
    let known = state.agent_tokens.contains(agent) || state.directory.is_connected(agent);
    let has_tasks = body["tasks"].as_array().is_some_and(|t| !t.is_empty());
    if !known && !has_tasks {
        return Err(ApiError::not_found(format!("agent `{agent}` is not known"))
            .with_details(json!({ "agent_id": agent })));
    }
    if let Value::Object(m) = &mut body {
        m.insert("agent_id".into(), json!(agent));
    }
    Ok(body)
}

fn list_agents(state: &ApiState) -> Value {
    let running = state.manager.running_per_agent();
    let agents: Vec<Value> = state
        .directory
        .list()
        .iter()
        .map(|a| agent_json(a, running.get(&a.agent_id).copied().unwrap_or(0)))
        .collect();
    json!({ "agents": agents })
}
