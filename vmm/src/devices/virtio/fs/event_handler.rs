//! virtio-fs on the VM's device thread: the activation eventfd and the backend socket
//! from the start, the call eventfds once the driver has activated the device. A call
//! from the backend becomes the used-buffer interrupt (status bit, then irqfd).

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::Fs;

const ACTIVATE: u32 = 0;
const BACKEND: u32 = 1;
/// Call eventfd of queue `i` is `CALL + i`.
const CALL: u32 = 2;

impl Fs {
    /// Follows activation and reset: drops the old call eventfds, listens to the new.
    fn on_activate_evt(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.activate_evt.read() {
            log::warn!(
                "virtio-fs {:?}: cannot read the activation eventfd: {e}",
                self.tag()
            );
        }
        // A new activation replaces the eventfds; a reset just drops them.
        let replace = !self.is_activated() || !self.pending_calls.is_empty();
        if replace {
            for old in std::mem::take(&mut self.registered_calls) {
                if let Err(e) = ops.remove(Events::empty(&old)) {
                    log::error!(
                        "virtio-fs {:?}: cannot unregister a call eventfd: {e}",
                        self.tag()
                    );
                }
            }
        }
        if !self.is_activated() {
            return;
        }
        for (i, call) in (0u32..).zip(std::mem::take(&mut self.pending_calls)) {
            match ops.add(Events::with_data(&call, CALL + i, EventSet::IN)) {
                Ok(()) => self.registered_calls.push(call),
                Err(e) => log::error!(
                    "virtio-fs {:?}: cannot register the call eventfd of queue {i}: {e}",
                    self.tag()
                ),
            }
        }
    }

    /// The backend used buffers of queue `index`: interrupt the driver.
    fn on_call(&mut self, index: u32) {
        let call = usize::try_from(index)
            .ok()
            .and_then(|i| self.registered_calls.get(i));
        if let Some(call) = call {
            if let Err(e) = call.read() {
                log::debug!("virtio-fs {:?}: spurious call event: {e}", self.tag());
                return;
            }
        }
        if let Some(interrupt) = &self.interrupt {
            if let Err(e) = interrupt.signal_used_queue() {
                log::error!(
                    "virtio-fs {:?}: cannot raise the interrupt: {e}",
                    self.tag()
                );
            }
        }
    }

    /// The backend closed its socket: it is gone, and the file system with it.
    fn on_backend_hangup(&mut self, ops: &mut EventOps) {
        log::error!(
            "virtio-fs {:?}: the vhost-user backend closed its socket; the guest's file system no longer answers",
            self.tag()
        );
        if let Err(e) = ops.remove(Events::empty_raw(self.session().as_raw_fd())) {
            log::warn!(
                "virtio-fs {:?}: cannot unregister the backend socket: {e}",
                self.tag()
            );
        }
        self.watching_backend = false;
    }
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            ACTIVATE,
            EventSet::IN,
        )) {
            log::error!(
                "virtio-fs {:?}: cannot register the activation eventfd: {e}",
                self.tag()
            );
        }
        // Only hang-ups: replies are read by the vCPU thread that sent the request.
        let backend = Events::with_data_raw(
            self.session().as_raw_fd(),
            BACKEND,
            EventSet::READ_HANG_UP | EventSet::HANG_UP,
        );
        match ops.add(backend) {
            Ok(()) => self.watching_backend = true,
            Err(e) => log::warn!(
                "virtio-fs {:?}: cannot watch the backend socket: {e}",
                self.tag()
            ),
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE => self.on_activate_evt(ops),
            BACKEND => self.on_backend_hangup(ops),
            i if i >= CALL => self.on_call(i - CALL),
            other => log::warn!(
                "virtio-fs {:?}: event for unknown source {other}",
                self.tag()
            ),
        }
    }
}
