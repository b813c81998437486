//! The VM's device thread: one epoll loop (event-manager) that runs every device's
//! event-driven work, so that devices need no locks against each other and vCPU threads
//! only ever touch device registers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::microvm::VmEvent;

/// A device as the event loop holds it.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("cannot create the device event loop: {0}")]
    Create(event_manager::Error),
    #[error("cannot create the event loop's stop eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot start the device thread: {0}")]
    Spawn(std::io::Error),
}

/// Wakes the loop and tells it to end.
struct StopSubscriber {
    evt: EventFd,
    stopped: Arc<AtomicBool>,
}

impl MutEventSubscriber for StopSubscriber {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.stopped.store(true, Ordering::Release);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            log::error!("event loop: cannot watch the stop eventfd: {e:?}");
        }
    }
}

/// Reports the device thread's end, when it was not asked to end, as it goes (also when
/// it unwinds).
struct EndReport {
    events: Sender<VmEvent>,
    stopped: Arc<AtomicBool>,
    why: String,
}

impl Drop for EndReport {
    fn drop(&mut self) {
        if !self.stopped.load(Ordering::Acquire) {
            let why = std::mem::take(&mut self.why);
            let _ = self.events.send(VmEvent::DevicesEnded(why));
        }
    }
}

/// The running device thread. Dropping it stops and joins the thread.
#[derive(Debug)]
pub struct DeviceThread {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl DeviceThread {
    /// Starts the loop with `devices` subscribed (each device's `init` runs here). If the
    /// thread ends before it is stopped, it says why on `events`: the VM cannot go on.
    pub(crate) fn spawn(
        devices: Vec<Subscriber>,
        events: Sender<VmEvent>,
    ) -> Result<Self, EventLoopError> {
        let mut manager: EventManager<Subscriber> =
            EventManager::new().map_err(EventLoopError::Create)?;
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(EventLoopError::EventFd)?;
        let stopped = Arc::new(AtomicBool::new(false));
        manager.add_subscriber(Arc::new(Mutex::new(StopSubscriber {
            evt: stop.try_clone().map_err(EventLoopError::EventFd)?,
            stopped: stopped.clone(),
        })));
        for device in devices {
            manager.add_subscriber(device);
        }
        let handle = std::thread::Builder::new()
            .name("devices".into())
            .spawn(move || {
                let mut report = EndReport {
                    events,
                    stopped: stopped.clone(),
                    why: "it panicked".into(),
                };
                while !stopped.load(Ordering::Acquire) {
                    if let Err(e) = manager.run() {
                        log::error!("device event loop failed: {e:?}");
                        report.why = format!("its event loop failed: {e:?}");
                        break;
                    }
                }
            })
            .map_err(EventLoopError::Spawn)?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the loop and waits for the thread.
    pub fn stop(&mut self) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        if let Err(e) = self.stop.write(1) {
            log::error!("cannot signal the device thread to stop: {e}");
        }
        if handle.join().is_err() {
            log::error!("the device thread panicked");
        }
    }
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{channel, Sender};
    use std::time::Duration;

    struct Echo {
        evt: EventFd,
        seen: Sender<u64>,
    }

    impl MutEventSubscriber for Echo {
        fn process(&mut self, _events: Events, _ops: &mut EventOps) {
            let _ = self.seen.send(self.evt.read().unwrap());
        }
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.evt, EventSet::IN)).unwrap();
        }
    }

    #[test]
    fn devices_get_their_events_and_the_thread_stops() {
        let (tx, rx) = channel();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let echo = Echo {
            evt: evt.try_clone().unwrap(),
            seen: tx,
        };
        let (events, ended) = channel();
        let mut thread = DeviceThread::spawn(vec![Arc::new(Mutex::new(echo))], events).unwrap();
        evt.write(3).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 3);
        thread.stop();
        assert!(thread.handle.is_none());
        assert!(ended.try_recv().is_err(), "a stop asked for is no failure");
    }

    struct Panics(EventFd);

    impl MutEventSubscriber for Panics {
        fn process(&mut self, _events: Events, _ops: &mut EventOps) {
            panic!("a device bug");
        }
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.0, EventSet::IN)).unwrap();
        }
    }

    #[test]
    fn a_device_thread_that_dies_says_so() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let device = Panics(evt.try_clone().unwrap());
        let (events, ended) = channel();
        let mut thread = DeviceThread::spawn(vec![Arc::new(Mutex::new(device))], events).unwrap();
        evt.write(1).unwrap();
        match ended.recv_timeout(Duration::from_secs(5)).unwrap() {
            VmEvent::DevicesEnded(why) => assert_eq!(why, "it panicked"),
            other => panic!("{other:?}"),
        }
        thread.stop();
    }
}
