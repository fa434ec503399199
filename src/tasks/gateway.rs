//! The manager's only way down to agents. The agent link implements it; tests implement it
//! with a recording fake. Calls must return at once: they run on HTTP, timer and response
//! threads and must never wait for a slow peer. The gateway is also the one owner of agent
//! liveness (who is connected, and since which connect or disconnect).

use super::model::AgentCommand;

/// Why a command could not be handed to an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewayError {
    /// The agent has no open stream.
    NotConnected,
}

/// Hands commands to connected agents.
pub trait AgentGateway: Send + Sync + 'static {
    /// Queues `command` on the agent's stream without blocking.
    fn dispatch(&self, agent_id: &str, command: AgentCommand) -> Result<(), GatewayError>;

    /// The agent's liveness generation: the gateway bumps it on every connect and every
    /// disconnect of the agent, so a disconnect grace period (which carries the generation its
    /// disconnect produced) applies only while the agent has not come back since.
    fn generation(&self, agent_id: &str) -> u64;

    /// Tells agent process `instance` that its responses up to `seq` are durable, so it may
    /// forget them; without blocking, and only if that process is connected and asked for it.
    fn acknowledge(&self, _agent_id: &str, _instance: &str, _seq: u64) {}
}
