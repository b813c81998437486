//! A running microVM: wait for it to stop, or stop it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vm_memory::GuestMemoryMmap;
use vm_superio::Trigger;
use vmm_sys_util::signal::Killable;

use crate::devices::legacy::Serial;
use crate::devices::virtio::net::NetAttacher;
use crate::event_loop::DeviceThread;
use crate::vstate::vcpu::{kick_signal, VcpuExited, VcpuStop};
use crate::vstate::vm::Vm;

/// How the guest stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset itself through the i8042: runm guests power off this way.
    GuestShutdown,
    /// The guest triple-faulted: a guest crash, never a power-off of runm's guests, so
    /// users (and test harnesses) can tell the two apart.
    TripleFault,
    /// The host stopped the VM.
    Killed,
    /// A vCPU could not go on.
    VcpuFailed { id: u8, reason: String },
    /// The device thread ended while the VM ran: no device would answer the guest again.
    DevicesFailed { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum MicrovmError {
    #[error("the guest did not stop within {0:?}")]
    Timeout(Duration),
}

/// Events that end a VM's run, from vCPU threads and devices.
#[derive(Debug)]
pub(crate) enum VmEvent {
    Vcpu(VcpuExited),
    /// The guest wrote the reset command to the i8042.
    Reset,
    /// The device thread ended without being asked to.
    DevicesEnded(String),
    /// The owner asked, from another thread, for the VM to stop.
    Stop,
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::GuestShutdown => write!(f, "the guest reset itself"),
            ExitReason::TripleFault => write!(f, "the guest triple-faulted (it crashed)"),
            ExitReason::Killed => write!(f, "the host stopped it"),
            ExitReason::VcpuFailed { id, reason } => write!(f, "vCPU {id} failed: {reason}"),
            ExitReason::DevicesFailed { reason } => {
                write!(f, "the VMM's device thread failed: {reason}")
            }
        }
    }
}

impl From<VmEvent> for ExitReason {
    fn from(event: VmEvent) -> Self {
        match event {
            VmEvent::Reset => ExitReason::GuestShutdown,
            VmEvent::DevicesEnded(reason) => ExitReason::DevicesFailed { reason },
            VmEvent::Stop => ExitReason::Killed,
            VmEvent::Vcpu(VcpuExited { id, why }) => match why {
                VcpuStop::TripleFault => ExitReason::TripleFault,
                VcpuStop::Kicked => ExitReason::Killed,
                VcpuStop::Failed(reason) => ExitReason::VcpuFailed { id, reason },
            },
        }
    }
}

/// A `Trigger` that reports a guest reset to the VM's owner.
#[derive(Debug)]
pub(crate) struct ResetTrigger(pub Sender<VmEvent>);

impl Trigger for ResetTrigger {
    type E = ();
    fn trigger(&self) -> Result<(), ()> {
        self.0.send(VmEvent::Reset).map_err(drop)
    }
}

/// Stops a VM from another thread than the one that waits for it: `Microvm::wait` wakes
/// up, stops the vCPUs and reports `Killed`.
#[derive(Debug, Clone)]
pub struct VmStopper(pub(crate) Sender<VmEvent>);

impl VmStopper {
    pub fn stop(&self) {
        // The receiver is gone only with the VM.
        let _ = self.0.send(VmEvent::Stop);
    }
}

/// A booted microVM. Dropping it stops the guest and joins every thread it started.
pub struct Microvm {
    pub(crate) vcpus: Vec<JoinHandle<()>>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) events: Receiver<VmEvent>,
    pub(crate) stopper: VmStopper,
    pub(crate) serial: Arc<Mutex<Serial>>,
    pub(crate) exit: Option<ExitReason>,
    pub(crate) devices: DeviceThread,
    pub(crate) net: NetAttacher,
    // Field order matters: the vCPU threads are joined in `Drop` before the VM and its
    // memory are released.
    pub(crate) _vm: Vm,
    pub(crate) _mem: GuestMemoryMmap,
}

impl std::fmt::Debug for Microvm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Microvm")
            .field("vcpus", &self.vcpus.len())
            .field("exit", &self.exit)
            .finish_non_exhaustive()
    }
}

impl Microvm {
    /// Waits until the guest stops (or `timeout` passes, which kills it), then tears the
    /// VM down.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<ExitReason, MicrovmError> {
        if let Some(exit) = &self.exit {
            return Ok(exit.clone());
        }
        let event = match timeout {
            Some(t) => self.events.recv_timeout(t),
            None => self.events.recv().map_err(RecvTimeoutError::from),
        };
        let reason = match event {
            Ok(event) => event.into(),
            Err(RecvTimeoutError::Timeout) => {
                self.kill();
                return Err(MicrovmError::Timeout(timeout.unwrap_or_default()));
            }
            // Unreachable while a vCPU thread lives, as each reports before it ends.
            Err(RecvTimeoutError::Disconnected) => ExitReason::VcpuFailed {
                id: 0,
                reason: "every vCPU thread ended without a report".into(),
            },
        };
        self.stop_vcpus();
        self.exit = Some(reason.clone());
        Ok(reason)
    }

    /// A handle that stops this VM from any thread.
    pub fn stopper(&self) -> VmStopper {
        self.stopper.clone()
    }

    /// A handle that attaches taps to this VM's virtio-net devices from any thread.
    pub fn net_attacher(&self) -> NetAttacher {
        self.net.clone()
    }

    /// How the guest stopped, if it has stopped by itself; does not wait.
    pub fn try_exit(&mut self) -> Option<ExitReason> {
        if self.exit.is_none() {
            let event = self.events.try_recv().ok()?;
            self.stop_vcpus();
            self.exit = Some(event.into());
        }
        self.exit.clone()
    }

    /// Stops the guest now. A guest that had already stopped by itself keeps that as its
    /// exit reason.
    pub fn kill(&mut self) {
        if self.exit.is_none() {
            self.exit = self.events.try_recv().ok().map(ExitReason::from);
        }
        self.stop_vcpus();
        self.exit.get_or_insert(ExitReason::Killed);
    }

    /// Sets the stop flag and kicks each vCPU thread out of KVM_RUN until it has exited,
    /// then stops the device thread.
    /// The kick repeats because a signal that lands just before the thread enters
    /// KVM_RUN is lost.
    fn stop_vcpus(&mut self) {
        self.stop.store(true, Ordering::Release);
        for handle in self.vcpus.drain(..) {
            while !handle.is_finished() {
                if let Err(e) = handle.kill(kick_signal()) {
                    log::warn!("cannot kick vCPU thread: {e}");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            if handle.join().is_err() {
                log::error!("a vCPU thread panicked");
            }
        }
        self.devices.stop();
        self.serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush();
    }
}

impl Drop for Microvm {
    fn drop(&mut self) {
        self.stop_vcpus();
    }
}
