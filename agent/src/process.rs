//! The processes the agent runs (containers' inits and exec'd processes): their pids,
//! exit statuses, output relays and terminals, and waiting for them.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use runm_protocol::ProcessKey;

/// How long `Wait` waits, after the process exited, for output relays that make no
/// progress: a background process that kept the process's stdout open would otherwise
/// hold the answer back for ever.
pub const OUTPUT_GRACE: Duration = Duration::from_secs(5);

/// One process. Shared between the table, its relays and the reaper's callback.
#[derive(Debug, Default)]
pub struct Proc {
    state: Mutex<ProcState>,
    changed: Condvar,
    /// The terminal's master side, for `ResizeTty`.
    tty: Mutex<Option<Arc<File>>>,
}

#[derive(Debug, Default)]
struct ProcState {
    pid: Option<i32>,
    status: Option<i32>,
    /// Output relays (stdout, stderr or terminal) not yet drained and closed.
    open_outputs: usize,
    /// When the process exited or a relay last moved bytes, whichever is later.
    last_progress: Option<Instant>,
}

impl Proc {
    fn lock(&self) -> MutexGuard<'_, ProcState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pid(&self) -> Option<i32> {
        self.lock().pid
    }

    pub fn set_pid(&self, pid: i32) {
        self.lock().pid = Some(pid);
    }

    /// The exit status, once the process has exited.
    pub fn status(&self) -> Option<i32> {
        self.lock().status
    }

    pub fn set_exited(&self, status: i32) {
        let mut state = self.lock();
        state.status = Some(status);
        state.last_progress = Some(Instant::now());
        self.changed.notify_all();
    }

    /// An output relay starts; it must call [`Proc::output_closed`] when done.
    pub fn output_opened(&self) {
        self.lock().open_outputs += 1;
    }

    /// An output relay moved bytes.
    pub fn output_progress(&self) {
        let mut state = self.lock();
        if state.status.is_some() {
            state.last_progress = Some(Instant::now());
        }
    }

    pub fn output_closed(&self) {
        let mut state = self.lock();
        state.open_outputs = state.open_outputs.saturating_sub(1);
        self.changed.notify_all();
    }

    pub fn set_tty(&self, master: Arc<File>) {
        *self.tty.lock().unwrap_or_else(|e| e.into_inner()) = Some(master);
    }

    pub fn tty(&self) -> Option<Arc<File>> {
        self.tty.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until the process has exited and its output relays are drained and closed
    /// (or have stalled for `grace` since), and returns its status.
    pub fn wait(&self, grace: Duration) -> i32 {
        let mut state = self.lock();
        loop {
            let timeout = match (state.status, state.last_progress) {
                (Some(status), _) if state.open_outputs == 0 => return status,
                (Some(status), Some(since)) => match grace.checked_sub(since.elapsed()) {
                    Some(left) if !left.is_zero() => left,
                    _ => {
                        eprintln!(
                            "runm-agent: pid {:?} exited {grace:?} ago; {} output stream(s) still open",
                            state.pid, state.open_outputs
                        );
                        return status;
                    }
                },
                _ => Duration::from_secs(3600),
            };
            state = self
                .changed
                .wait_timeout(state, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Every process by key.
#[derive(Debug, Default)]
pub struct ProcessTable {
    procs: Mutex<HashMap<ProcessKey, Arc<Proc>>>,
}

impl ProcessTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<ProcessKey, Arc<Proc>>> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a process not yet started; `None` if the key is taken.
    pub fn insert_new(&self, key: &ProcessKey) -> Option<Arc<Proc>> {
        let mut procs = self.lock();
        if procs.contains_key(key) {
            return None;
        }
        let proc = Arc::new(Proc::default());
        procs.insert(key.clone(), Arc::clone(&proc));
        Some(proc)
    }

    pub fn remove(&self, key: &ProcessKey) {
        self.lock().remove(key);
    }

    pub fn get(&self, key: &ProcessKey) -> Option<Arc<Proc>> {
        self.lock().get(key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn wait_answers_at_once_after_exit_without_outputs() {
        let p = Proc::default();
        p.set_exited(3);
        assert_eq!(p.wait(OUTPUT_GRACE), 3);
        assert_eq!(p.wait(OUTPUT_GRACE), 3, "several waiters");
    }

    #[test]
    fn wait_waits_for_exit_and_drained_outputs() {
        let p = Arc::new(Proc::default());
        p.output_opened();
        p.output_opened();
        let q = Arc::clone(&p);
        let waiter = thread::spawn(move || q.wait(Duration::from_secs(60)));
        p.set_exited(137);
        p.output_closed();
        thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "one output is still open");
        p.output_closed();
        assert_eq!(waiter.join().unwrap(), 137);
    }

    #[test]
    fn stalled_outputs_do_not_hold_wait_for_ever() {
        let p = Proc::default();
        p.output_opened();
        p.set_exited(0);
        let start = Instant::now();
        assert_eq!(p.wait(Duration::from_millis(100)), 0);
        assert!(start.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn keys_are_unique() {
        let t = ProcessTable::default();
        let k = ProcessKey::init("c");
        let p = t.insert_new(&k).unwrap();
        assert!(t.insert_new(&k).is_none());
        p.set_pid(5);
        assert_eq!(t.get(&k).unwrap().pid(), Some(5));
        t.remove(&k);
        assert!(t.get(&k).is_none());
    }
}
