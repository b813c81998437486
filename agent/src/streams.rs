//! Stdio streams the host attached, waiting for the process that will use them.

use std::collections::HashMap;
use std::sync::Mutex;

use runm_protocol::{ProcessKey, StreamKind};

/// Most streams kept waiting at once: a host that attaches and never creates cannot make
/// the agent hold connections without end.
const MAX_WAITING: usize = 1024;

/// The streams of one process, as the host attached them (any may be missing).
#[derive(Debug)]
pub struct Attached<S> {
    pub stdin: Option<S>,
    pub stdout: Option<S>,
    pub stderr: Option<S>,
    pub tty: Option<S>,
}

/// Streams by process and kind. Generic over the stream type so that it can be tested
/// without vsock.
#[derive(Debug)]
pub struct StreamRegistry<S> {
    waiting: Mutex<HashMap<(ProcessKey, StreamKind), S>>,
}

impl<S> Default for StreamRegistry<S> {
    fn default() -> Self {
        Self {
            waiting: Mutex::new(HashMap::new()),
        }
    }
}

impl<S> StreamRegistry<S> {
    /// Keeps `stream` for `process`. A stream attached again replaces the old one, which
    /// is returned (to be closed).
    pub fn attach(&self, process: ProcessKey, kind: StreamKind, stream: S) -> Result<Option<S>, S> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let key = (process, kind);
        if waiting.len() >= MAX_WAITING && !waiting.contains_key(&key) {
            return Err(stream);
        }
        Ok(waiting.insert(key, stream))
    }

    /// Takes every stream attached for `process`.
    pub fn take(&self, process: &ProcessKey) -> Attached<S> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let mut take = |kind| waiting.remove(&(process.clone(), kind));
        Attached {
            stdin: take(StreamKind::Stdin),
            stdout: take(StreamKind::Stdout),
            stderr: take(StreamKind::Stderr),
            tty: take(StreamKind::Tty),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_go_to_their_process_once() {
        let reg = StreamRegistry::default();
        let init = ProcessKey::init("c");
        let exec = ProcessKey::exec("c", "e");
        assert!(matches!(
            reg.attach(init.clone(), StreamKind::Stdout, 1),
            Ok(None)
        ));
        assert!(matches!(
            reg.attach(exec.clone(), StreamKind::Stdout, 2),
            Ok(None)
        ));
        assert!(matches!(
            reg.attach(init.clone(), StreamKind::Stdout, 3),
            Ok(Some(1))
        ));
        assert!(matches!(
            reg.attach(init.clone(), StreamKind::Tty, 4),
            Ok(None)
        ));
        let got = reg.take(&init);
        assert_eq!(
            (got.stdin, got.stdout, got.stderr, got.tty),
            (None, Some(3), None, Some(4))
        );
        let again = reg.take(&init);
        assert!(again.stdout.is_none() && again.tty.is_none());
        assert_eq!(reg.take(&exec).stdout, Some(2));
    }

    #[test]
    fn waiting_streams_are_bounded() {
        let reg = StreamRegistry::default();
        for i in 0..MAX_WAITING {
            let key = ProcessKey::exec("c", &i.to_string());
            assert!(reg.attach(key, StreamKind::Stdin, i).is_ok());
        }
        assert!(matches!(
            reg.attach(ProcessKey::init("x"), StreamKind::Stdin, 7),
            Err(7)
        ));
    }
}
