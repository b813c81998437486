//! Debug logging on the guest console, on when the kernel command line has `runm.debug`:
//! the agent's own steps, and libcontainer's `tracing` events in the helper subprocess.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Whether the kernel command line asks for debug logs.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::fs::read_to_string("/proc/cmdline")
            .is_ok_and(|c| c.split_whitespace().any(|w| w == "runm.debug"))
    })
}

/// Prints `message` on the console when debugging is on.
pub fn log(message: impl FnOnce() -> String) {
    if enabled() {
        write_console(&format!(
            "runm-agent[{}]: {}\n",
            std::process::id(),
            message()
        ));
    }
}

fn write_console(line: &str) {
    if let Ok(mut console) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
        let _ = console.write_all(line.as_bytes());
    }
}

/// Sends libcontainer's `tracing` events to the console, when debugging is on.
pub fn init_tracing() {
    if enabled() {
        let _ = tracing::subscriber::set_global_default(ConsoleSubscriber);
    }
}

struct ConsoleSubscriber;

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl Subscriber for ConsoleSubscriber {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::DEBUG
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let m = event.metadata();
        write_console(&format!(
            "libcontainer[{}] {} {}:{}\n",
            std::process::id(),
            m.level(),
            m.target(),
            fields.0
        ));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}
