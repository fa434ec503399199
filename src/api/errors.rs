//! Where task-manager and hub errors become HTTP statuses: the single mapping at the edge.

use serde_json::json;

use crate::http::ApiError;
use crate::limits::Limit;
use crate::sse::HubError;
use crate::tasks::TaskError;

impl From<TaskError> for ApiError {
    fn from(e: TaskError) -> Self {
        let msg = e.to_string();
        match e {
            TaskError::Invalid { field, .. } => {
                ApiError::bad_request(msg).with_details(json!({ "field": field }))
            }
            TaskError::AgentNotConnected { agent_id, task_id } => ApiError::service_unavailable(
                msg, None,
            )
            .with_details(
                json!({ "agent_id": agent_id, "task_id": task_id.to_string(), "status": "failed" }),
            ),
            TaskError::NotFound(id) => {
                ApiError::not_found(msg).with_details(json!({ "task_id": id.to_string() }))
            }
            TaskError::AlreadyFinished { task_id, status } => ApiError::conflict(msg)
                .with_details(json!({ "task_id": task_id.to_string(), "status": status.as_str() })),
            TaskError::RegistryFull { max_tasks } => ApiError::too_many_requests(msg, None)
                .with_details(json!({ "max_tasks": max_tasks }))
                .with_limit(Limit::Tasks),
            TaskError::ShuttingDown => ApiError::service_unavailable(msg, None),
            TaskError::StorageUnavailable { task_id, .. } => {
                let e = ApiError::service_unavailable(msg, None);
                match task_id {
                    Some(id) => {
                        e.with_details(json!({ "task_id": id.to_string(), "status": "failed" }))
                    }
                    None => e,
                }
            }
        }
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        match e {
            HubError::TooManyClients(limit) => ApiError::service_unavailable(e.to_string(), None)
                .with_details(json!({ "limit": limit }))
                .with_limit(Limit::SseClients),
            HubError::ShuttingDown => ApiError::service_unavailable(e.to_string(), None),
        }
    }
}
