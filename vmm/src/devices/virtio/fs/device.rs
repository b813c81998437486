//! The virtio-fs device: features, configuration space, activation and reset, each
//! passed on to the vhost-user backend.
//!
//! Activation and reset run on the vCPU thread that wrote the status register, so the
//! backend has the rings before the driver's next register access, and has let go of
//! them before a reset completes. Each backend message is bounded by
//! [`super::BACKEND_TIMEOUT`], so a stuck backend delays that vCPU, never wedges it.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::vhost_user::{Session, VringSetup};
use super::{
    FsConfig, FsError, CONFIG_LEN, GUEST_FEATURES_ALLOWED, NUM_QUEUES, NUM_REQUEST_QUEUES,
    QUEUE_SIZE, TAG_LEN,
};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, Activation, Interrupt, VirtioDevice, TYPE_FS,
};

/// A virtio-fs device served by a vhost-user backend.
#[derive(Debug)]
pub struct Fs {
    tag: String,
    config_space: [u8; CONFIG_LEN],
    avail_features: u64,
    session: Session,
    /// The interrupt of the current activation, for the call eventfds.
    pub(super) interrupt: Option<Arc<Interrupt>>,
    /// Written on activation and on reset, to have the event loop (un)register the call
    /// eventfds.
    pub(super) activate_evt: EventFd,
    /// Call eventfds handed to the backend by the last activation, not yet registered.
    pub(super) pending_calls: Vec<EventFd>,
    /// The call eventfds the event loop listens to.
    pub(super) registered_calls: Vec<EventFd>,
    /// Whether the event loop still watches the backend socket for a hang-up.
    pub(super) watching_backend: bool,
}

impl Fs {
    /// Connects to the backend (see [`Session::connect`]); `config.tag` must already be
    /// valid (`VmConfig::validate`).
    pub fn new(config: FsConfig) -> Result<Self, FsError> {
        let session = Session::connect(&config.tag, &config.socket)?;
        Self::with_session(config.tag, session)
    }

    /// A device over an already connected backend.
    pub fn with_session(tag: String, session: Session) -> Result<Self, FsError> {
        let activate_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| FsError::EventFd {
            tag: tag.clone(),
            what: "activation",
            source,
        })?;
        Ok(Self {
            config_space: config_space(&tag),
            avail_features: guest_features(session.backend_features()),
            tag,
            session,
            interrupt: None,
            activate_evt,
            pending_calls: Vec::new(),
            registered_calls: Vec::new(),
            watching_backend: false,
        })
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn is_activated(&self) -> bool {
        self.interrupt.is_some()
    }

    pub(super) fn session(&self) -> &Session {
        &self.session
    }

    fn wake_event_loop(&self) -> Result<(), ActivateError> {
        self.activate_evt.write(1).map_err(ActivateError::Signal)
    }

    fn start_backend(&mut self, activation: &Activation) -> Result<Vec<EventFd>, ActivateError> {
        let device_err = |e: FsError| ActivateError::Device(e.to_string());
        let calls = (0..activation.queues.len())
            .map(|_| {
                EventFd::new(libc::EFD_NONBLOCK).map_err(|source| FsError::EventFd {
                    tag: self.tag.clone(),
                    what: "vring call",
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(device_err)?;
        let vrings: Vec<VringSetup<'_>> = activation
            .queues
            .iter()
            .zip(&calls)
            .map(|(q, call)| VringSetup {
                queue: &q.queue,
                kick: &q.notify,
                call,
            })
            .collect();
        self.session
            .start(&activation.mem, activation.acked_features, &vrings)
            .map_err(device_err)?;
        Ok(calls)
    }
}

/// The configuration space: the tag, NUL-padded (cut at [`TAG_LEN`] bytes, which
/// validation already refuses), and the number of request queues.
pub fn config_space(tag: &str) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let n = tag.len().min(TAG_LEN);
    c[..n].copy_from_slice(&tag.as_bytes()[..n]);
    c[TAG_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
    c
}

/// What the driver is offered out of what the backend offers.
pub fn guest_features(backend_features: u64) -> u64 {
    backend_features & GUEST_FEATURES_ALLOWED
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if self.is_activated() {
            return Err(ActivateError::AlreadyActive);
        }
        if activation.queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                expected: NUM_QUEUES,
                got: activation.queues.len(),
            });
        }
        let calls = match self.start_backend(&activation) {
            Ok(calls) => calls,
            Err(e) => {
                log::error!("virtio-fs {:?}: activation failed: {e}", self.tag);
                // Whatever the backend took before failing, it must let go of.
                if let Err(e) = self.session.stop() {
                    log::warn!("virtio-fs {:?}: {e}", self.tag);
                }
                return Err(e);
            }
        };
        log::debug!(
            "virtio-fs {:?}: started with features {:#x}",
            self.tag,
            activation.acked_features
        );
        self.interrupt = Some(activation.interrupt);
        self.pending_calls = calls;
        self.wake_event_loop()
    }

    fn reset(&mut self) -> bool {
        if self.is_activated() {
            match self.session.stop() {
                Ok(bases) => log::debug!("virtio-fs {:?}: stopped at {bases:?}", self.tag),
                Err(e) => log::error!("virtio-fs {:?}: reset: {e}", self.tag),
            }
        }
        self.interrupt = None;
        self.pending_calls.clear();
        // The event loop drops the call eventfds when it sees the device inactive.
        if let Err(e) = self.wake_event_loop() {
            log::error!("virtio-fs {:?}: reset: {e}", self.tag);
        }
        true
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
