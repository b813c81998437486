//! A sandbox: one microVM and the agent inside it. This is the lifecycle the runtime's
//! commands build on: start the VM, wait until its agent answers, and stop it
//! gracefully (the agent powers the guest off) or, failing that, by force.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use runm_protocol::AgentInfo;
use vmm::{ExitReason, Microvm, StartMicrovmError, VmConfig};

use crate::agent_client::{AgentClient, AgentError};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot start the microVM: {0}")]
    Start(#[from] StartMicrovmError),
    #[error("the VM has no vsock device, so its agent cannot be reached")]
    NoVsock,
    #[error("cannot reach the guest agent: {0}")]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Vm(#[from] vmm::MicrovmError),
}

/// A running microVM whose agent answered.
#[derive(Debug)]
pub struct Sandbox {
    vm: Microvm,
    agent: AgentClient,
    info: AgentInfo,
}

impl Sandbox {
    /// Boots `config` and waits up to `timeout` for the agent to answer a ping. On any
    /// failure the VM is stopped before the error is returned.
    pub fn start(config: VmConfig, timeout: Duration) -> Result<Self, SandboxError> {
        let uds: PathBuf = config
            .vsock
            .as_ref()
            .map(|v| v.uds_path.clone())
            .ok_or(SandboxError::NoVsock)?;
        let started = Instant::now();
        let mut vm = vmm::start_microvm(config)?;
        match connect(&mut vm, &uds, timeout.saturating_sub(started.elapsed())) {
            Ok((agent, info)) => Ok(Self { vm, agent, info }),
            Err(e) => {
                vm.kill();
                // The caller's timeout covers the boot too: report that one.
                Err(match e {
                    AgentError::Timeout(_) => AgentError::Timeout(timeout),
                    other => other,
                }
                .into())
            }
        }
    }

    /// What the agent said about itself.
    pub fn agent_info(&self) -> &AgentInfo {
        &self.info
    }

    /// A handle that stops the VM from another thread (one that [`Sandbox::wait`]s
    /// then returns).
    pub fn stopper(&self) -> vmm::VmStopper {
        self.vm.stopper()
    }

    /// A handle that gives the VM's network devices their taps from another thread.
    pub fn net_attacher(&self) -> vmm::devices::virtio::net::NetAttacher {
        self.vm.net_attacher()
    }

    /// Waits for the VM to stop, however long that takes.
    pub fn wait(mut self) -> ExitReason {
        self.vm.wait(None).unwrap_or(ExitReason::Killed)
    }

    /// Asks the agent to power the guest off and waits up to `grace` for it; kills the
    /// VM if the agent cannot be asked or the guest does not stop in time.
    pub fn stop(mut self, grace: Duration) -> Result<ExitReason, SandboxError> {
        if let Err(e) = self.agent.shutdown(CALL_TIMEOUT.min(grace)) {
            log::warn!("graceful shutdown failed ({e}); killing the VM");
            self.vm.kill();
        }
        match self.vm.wait(Some(grace)) {
            Ok(exit) => Ok(exit),
            // wait() has killed the VM: report how it ended.
            Err(vmm::MicrovmError::Timeout(t)) => {
                log::warn!("the guest did not power off within {t:?}; killed it");
                Ok(ExitReason::Killed)
            }
        }
    }
}

fn connect(
    vm: &mut Microvm,
    uds: &Path,
    timeout: Duration,
) -> Result<(AgentClient, AgentInfo), AgentError> {
    let mut agent =
        AgentClient::connect_while(uds, runm_protocol::AGENT_PORT, timeout, || {
            match vm.try_exit() {
                Some(exit) => Err(AgentError::GuestStopped(exit.to_string())),
                None => Ok(()),
            }
        })?;
    let info = agent.ping(CALL_TIMEOUT)?;
    Ok((agent, info))
}
