//! REST handlers: parse and check the request, call the task manager, answer JSON. Runs on
//! the HTTP worker threads; every failure is an `ApiError` answered once, here.

use std::time::Instant;

use serde_json::{json, Value};
use tiny_http::Request;

use super::body::{docker_task, shell_task, ListLimit, NewTask};
use super::json::{
    created_json, detail_json, to_value, Agent, AgentList, AgentTaskList, Cancelled, Health, Ready,
    TaskList, TaskSummary,
};
use super::routes::Route;
use super::{stream, ApiState};
use crate::http::request::{read_json_object, require_bearer, Query};
use crate::http::{respond, ApiError, Params};
use crate::limits::Limit;
use std::sync::Arc;

use crate::tasks::{Origin, TaskFilter, TaskId, TaskStatus};

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
        Route::Health => Ok(to_value(&Health { status: "ok" })),
        Route::Ready => ready(state),
        Route::CreateShell => read_json_object(&mut req, state.max_body_bytes)
            .and_then(|b| shell_task(&b))
            .and_then(|t| create(state, t, origin(&req))),
        Route::CreateDocker => read_json_object(&mut req, state.max_body_bytes)
            .and_then(|b| docker_task(&b))
            .and_then(|t| create(state, t, origin(&req))),
        Route::ListTasks => list_tasks(state, &query),
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
    Ok(to_value(&Ready { status: "ready" }))
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
    Ok(to_value(&Cancelled::from(&task)))
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
    let limit = ListLimit::parse(query.get("limit"))?;
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
    crate::store::Store::valid_cursor(c) || crate::tasks::parse_memory_cursor(c).is_some()
}

/// An RFC 3339 time parameter (`2026-12-01T21:00:00Z`, `2026-12-01T22:00:00+01:00`).
fn time_param(query: &Query, key: &str) -> Result<Option<std::time::SystemTime>, ApiError> {
    match query.get(key) {
        None => Ok(None),
        Some(v) => parse_rfc3339(v).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!(
                "query parameter `{key}` must be an RFC 3339 time such as 2026-12-01T21:00:00Z"
            ))
            .with_details(json!({ "parameter": key }))
        }),
    }
}

/// RFC 3339 with `Z` or a numeric offset (humantime reads only the UTC forms). A time before
/// 1970 reads as 1970: no task was created earlier, so filters mean the same.
fn parse_rfc3339(v: &str) -> Option<std::time::SystemTime> {
    if !v.is_ascii() {
        return None; // and every slice below is on a character boundary
    }
    let mut v = v.to_ascii_uppercase();
    if let Some(year) = v.get(..4).and_then(|y| y.parse::<u32>().ok()) {
        if year < 1970 && v.is_char_boundary(4) {
            v.replace_range(..4, "1970");
            return parse_utc_or_offset(&v).map(|_| std::time::UNIX_EPOCH);
        }
    }
    parse_utc_or_offset(&v)
}

fn parse_utc_or_offset(v: &str) -> Option<std::time::SystemTime> {
    if let Ok(t) = humantime::parse_rfc3339_weak(v) {
        return Some(t);
    }
    let (base, offset) = v.split_at(v.len().checked_sub(6)?);
    let bytes = offset.as_bytes();
    if !matches!(bytes[0], b'+' | b'-') || bytes[3] != b':' {
        return None;
    }
    let hours: u64 = offset.get(1..3)?.parse().ok()?;
    let minutes: u64 = offset.get(4..6)?.parse().ok()?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    let shift = std::time::Duration::from_secs(hours * 3600 + minutes * 60);
    let local = humantime::parse_rfc3339_weak(&format!("{base}Z")).ok()?;
    // Local time ahead of UTC (+) means the UTC instant is earlier.
    if bytes[0] == b'+' {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    }
}

fn list_tasks(state: &ApiState, query: &Query) -> Result<Value, ApiError> {
    let page = state.manager.list_tasks(&filter(query, None)?)?;
    Ok(to_value(&TaskList {
        tasks: page.tasks.iter().map(TaskSummary::from).collect(),
        next_cursor: page.next_cursor.as_deref(),
    }))
}

fn agent_tasks(state: &ApiState, params: &Params, query: &Query) -> Result<Value, ApiError> {
    let agent = params.get("id").unwrap_or_default();
    let page = state.manager.list_tasks(&filter(query, Some(agent))?)?;
    let known = state.agent_tokens.contains(agent) || state.directory.is_connected(agent);
    if !known && page.tasks.is_empty() {
        return Err(ApiError::not_found(format!("agent `{agent}` is not known"))
            .with_details(json!({ "agent_id": agent })));
    }
    Ok(to_value(&AgentTaskList {
        agent_id: agent,
        tasks: page.tasks.iter().map(TaskSummary::from).collect(),
        next_cursor: page.next_cursor.as_deref(),
    }))
}

fn list_agents(state: &ApiState) -> Value {
    let running = state.manager.running_per_agent();
    let agents = state.directory.list();
    to_value(&AgentList {
        agents: agents
            .iter()
            .map(|a| Agent::from_info(a, running.get(&a.agent_id).copied().unwrap_or(0)))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::parse_rfc3339;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_times_with_zulu_or_an_offset_name_the_same_instant() {
        let utc = UNIX_EPOCH + Duration::from_secs(1_764_622_800); // 2025-12-01T21:00:00Z
        for text in [
            "2025-12-01T21:00:00Z",
            "2025-12-01t21:00:00z",
            "2025-12-01T22:30:00+01:30",
            "2025-12-01T19:00:00-02:00",
        ] {
            assert_eq!(parse_rfc3339(text), Some(utc), "{text}");
        }
        for bad in [
            "",
            "yesterday",
            "2025-12-01T21:00:00+25:00",
            "2025-12-01T21:00:00+0100",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
