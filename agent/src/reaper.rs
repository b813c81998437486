//! PID 1's one reaper. Every process whose parent dies is reparented to the agent (the
//! containers' init and exec'd processes among them, once libcontainer's intermediate
//! process exits), so one thread reaps all children and hands each exit status to
//! whoever registered an interest in that pid, or keeps it until someone does.
//!
//! It waits for SIGCHLD with `sigwait`: the signal must be blocked in every thread, so
//! [`block_sigchld`] runs before the agent starts any thread. (Children started with
//! `std::process::Command` get an empty signal mask back.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Most unclaimed exit statuses kept; past this the reaper forgets the oldest.
const MAX_UNCLAIMED: usize = 4096;

type Watcher = Box<dyn FnOnce(i32) + Send>;

/// Exit statuses by pid, shell style (see [`shell_status`]).
#[derive(Default)]
pub struct Reaper {
    state: Mutex<ReaperState>,
}

#[derive(Default)]
struct ReaperState {
    watchers: HashMap<i32, Watcher>,
    /// Statuses nobody asked for yet, with the order they came in.
    unclaimed: HashMap<i32, (u64, i32)>,
    seq: u64,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper").finish_non_exhaustive()
    }
}

/// How a shell reports a process's end: its exit code, or 128 + the signal that killed it.
/// `None` for stops and continues, which are not ends.
pub fn shell_status(status: WaitStatus) -> Option<(i32, i32)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), code)),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), 128 + sig as i32)),
        _ => None,
    }
}

/// Blocks SIGCHLD in the calling thread and in every thread it starts from now on.
pub fn block_sigchld() -> nix::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.thread_block()
}

impl Reaper {
    /// Starts the reaping thread. SIGCHLD must be blocked already ([`block_sigchld`]).
    pub fn start() -> std::io::Result<Arc<Self>> {
        let reaper = Arc::new(Self::default());
        let r = Arc::clone(&reaper);
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || r.run())?;
        Ok(reaper)
    }

    fn run(&self) {
        let mut set = SigSet::empty();
        set.add(Signal::SIGCHLD);
        loop {
            self.reap_all();
            if let Err(e) = set.wait() {
                eprintln!("runm-agent: sigwait: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }

    /// Reaps every child that has exited.
    fn reap_all(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => {
                    if let Some((pid, code)) = shell_status(status) {
                        self.exited(pid, code);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(e) => {
                    eprintln!("runm-agent: waitpid: {e}");
                    return;
                }
            }
        }
    }

    /// Records that `pid` ended with `status`.
    pub fn exited(&self, pid: i32, status: i32) {
        crate::debug::log(|| format!("reaped pid {pid}: status {status}"));
        let watcher = {
            let mut state = self.lock();
            match state.watchers.remove(&pid) {
                Some(w) => w,
                None => {
                    state.seq += 1;
                    let seq = state.seq;
                    state.unclaimed.insert(pid, (seq, status));
                    if state.unclaimed.len() > MAX_UNCLAIMED {
                        if let Some(oldest) = state
                            .unclaimed
                            .iter()
                            .min_by_key(|(_, (s, _))| *s)
                            .map(|(p, _)| *p)
                        {
                            state.unclaimed.remove(&oldest);
                        }
                    }
                    return;
                }
            }
        };
        watcher(status);
    }

    /// Calls `on_exit` with `pid`'s status once it has exited (at once if it already has).
    /// One watcher per pid: a second replaces the first.
    pub fn watch(&self, pid: i32, on_exit: impl FnOnce(i32) + Send + 'static) {
        let status = {
            let mut state = self.lock();
            match state.unclaimed.remove(&pid) {
                Some((_, status)) => status,
                None => {
                    state.watchers.insert(pid, Box::new(on_exit));
                    return;
                }
            }
        };
        on_exit(status);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReaperState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn statuses_are_shell_style() {
        let pid = Pid::from_raw(7);
        assert_eq!(shell_status(WaitStatus::Exited(pid, 3)), Some((7, 3)));
        assert_eq!(
            shell_status(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some((7, 137))
        );
        assert_eq!(
            shell_status(WaitStatus::Stopped(pid, Signal::SIGSTOP)),
            None
        );
    }

    #[test]
    fn exits_reach_watchers_registered_before_or_after() {
        let reaper = Reaper::default();
        let (tx, rx) = mpsc::channel();
        let t = tx.clone();
        reaper.watch(10, move |s| t.send((10, s)).unwrap());
        reaper.exited(10, 0);
        reaper.exited(11, 143);
        assert_eq!(rx.try_recv(), Ok((10, 0)));
        assert!(rx.try_recv().is_err());
        reaper.watch(11, move |s| tx.send((11, s)).unwrap());
        assert_eq!(rx.try_recv(), Ok((11, 143)));
    }

    #[test]
    fn unclaimed_statuses_are_bounded() {
        let reaper = Reaper::default();
        for pid in 0..=i32::try_from(MAX_UNCLAIMED).unwrap() {
            reaper.exited(pid, 1);
        }
        assert_eq!(reaper.lock().unclaimed.len(), MAX_UNCLAIMED);
        assert!(!reaper.lock().unclaimed.contains_key(&0), "the oldest goes");
    }
}
