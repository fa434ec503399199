//! The directory of connected agents: one live session per agent id, and the
//! [`AgentGateway`] the task manager sends through.
//!
//! Each session owns an unbounded futures channel to the session's writer future, which runs
//! on a grpcio completion-queue thread and feeds the agent's stream. Queueing is therefore
//! non-blocking for callers (HTTP, timer and response threads); the queue is bounded in
//! practice by the task registry's bound, since each task sends at most a run and a cancel.
//! A second connection with the same agent id replaces the first: dropping the old sender
//! ends the old writer, which closes that call cleanly. At most `max_agents` distinct agents
//! are connected at once; a replacement does not count as one more.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use parking_lot::RwLock;

use super::convert::{ack_request, request_from_command};
use crate::proto::TaskRequest;
use crate::tasks::{AgentCommand, AgentGateway, GatewayError};

/// A connected agent as readers see it.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    /// The agent's id.
    pub agent_id: Arc<str>,
    /// When its current stream opened.
    pub connected_at: SystemTime,
    /// Its address as gRPC reports it (e.g. `ipv4:127.0.0.1:50312`).
    pub peer: String,
}

struct Session {
    id: u64,
    info: AgentInfo,
    tx: UnboundedSender<TaskRequest>,
    /// The agent process, when it numbers its responses and takes acknowledgements.
    acking: Option<Arc<str>>,
}

/// Connected agents by id.
pub struct AgentDirectory {
    sessions: RwLock<HashMap<Arc<str>, Session>>,
    next_session: AtomicU64,
    max_agents: usize,
}

impl Default for AgentDirectory {
    /// No bound on the number of agents (tests, embedding).
    fn default() -> Self {
        AgentDirectory::new(usize::MAX)
    }
}

/// Why a stream could not be registered: `max_agents` other agents are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyAgents {
    /// The configured maximum.
    pub limit: usize,
}

impl std::fmt::Display for TooManyAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "too many agents connected (limit {}); raise --max-agents on the server",
            self.limit
        )
    }
}

impl std::error::Error for TooManyAgents {}

/// A registered session: its number and the queue its writer drains.
pub struct Registration {
    /// Identifies this session among reconnections of the same agent.
    pub session_id: u64,
    /// Requests to write to the agent's stream.
    pub requests: UnboundedReceiver<TaskRequest>,
    /// Whether an older session of the same agent was replaced.
    pub replaced: bool,
}

impl AgentDirectory {
    /// A directory admitting at most `max_agents` agents at once.
    pub fn new(max_agents: usize) -> Self {
        AgentDirectory {
            sessions: RwLock::new(HashMap::new()),
            next_session: AtomicU64::new(0),
            max_agents,
        }
    }

    /// Makes `agent_id`'s new stream the one tasks go to, unless it would be one agent more
    /// than `max_agents`.
    pub fn register(
        &self,
        agent_id: Arc<str>,
        peer: String,
    ) -> Result<Registration, TooManyAgents> {
        self.register_acking(agent_id, peer, None)
    }

    /// Like [`AgentDirectory::register`], for an agent process (`acking`) that numbers its
    /// responses and takes acknowledgements.
    pub fn register_acking(
        &self,
        agent_id: Arc<str>,
        peer: String,
        acking: Option<Arc<str>>,
    ) -> Result<Registration, TooManyAgents> {
        let mut sessions = self.sessions.write();
        if sessions.len() >= self.max_agents && !sessions.contains_key(&agent_id) {
            return Err(TooManyAgents {
                limit: self.max_agents,
            });
        }
        let (tx, requests) = unbounded();
        let session_id = self.next_session.fetch_add(1, Ordering::Relaxed) + 1;
        let info = AgentInfo {
            agent_id: agent_id.clone(),
            connected_at: SystemTime::now(),
            peer,
        };
        let old = sessions.insert(
            agent_id,
            Session {
                id: session_id,
                info,
                tx,
                acking,
            },
        );
        Ok(Registration {
            session_id,
            requests,
            replaced: old.is_some(),
        })
    }

    /// Removes the session if it is still the agent's current one; true when it was.
    pub fn unregister(&self, agent_id: &str, session_id: u64) -> bool {
        let mut sessions = self.sessions.write();
        if sessions.get(agent_id).is_some_and(|s| s.id == session_id) {
            sessions.remove(agent_id);
            true
        } else {
            false
        }
    }

    /// Whether the agent has a stream open.
    pub fn is_connected(&self, agent_id: &str) -> bool {
        self.sessions.read().contains_key(agent_id)
    }

    /// The connected agents, sorted by id.
    pub fn list(&self) -> Vec<AgentInfo> {
        let mut all: Vec<AgentInfo> = self
            .sessions
            .read()
            .values()
            .map(|s| s.info.clone())
            .collect();
        all.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        all
    }

    /// Number of connected agents.
    pub fn len(&self) -> usize {
        self.sessions.read().len()
    }

    /// True when no agent is connected.
    pub fn is_empty(&self) -> bool {
        self.sessions.read().is_empty()
    }

    /// Ends every session (server shutdown): their writers close the calls.
    pub fn close_all(&self) {
        self.sessions.write().clear();
    }
}

impl AgentGateway for AgentDirectory {
    fn dispatch(&self, agent_id: &str, command: AgentCommand) -> Result<(), GatewayError> {
        let sessions = self.sessions.read();
        let session = sessions.get(agent_id).ok_or(GatewayError::NotConnected)?;
        session
            .tx
            .unbounded_send(request_from_command(agent_id, command))
            .map_err(|_| GatewayError::NotConnected)
    }

    fn acknowledge(&self, agent_id: &str, instance: &str, seq: u64) {
        let sessions = self.sessions.read();
        let Some(session) = sessions.get(agent_id) else {
            return; // it will learn what is durable when it reconnects
        };
        if session.acking.as_deref() == Some(instance) {
            let _ = session.tx.unbounded_send(ack_request(agent_id, seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_limit_only_a_reconnecting_agent_is_admitted() {
        let dir = AgentDirectory::new(1);
        let first = dir.register("a1".into(), "p".into()).expect("first");
        assert!(!first.replaced);
        assert_eq!(
            dir.register("a2".into(), "p".into()).err(),
            Some(TooManyAgents { limit: 1 })
        );
        let again = dir.register("a1".into(), "p".into()).expect("replacement");
        assert!(again.replaced);
        assert!(dir.unregister("a1", again.session_id));
        assert!(
            dir.register("a2".into(), "p".into()).is_ok(),
            "a freed place"
        );
    }
}
