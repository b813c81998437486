//! The vsock device on the VM's device thread: which fd woke us, and the epoll
//! registrations that the muxer, and a driver's activation or reset, asked for. The work
//! itself is in `device.rs` and `muxer.rs`.

use std::os::fd::AsRawFd;
use std::time::Instant;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::muxer::FdChange;
use super::{Vsock, NUM_QUEUES, RXQ_INDEX, TXQ_INDEX};

const TAG_ACTIVATE: u32 = 1;
const TAG_LISTENER: u32 = 2;
const TAG_TIMER: u32 = 3;
const TAG_STREAM: u32 = 4;
/// Queue `i` notifies with tag `TAG_QUEUE + i`.
const TAG_QUEUE: u32 = 16;

/// Host sockets are edge-triggered: a connection that cannot move data now (no rx buffer,
/// no credit) must not make the loop spin on a level that stays set.
fn stream_events() -> EventSet {
    EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED
}

impl Vsock {
    fn register(&self, ops: &mut EventOps, events: Events, what: &str) -> bool {
        match ops.add(events) {
            Ok(()) => true,
            Err(e) => {
                log::error!("vsock cid {}: cannot register {what}: {e}", self.cid());
                false
            }
        }
    }

    /// The driver set DRIVER_OK, or reset the device: listen to the queues it has now.
    fn on_activate(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.activate_evt.read() {
            log::debug!("vsock cid {}: activate event: {e}", self.cid());
        }
        for notify in std::mem::take(&mut self.stale_notify) {
            if let Err(e) = ops.remove(Events::empty(&notify)) {
                log::error!(
                    "vsock cid {}: cannot unregister a queue eventfd: {e}",
                    self.cid()
                );
            }
        }
        let Some(active) = self.active.as_ref() else {
            return;
        };
        if active.registered {
            return;
        }
        let queue_events: Vec<Events> = (0..NUM_QUEUES)
            .zip(&active.queues)
            .filter_map(|(i, q)| {
                let tag = TAG_QUEUE + u32::try_from(i).ok()?;
                Some(Events::with_data(&q.notify, tag, EventSet::IN))
            })
            .collect();
        for events in queue_events {
            self.register(ops, events, "a queue eventfd");
        }
        if let Some(active) = self.active.as_mut() {
            active.registered = true;
        }
        // The driver may have queued packets before we listened.
        self.process_tx();
    }

    fn on_queue(&mut self, index: usize) {
        let Some(q) = self.active.as_ref().and_then(|a| a.queues.get(index)) else {
            return;
        };
        if let Err(e) = q.notify.read() {
            log::debug!("vsock cid {}: queue {index} notify: {e}", self.cid());
        }
        match index {
            TXQ_INDEX => self.process_tx(),
            // rx is filled below, after every event.
            RXQ_INDEX => {}
            // We send no events; the event queue's buffers just wait.
            _ => {}
        }
    }

    /// Applies the registrations the muxer asked for; a socket that cannot be registered
    /// is closed rather than left deaf.
    fn apply_fd_changes(&mut self, ops: &mut EventOps) {
        loop {
            let changes = self.muxer.take_fd_changes();
            if changes.is_empty() {
                return;
            }
            for change in changes {
                match change {
                    FdChange::Add(fd) => {
                        let events = Events::with_data_raw(fd, TAG_STREAM, stream_events());
                        if !self.register(ops, events, "a host socket") {
                            self.muxer.abort_fd(fd);
                        }
                    }
                    FdChange::Remove(stream) => {
                        if let Err(e) = ops.remove(Events::empty(&stream)) {
                            log::debug!(
                                "vsock cid {}: deregistering fd {}: {e}",
                                self.cid(),
                                stream.as_raw_fd()
                            );
                        }
                    }
                }
            }
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        let activate = Events::with_data(&self.activate_evt, TAG_ACTIVATE, EventSet::IN);
        self.register(ops, activate, "the activation eventfd");
        let listener = Events::with_data(
            self.muxer.listener(),
            TAG_LISTENER,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        );
        self.register(ops, listener, "the listening socket");
        let timer = Events::with_data(&self.timer, TAG_TIMER, EventSet::IN);
        self.register(ops, timer, "the timer");
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let now = Instant::now();
        match events.data() {
            TAG_ACTIVATE => self.on_activate(ops),
            TAG_LISTENER => self.muxer.accept_host_clients(),
            TAG_TIMER => {
                // Disarming also clears the expiration, so the fd is not readable anymore.
                if let Err(e) = self.timer.clear() {
                    log::warn!("vsock cid {}: timer: {e}", self.cid());
                }
                self.timer_at = None;
                self.muxer.expire(now);
            }
            TAG_STREAM => self
                .muxer
                .handle_stream_event(events.fd(), events.event_set(), now),
            tag => match tag.checked_sub(TAG_QUEUE).map(usize::try_from) {
                Some(Ok(index)) => self.on_queue(index),
                _ => log::warn!("vsock cid {}: event with unknown tag {tag}", self.cid()),
            },
        }
        // Whatever happened may have given the guest something to read.
        self.process_rx();
        self.apply_fd_changes(ops);
        self.arm_timer();
    }
}
