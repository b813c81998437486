//! Requests the host sends and the agent's responses.

use serde::{Deserialize, Serialize};

/// Longest free-text field the host accepts from the guest.
pub const MAX_TEXT_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Is the agent there, and what is it?
    Ping,
    /// Power the VM off (after replying).
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Pong(AgentInfo),
    Ok,
    Error { message: String },
}

/// What the agent says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentInfo {
    pub agent_version: String,
    pub protocol_version: u32,
    /// The guest kernel's release (`uname -r`).
    pub kernel: String,
}

impl Response {
    /// Checks what a well-behaved agent would never send: over-long text. The host calls
    /// this on every response, since the guest is untrusted.
    pub fn validate(&self) -> Result<(), String> {
        let texts: Vec<(&str, &str)> = match self {
            Response::Pong(info) => vec![
                ("agent_version", &info.agent_version),
                ("kernel", &info.kernel),
            ],
            Response::Ok => vec![],
            Response::Error { message } => vec![("message", message)],
        };
        match texts.iter().find(|(_, t)| t.len() > MAX_TEXT_LEN) {
            Some((field, t)) => Err(format!(
                "agent response field `{field}` is {} bytes, over the {MAX_TEXT_LEN}-byte limit",
                t.len()
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_tagged_snake_case() {
        let json = serde_json::to_string(&Request::Ping).unwrap();
        assert_eq!(json, r#"{"type":"ping"}"#);
        let pong = Response::Pong(AgentInfo {
            agent_version: "0.1.0".into(),
            protocol_version: 1,
            kernel: "6.12.117".into(),
        });
        let json = serde_json::to_string(&pong).unwrap();
        assert_eq!(
            json,
            r#"{"type":"pong","agent_version":"0.1.0","protocol_version":1,"kernel":"6.12.117"}"#
        );
    }

    #[test]
    fn overlong_text_fails_validation() {
        let r = Response::Error {
            message: "x".repeat(MAX_TEXT_LEN + 1),
        };
        assert!(r.validate().unwrap_err().contains("`message`"));
        assert!(Response::Ok.validate().is_ok());
    }

    #[test]
    fn extra_fields_in_agent_info_are_rejected() {
        let r: Result<Response, _> = serde_json::from_str(
            r#"{"type":"pong","agent_version":"1","protocol_version":1,"kernel":"k","x":1}"#,
        );
        assert!(r.is_err());
    }
}
