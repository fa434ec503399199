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
use crate::tasks::{TaskFilter, TaskId, TaskStatus};

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
        Route::Ready if state.is_ready() => Ok(json!({"status": "ready"})),
        Route::Ready => Err(ApiError::service_unavailable(
            "not ready: starting or shutting down",
            None,
        )),
        Route::CreateShell => read_json_object(&mut req, state.max_body_bytes)
            .and_then(|b| shell_task(&b))
            .and_then(|t| create(state, t)),
        Route::CreateDocker => read_json_object(&mut req, state.max_body_bytes)
            .and_then(|b| docker_task(&b))
            .and_then(|t| create(state, t)),
        Route::ListTasks => list_tasks(state, &query, None),
        Route::GetTask => task_id(&route.params).and_then(|id| {
            state
                .manager
                .get_task(id)
                .map(|t| detail_json(&t))
                .ok_or_else(|| not_found(id))
        }),
        Route::CancelTask => task_id(&route.params).and_then(|id| cancel(state, id)),
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

/// Hands a parsed creation request to the manager and answers with the new task.
fn create(state: &ApiState, task: NewTask) -> Result<Value, ApiError> {
    let task = state
        .manager
        .send_task(&task.agent_id, task.spec, task.timeout)?;
    Ok(created_json(&task))
}

fn cancel(state: &ApiState, id: TaskId) -> Result<Value, ApiError> {
    let task = state.manager.cancel_task(id)?;
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
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        None => None,
    };
    let agent_id = agent
        .map(str::to_string)
        .or_else(|| query.get("agent_id").map(str::to_string));
    Ok(TaskFilter {
        status,
        agent_id,
        limit,
    })
}

fn list_tasks(state: &ApiState, query: &Query, agent: Option<&str>) -> Result<Value, ApiError> {
    let tasks: Vec<Value> = state
        .manager
        .list_tasks(&filter(query, agent)?)?
        .iter()
        .map(summary_json)
        .collect();
    Ok(json!({ "tasks": tasks }))
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
