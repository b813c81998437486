//! What can go wrong talking to the kernel. Every variant names the operation (and so the
//! interface) it was for, so a caller can log it as is.

use std::io;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    #[error("cannot open a netlink route socket: {source}")]
    Socket { source: io::Error },
    /// The kernel refused the request; `message` is its extended ack, when it gave one.
    #[error("cannot {op}: {source}{}", ext_ack(.message))]
    Kernel {
        op: String,
        source: io::Error,
        message: Option<String>,
    },
    #[error("cannot {op}: netlink socket error: {source}")]
    Io { op: String, source: io::Error },
    #[error("cannot {op}: no complete answer from the kernel within {timeout:?}")]
    Timeout { op: String, timeout: Duration },
    #[error("cannot {op}: malformed answer from the kernel: {detail}")]
    Malformed { op: String, detail: String },
    #[error("cannot {op}: {detail}")]
    InvalidArgument { op: String, detail: String },
}

fn ext_ack(message: &Option<String>) -> String {
    message
        .as_deref()
        .map(|m| format!(" ({m})"))
        .unwrap_or_default()
}

impl RtnlError {
    /// The errno behind the failure: the kernel's answer, or the socket call's.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Socket { source } | Self::Kernel { source, .. } | Self::Io { source, .. } => {
                source.raw_os_error()
            }
            Self::Timeout { .. } => Some(libc::ETIMEDOUT),
            Self::Malformed { .. } | Self::InvalidArgument { .. } => None,
        }
    }

    /// Whether the kernel said the thing to add is already there (EEXIST), which a
    /// caller re-applying a configuration may take as success.
    pub fn is_exists(&self) -> bool {
        matches!(self, Self::Kernel { .. }) && self.errno() == Some(libc::EEXIST)
    }

    /// Whether the kernel said the interface does not exist (ENODEV).
    pub fn is_no_device(&self) -> bool {
        matches!(self, Self::Kernel { .. }) && self.errno() == Some(libc::ENODEV)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_error_names_operation_and_errno() {
        let err = RtnlError::Kernel {
            op: "add address 10.0.0.2/24 to interface 5".into(),
            source: io::Error::from_raw_os_error(libc::EEXIST),
            message: None,
        };
        assert_eq!(
            err.to_string(),
            "cannot add address 10.0.0.2/24 to interface 5: File exists (os error 17)"
        );
        assert_eq!(err.errno(), Some(libc::EEXIST));
        assert!(err.is_exists());
    }

    #[test]
    fn extended_ack_is_appended() {
        let err = RtnlError::Kernel {
            op: "add route 10.0.0.1/24 via interface 5".into(),
            source: io::Error::from_raw_os_error(libc::EINVAL),
            message: Some("Invalid prefix for given prefix length".into()),
        };
        assert_eq!(
            err.to_string(),
            "cannot add route 10.0.0.1/24 via interface 5: Invalid argument (os error 22) \
             (Invalid prefix for given prefix length)"
        );
        assert!(!err.is_exists());
    }
}
