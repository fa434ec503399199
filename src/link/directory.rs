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
//!
//! The directory is the one owner of agent liveness: the live sessions and each agent's
//! generation, bumped on every connect and every disconnect under the same lock. The task
//! manager is told the generation a disconnect produced and, when the grace period is over,
//! asks the directory ([`AgentGateway::generation`]) whether it still holds; so the order in
//! which the link's threads call the manager cannot matter.

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

/// The live sessions and every agent's liveness generation, changed together.
#[derive(Default)]
struct Agents {
    sessions: HashMap<Arc<str>, Session>,
    /// Bumped on every connect and disconnect; kept for agents that went away, so a grace
    /// period can tell. Bounded by the agents in the token file.
    generations: HashMap<Arc<str>, u64>,
}

impl Agents {
    fn bump(&mut self, agent_id: &Arc<str>) -> u64 {
        let g = self.generations.entry(agent_id.clone()).or_insert(0);
        *g += 1;
        *g
    }
}

/// Connected agents by id.
pub struct AgentDirectory {
    agents: RwLock<Agents>,
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
            agents: RwLock::new(Agents::default()),
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
        let mut agents = self.agents.write();
        if agents.sessions.len() >= self.max_agents && !agents.sessions.contains_key(&agent_id) {
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
        agents.bump(&agent_id);
        let old = agents.sessions.insert(
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

    /// Removes the session if it is still the agent's current one. Then the agent is gone:
    /// returns its new liveness generation, for the task manager's grace period.
    pub fn unregister(&self, agent_id: &str, session_id: u64) -> Option<u64> {
        let mut agents = self.agents.write();
        let (id, session) = agents.sessions.remove_entry(agent_id)?;
        if session.id != session_id {
            // A newer session replaced this one: it stays.
            agents.sessions.insert(id, session);
            return None;
        }
        Some(agents.bump(&id))
    }

    /// Whether the agent has a stream open.
    pub fn is_connected(&self, agent_id: &str) -> bool {
        self.agents.read().sessions.contains_key(agent_id)
    }

    /// The connected agents, sorted by id.
    pub fn list(&self) -> Vec<AgentInfo> {
        let mut all: Vec<AgentInfo> = self
            .agents
            .read()
            .sessions
            .values()
            .map(|s| s.info.clone())
            .collect();
        all.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        all
    }

    /// Number of connected agents.
    pub fn len(&self) -> usize {
        self.agents.read().sessions.len()
    }

    /// True when no agent is connected.
    pub fn is_empty(&self) -> bool {
        self.agents.read().sessions.is_empty()
    }

    /// Ends every session (server shutdown): their writers close the calls.
    pub fn close_all(&self) {
        let mut agents = self.agents.write();
        let ids: Vec<Arc<str>> = agents.sessions.drain().map(|(id, _)| id).collect();
        for id in &ids {
            agents.bump(id);
        }
    }
}

impl AgentGateway for AgentDirectory {
    fn dispatch(&self, agent_id: &str, command: AgentCommand) -> Result<(), GatewayError> {
        let agents = self.agents.read();
        let session = agents
            .sessions
            .get(agent_id)
            .ok_or(GatewayError::NotConnected)?;
        session
            .tx
            .unbounded_send(request_from_command(agent_id, command))
            .map_err(|_| GatewayError::NotConnected)
    }

    fn generation(&self, agent_id: &str) -> u64 {
        self.agents
            .read()
            .generations
            .get(agent_id)
            .copied()
            .unwrap_or(0)
    }

    fn acknowledge(&self, agent_id: &str, instance: &str, seq: u64) {
        let agents = self.agents.read();
        let Some(session) = agents.sessions.get(agent_id) else {
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
    use crate::tasks::{ManagerConfig, TaskId, TaskManager, TaskSpec, TaskStatus};
    use std::time::{Duration, Instant};

    fn status(m: &TaskManager, id: TaskId) -> TaskStatus {
        m.get_task(id).expect("task exists").status
    }

    fn wait_status(m: &TaskManager, id: TaskId, want: TaskStatus) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while status(m, id) != want {
            assert!(Instant::now() < deadline, "task {id} never became {want}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn sleep_task() -> TaskSpec {
        TaskSpec::Shell {
            cmd: "sleep 9".into(),
            env: vec![],
            working_dir: None,
        }
    }

    /// A directory and a manager with a short disconnect grace, the manager reaching agents
    /// through the directory.
    fn directory_and_manager() -> (Arc<AgentDirectory>, TaskManager) {
        let dir = Arc::new(AgentDirectory::default());
        let cfg = ManagerConfig {
            disconnect_grace: Duration::from_millis(30),
            timer_tick: Duration::from_millis(5),
            ..ManagerConfig::default()
        };
        let m = TaskManager::start(cfg, dir.clone()).expect("starts");
        (dir, m)
    }

    /// The link's threads call the directory and the manager without ordering between
    /// them: the old stream's end may be handled around the new stream's start.
    #[test]
    fn a_reconnect_racing_the_old_streams_end_keeps_the_agents_tasks() {
        let (dir, m) = directory_and_manager();
        let s1 = dir.register("a1".into(), "p".into()).expect("first stream");
        let marker = dir.register("marker".into(), "p".into()).expect("marker");
        let before = m.send_task("a1", sleep_task(), None).expect("sent").id;

        // Stream 1 ends and unregisters; stream 2 registers; only then does stream 1's
        // thread tell the manager about the disconnect.
        let gone = dir.unregister("a1", s1.session_id).expect("was current");
        let _s2 = dir
            .register("a1".into(), "p".into())
            .expect("second stream");
        let after = m.send_task("a1", sleep_task(), None).expect("sent").id;
        m.agent_disconnected("a1", gone);

        // The marker's grace period, scheduled last, ends last: when its task has failed,
        // a1's grace period has been decided.
        let marker_task = m.send_task("marker", sleep_task(), None).expect("sent").id;
        let marker_gone = dir
            .unregister("marker", marker.session_id)
            .expect("was current");
        m.agent_disconnected("marker", marker_gone);
        wait_status(&m, marker_task, TaskStatus::Failed);

        assert_eq!(status(&m, before), TaskStatus::Sent, "a1 is connected");
        assert_eq!(status(&m, after), TaskStatus::Sent, "a1 is connected");
        m.shutdown();
    }

    #[test]
    fn an_agent_that_stays_away_loses_its_tasks_after_the_grace() {
        let (dir, m) = directory_and_manager();
        let s1 = dir.register("a1".into(), "p".into()).expect("stream");
        let t = m.send_task("a1", sleep_task(), None).expect("sent").id;
        let gone = dir.unregister("a1", s1.session_id).expect("was current");
        m.agent_disconnected("a1", gone);
        wait_status(&m, t, TaskStatus::Failed);
        m.shutdown();
    }

    #[test]
    fn connects_and_disconnects_move_the_generation_replaced_streams_do_not() {
        let dir = AgentDirectory::default();
        assert_eq!(dir.generation("a1"), 0, "never seen");
        let s1 = dir.register("a1".into(), "p".into()).expect("first");
        assert_eq!(dir.generation("a1"), 1);
        let s2 = dir.register("a1".into(), "p".into()).expect("replacement");
        assert_eq!(dir.generation("a1"), 2);
        assert_eq!(
            dir.unregister("a1", s1.session_id),
            None,
            "replaced: no disconnect"
        );
        assert_eq!(dir.generation("a1"), 2);
        assert_eq!(dir.unregister("a1", s2.session_id), Some(3));
        assert_eq!(dir.generation("a1"), 3);
        assert!(!dir.is_connected("a1"));
    }

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
        assert!(dir.unregister("a1", first.session_id).is_none(), "replaced");
        assert!(dir.unregister("a1", again.session_id).is_some());
        assert!(
            dir.register("a2".into(), "p".into()).is_ok(),
            "a freed place"
        );
    }
}
