//! What a container's host process watches while the container runs: the container's
//! process (through the agent), the microVM under it, and the file server the guest's
//! files come from. Whichever ends first ends the container, and the state records it,
//! so `runm state` never says `running` about a container that can no longer run.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use runm_protocol::ProcessKey;
use vmm::{ExitReason, VmStopper};

use crate::agent_client::AgentClient;
use crate::relay::Relay;
use crate::sandbox::Sandbox;
use crate::state::{Root, Status};

/// The status of a container whose VM or file server went away: as if SIGKILLed.
pub const KILLED: i32 = 128 + 9;
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the output may trail the exit status.
const OUTPUT_GRACE: Duration = Duration::from_secs(10);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How (the first part of) a container's run ended.
#[derive(Debug)]
enum Ended {
    Process(i32),
    Vm(ExitReason),
    /// virtiofsd ended, and how.
    FsServer(String),
}

/// News of a container's ends, from one thread per thing watched.
#[derive(Debug)]
pub struct Watch {
    tx: Sender<Ended>,
    rx: Receiver<Ended>,
    vm: Option<VmStopper>,
    uds: PathBuf,
}

impl Watch {
    /// Watches the VM of `sandbox`, whose agent listens behind `uds`.
    pub fn new(sandbox: Sandbox, uds: PathBuf) -> Self {
        let (tx, rx) = mpsc::channel();
        let vm = Some(sandbox.stopper());
        let to = tx.clone();
        std::thread::spawn(move || {
            let _ = to.send(Ended::Vm(sandbox.wait()));
        });
        Self { tx, rx, vm, uds }
    }

    /// Watches the container's process `key`, whose output `relay` carries.
    pub fn process(&self, key: ProcessKey, relay: Relay) {
        let (to, uds) = (self.tx.clone(), self.uds.clone());
        std::thread::spawn(move || {
            let _ = to.send(Ended::Process(crate::host::wait_exit(&uds, &key, relay)));
        });
    }

    /// Watches the file server, through what it reports of its end.
    pub fn fs_server(&self, exited: Receiver<String>) {
        let to = self.tx.clone();
        std::thread::spawn(move || {
            if let Ok(how) = exited.recv() {
                let _ = to.send(Ended::FsServer(how));
            }
        });
    }

    /// Waits for the first end, makes sure the VM stops, records the container stopped
    /// and returns its exit status.
    pub fn until_the_end(self, root: &Root, id: &str) -> i32 {
        let Ok(first) = self.rx.recv() else {
            return 255;
        };
        match first {
            Ended::Process(status) => {
                record(root, id, status);
                self.power_off();
                status
            }
            Ended::Vm(reason) => {
                log::error!("the microVM stopped ({reason}) before the container's process ended");
                // The waiter's connection closed with the VM: it reports a kill.
                let status = self
                    .next_process(OUTPUT_GRACE + CALL_TIMEOUT)
                    .unwrap_or(KILLED);
                record(root, id, status);
                status
            }
            Ended::FsServer(how) => {
                log::error!(
                    "the container's file server (virtiofsd) died: {how}; the guest's files \
                     no longer answer, so the microVM is stopped and the container with it"
                );
                self.stop_vm();
                record(root, id, KILLED);
                KILLED
            }
        }
    }

    /// The process has ended: the guest gets a moment to power off by itself (exiting
    /// takes the VM down anyway).
    fn power_off(&self) {
        let t = Instant::now();
        let asked = AgentClient::connect(&self.uds, runm_protocol::AGENT_PORT, CALL_TIMEOUT)
            .and_then(|mut a| a.shutdown(SHUTDOWN_GRACE));
        if asked.is_err() || !self.vm_ended_within(SHUTDOWN_GRACE) {
            log::warn!("the guest did not power off; it ends with its host process");
        }
        crate::host::phase("vm_shutdown", t);
    }

    /// Stops the VM now and waits (a bounded time) until it has.
    fn stop_vm(&self) {
        if let Some(vm) = &self.vm {
            vm.stop();
        }
        if !self.vm_ended_within(SHUTDOWN_GRACE) {
            log::warn!(
                "the microVM did not stop within {SHUTDOWN_GRACE:?}; it ends with its host process"
            );
        }
    }

    /// Whether the VM ends within `wait`; other news is passed over.
    fn vm_ended_within(&self, wait: Duration) -> bool {
        self.next_where(wait, |e| matches!(e, Ended::Vm(_)).then_some(()))
            .is_some()
    }

    /// The process's status, if it comes within `wait`.
    fn next_process(&self, wait: Duration) -> Option<i32> {
        self.next_where(wait, |e| match e {
            Ended::Process(status) => Some(*status),
            _ => None,
        })
    }

    fn next_where<T>(&self, wait: Duration, want: impl Fn(&Ended) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(e) => {
                    if let Some(found) = want(&e) {
                        return Some(found);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }
}

fn record(root: &Root, id: &str, status: i32) {
    if let Err(e) = record_exit(root, id, status) {
        log::error!("cannot record the container's exit: {e}");
    }
}

fn record_exit(root: &Root, id: &str, status: i32) -> anyhow::Result<()> {
    let locked = root.lock(id)?;
    let mut state = locked.load_raw()?;
    state.status = Status::Stopped;
    state.exit_status = Some(status);
    locked.save(&state)?;
    Ok(())
}
