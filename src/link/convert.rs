//! Translation between the protocol's messages and the task manager's own types. The only
//! place where `proto` and `tasks` meet on the server side.

use std::sync::Arc;

use crate::proto::{self, docker_operation, task_request, task_response};
use crate::tasks::{AgentCommand, AgentReport, DockerOp, ReportStatus, TaskSpec};

/// A response from an authenticated agent, in the manager's terms. The agent id comes from
/// the stream's credentials, never from the message; `instance` is the agent process the
/// stream announced, if it numbers its responses.
pub fn report_from_response(
    agent_id: &Arc<str>,
    instance: Option<&Arc<str>>,
    resp: proto::TaskResponse,
) -> AgentReport {
    let status = match resp.status.enum_value() {
        Ok(task_response::Status::COMPLETED) => ReportStatus::Completed,
        Ok(task_response::Status::FAILURE) => ReportStatus::Failure,
        Ok(task_response::Status::IN_PROGRESS) => ReportStatus::InProgress,
        Ok(task_response::Status::UNKNOWN) | Err(_) => ReportStatus::Unknown,
    };
    let mut report = AgentReport::new(agent_id.clone(), resp.task_id, status);
    report.is_final = resp.is_final;
    report.cancelled = resp.cancelled;
    if let Some(instance) = instance.filter(|_| resp.seq > 0) {
        report.instance = Some(instance.clone());
        report.seq = resp.seq;
    }
    match resp.response {
        Some(task_response::Response::ShellExecute(out)) => {
            report.stdout = out.stdout;
            report.stderr = out.stderr;
            // proto3 has no presence: 0 is an exit code on a final COMPLETED response only;
            // elsewhere only a non-zero value says something.
            let completed = status == ReportStatus::Completed && !resp.cancelled;
            if resp.is_final && (completed || out.exit_code != 0) {
                report.exit_code = Some(out.exit_code);
            }
        }
        Some(task_response::Response::TaskCancel(ack)) => {
            report.cancel_message = Some(ack.message);
        }
        None => {}
    }
    report
}

/// The acknowledgement that agent process's responses up to `upto` are durable.
pub fn ack_request(agent_id: &str, upto: u64) -> proto::TaskRequest {
    let mut req = proto::TaskRequest::new();
    req.agent_id = agent_id.to_string();
    let mut ack = proto::ResponseAck::new();
    ack.upto = upto;
    req.task = Some(task_request::Task::ResponseAck(ack));
    req
}

/// The request that carries `command` to agent `agent_id`.
pub fn request_from_command(agent_id: &str, command: AgentCommand) -> proto::TaskRequest {
    let mut req = proto::TaskRequest::new();
    req.agent_id = agent_id.to_string();
    match command {
        AgentCommand::Run { task_id, spec } => {
            req.task_id = task_id.to_string();
            req.task = Some(match spec {
                TaskSpec::Shell {
                    cmd,
                    env,
                    working_dir,
                } => {
                    let mut shell = proto::ShellExecute::new();
                    shell.cmd = cmd;
                    shell.env = env.into_iter().collect();
                    shell.working_dir = working_dir.unwrap_or_default();
                    task_request::Task::ShellExecute(shell)
                }
                TaskSpec::Docker(op) => task_request::Task::DockerOperation(docker_operation(op)),
            });
        }
        AgentCommand::Cancel { task_id, reason } => {
            req.task_id = task_id.to_string();
            let mut cancel = proto::TaskCancel::new();
            cancel.reason = reason;
            req.task = Some(task_request::Task::TaskCancel(cancel));
        }
    }
    req
}

fn docker_operation(op: DockerOp) -> proto::DockerOperation {
    let mut msg = proto::DockerOperation::new();
    msg.operation = Some(match op {
        DockerOp::Run { image } => {
            let mut m = proto::DockerRun::new();
            m.img = image;
            docker_operation::Operation::DockerRun(m)
        }
        DockerOp::Start { id } => {
            let mut m = proto::DockerStart::new();
            m.id = id;
            docker_operation::Operation::DockerStart(m)
        }
        DockerOp::Stop { id } => {
            let mut m = proto::DockerStop::new();
            m.id = id;
            docker_operation::Operation::DockerStop(m)
        }
        DockerOp::Logs { id } => {
            let mut m = proto::DockerLogs::new();
            m.id = id;
            docker_operation::Operation::DockerLogs(m)
        }
    });
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message;

    #[test]
    fn a_final_completed_response_carries_its_exit_code() {
        let mut resp = proto::TaskResponse::new();
        resp.task_id = "t".into();
        resp.agent_id = "someone-else".into();
        resp.status = task_response::Status::COMPLETED.into();
        resp.is_final = true;
        let mut out = proto::ShellExecuteResponse::new();
        out.exit_code = 0;
        out.stdout = "hi\n".into();
        resp.response = Some(task_response::Response::ShellExecute(out));
        let agent: Arc<str> = Arc::from("a1");
        let rep = report_from_response(&agent, None, resp);
        assert_eq!(
            &*rep.agent_id, "a1",
            "identity comes from the stream, not the message"
        );
        assert_eq!(rep.exit_code, Some(0));
        assert_eq!(rep.stdout, "hi\n");
        assert_eq!(rep.status, ReportStatus::Completed);
    }

    #[test]
    fn an_unknown_enum_number_is_malformed() {
        let mut resp = proto::TaskResponse::new();
        resp.status = protobuf::EnumOrUnknown::from_i32(42);
        let rep = report_from_response(&Arc::from("a"), None, resp);
        assert_eq!(rep.status, ReportStatus::Unknown);
    }

    #[test]
    fn commands_keep_the_wire_field_numbers() {
        let id = uuid::Uuid::nil();
        let req = request_from_command(
            "a1",
            AgentCommand::Run {
                task_id: id,
                spec: TaskSpec::Docker(DockerOp::Run {
                    image: "x; rm -rf /".into(),
                }),
            },
        );
        let bytes = req.write_to_bytes().expect("encodes");
        // field 4 (docker_operation), wire type 2 => tag byte 0x22
        assert!(bytes.contains(&0x22));
        let back = proto::TaskRequest::parse_from_bytes(&bytes).expect("decodes");
        match back.task {
            Some(task_request::Task::DockerOperation(op)) => match op.operation {
                Some(docker_operation::Operation::DockerRun(run)) => {
                    assert_eq!(run.img, "x; rm -rf /")
                }
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        }
    }
}
