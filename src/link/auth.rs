//! Agent credentials: the token file and constant-time checks. Read once at start-up; no
//! credential is compiled in, and tokens never appear in logs.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use crate::secrets::constant_time_eq;

/// Why the agent token file could not be used.
#[derive(Debug)]
pub enum TokenFileError {
    /// The file could not be read.
    Read(std::io::Error),
    /// The file is not a JSON object of strings.
    Format(String),
}

impl fmt::Display for TokenFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenFileError::Read(e) => write!(f, "cannot read agent token file: {e}"),
            TokenFileError::Format(m) => write!(
                f,
                "agent token file must be a JSON object mapping agent id to token, e.g. {{\"agent1\": \"secret\"}}: {m}"
            ),
        }
    }
}

impl std::error::Error for TokenFileError {}

/// The agents allowed to connect and their tokens.
#[derive(Clone, Default)]
pub struct AgentTokens {
    tokens: HashMap<String, String>,
}

impl fmt::Debug for AgentTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the tokens themselves.
        f.debug_struct("AgentTokens")
            .field("agents", &self.tokens.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl AgentTokens {
    /// Tokens from a map (dev mode, tests).
    pub fn from_map(tokens: HashMap<String, String>) -> Self {
        AgentTokens { tokens }
    }

    /// Reads a JSON object `{"agent id": "token", ...}`.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(TokenFileError::Read)?;
        Self::parse(&text)
    }

    /// Parses the token file's JSON text.
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| TokenFileError::Format(e.to_string()))?;
        let obj = value
            .as_object()
            .ok_or_else(|| TokenFileError::Format("not an object".into()))?;
        let mut tokens = HashMap::new();
        for (id, token) in obj {
            let token = token.as_str().filter(|t| !t.is_empty()).ok_or_else(|| {
                TokenFileError::Format(format!("token of agent {id:?} must be a non-empty string"))
            })?;
            if id.is_empty() {
                return Err(TokenFileError::Format("agent id must not be empty".into()));
            }
            tokens.insert(id.clone(), token.to_string());
        }
        Ok(AgentTokens { tokens })
    }

    /// Whether `agent_id` may connect at all.
    pub fn contains(&self, agent_id: &str) -> bool {
        self.tokens.contains_key(agent_id)
    }

    /// Number of agents configured.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True when no agent may connect.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Whether `token` is the token of `agent_id`, compared in constant time.
    pub fn check(&self, agent_id: &str, token: &str) -> bool {
        match self.tokens.get(agent_id) {
            Some(expected) => constant_time_eq(expected.as_bytes(), token.as_bytes()),
            None => {
                // Same work as a real comparison, so timing does not reveal which ids exist.
                let _ = constant_time_eq(token.as_bytes(), token.as_bytes());
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        let t = AgentTokens::parse(r#"{"agent1": "secret_token1"}"#).expect("parses");
        assert!(t.check("agent1", "secret_token1"));
        assert!(!t.check("agent1", "secret_token"));
        assert!(!t.check("agent1", "secret_token12"));
        assert!(!t.check("agent1", ""));
        assert!(!t.check("agent2", "secret_token1"));
    }

    #[test]
    fn a_bad_token_file_says_what_is_expected() {
        for bad in ["[]", "{\"a\": 1}", "{\"a\": \"\"}", "not json"] {
            let err = AgentTokens::parse(bad).expect_err(bad).to_string();
            assert!(err.contains("JSON object"), "{err}");
        }
    }

    #[test]
    fn debug_output_never_shows_tokens() {
        let t = AgentTokens::parse(r#"{"agent1": "secret_token1"}"#).expect("parses");
        assert!(!format!("{t:?}").contains("secret"));
    }
}
