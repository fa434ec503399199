//! A minimal agent written directly against the protocol with grpcio: only the wire
//! contract's fields, so tests can play an original agent, a flooding agent, or a broken one.

use std::sync::Arc;

use futures::executor::block_on;
use futures::{SinkExt, StreamExt};
use grpcio::{
    CallOption, ChannelBuilder, ClientDuplexReceiver, ClientDuplexSender, EnvBuilder,
    MetadataBuilder, WriteFlags,
};
use nodelink::proto::{
    task_response, AgentServiceClient, ShellExecuteResponse, TaskRequest, TaskResponse,
};

/// One open StreamTasks call.
pub struct FakeAgent {
    pub id: String,
    pub sink: ClientDuplexSender<TaskResponse>,
    pub requests: ClientDuplexReceiver<TaskRequest>,
    _client: AgentServiceClient,
}

/// A client of the agent service at `addr`.
pub fn client(addr: &str) -> AgentServiceClient {
    let env = Arc::new(EnvBuilder::new().cq_count(1).build());
    AgentServiceClient::new(ChannelBuilder::new(env).connect(addr))
}

/// Call options carrying the agent's credentials (`token: None` leaves it out).
pub fn credentials(id: &str, token: Option<&str>) -> CallOption {
    let mut meta = MetadataBuilder::new();
    meta.add_str("agent_id", id).expect("metadata");
    if let Some(t) = token {
        meta.add_str("agent_token", t).expect("metadata");
    }
    CallOption::default().headers(meta.build())
}

impl FakeAgent {
    /// Opens the stream with `id`/`token`.
    pub fn connect(addr: &str, id: &str, token: &str) -> FakeAgent {
        let c = client(addr);
        let (sink, requests) = c
            .stream_tasks_opt(credentials(id, Some(token)))
            .expect("call starts");
        FakeAgent {
            id: id.to_string(),
            sink,
            requests,
            _client: c,
        }
    }

    /// Opens the stream as an agent that takes acknowledgements: process `instance`, which
    /// still knows the tasks in `tasks` (comma-separated).
    pub fn connect_acking(
        addr: &str,
        id: &str,
        token: &str,
        instance: &str,
        tasks: &str,
    ) -> FakeAgent {
        let c = client(addr);
        let mut meta = MetadataBuilder::new();
        meta.add_str("agent_id", id).expect("metadata");
        meta.add_str("agent_token", token).expect("metadata");
        meta.add_str("agent_features", "acks").expect("metadata");
        meta.add_str("agent_instance", instance).expect("metadata");
        meta.add_str("agent_tasks", tasks).expect("metadata");
        let (sink, requests) = c
            .stream_tasks_opt(CallOption::default().headers(meta.build()))
            .expect("call starts");
        FakeAgent {
            id: id.to_string(),
            sink,
            requests,
            _client: c,
        }
    }

    /// The next request from the server.
    pub fn next_request(&mut self) -> TaskRequest {
        block_on(self.requests.next())
            .expect("a request")
            .expect("stream ok")
    }

    /// Sends a response; `buffered` lets grpcio batch it with the next one.
    pub fn send(&mut self, resp: TaskResponse, buffered: bool) {
        let flags = WriteFlags::default().buffer_hint(buffered);
        block_on(self.sink.send((resp, flags))).expect("send");
    }

    /// An IN_PROGRESS response carrying `stdout`.
    pub fn output(&self, task_id: &str, stdout: &str) -> TaskResponse {
        let mut resp = self.response(task_id, task_response::Status::IN_PROGRESS, false);
        let mut sh = ShellExecuteResponse::new();
        sh.stdout = stdout.to_string();
        resp.response = Some(task_response::Response::ShellExecute(sh));
        resp
    }

    /// The final COMPLETED response with `exit_code`.
    pub fn exit(&self, task_id: &str, exit_code: i32) -> TaskResponse {
        let mut resp = self.response(task_id, task_response::Status::COMPLETED, true);
        let mut sh = ShellExecuteResponse::new();
        sh.exit_code = exit_code;
        resp.response = Some(task_response::Response::ShellExecute(sh));
        resp
    }

    fn response(
        &self,
        task_id: &str,
        status: task_response::Status,
        is_final: bool,
    ) -> TaskResponse {
        let mut resp = TaskResponse::new();
        resp.agent_id = self.id.clone();
        resp.task_id = task_id.to_string();
        resp.status = status.into();
        resp.is_final = is_final;
        resp
    }
}
