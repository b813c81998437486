//! Signals: parsing `kill`'s argument, and forwarding what a foreground host process
//! receives to the process it stands for (runc forwards signals the same way).

use std::path::PathBuf;
use std::str::FromStr;

use nix::sys::signal::Signal;
use runm_protocol::{ProcessKey, Request};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;

use crate::agent_client::AgentClient;

/// What a host process passes on.
const FORWARDED: [i32; 6] = [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];

/// `KILL`, `SIGKILL`, `kill` or `9`.
pub fn parse(arg: &str) -> Result<i32, String> {
    if let Ok(n) = arg.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(format!("invalid signal number {n}"))
        };
    }
    let upper = arg.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name)
        .map(|s| s as i32)
        .map_err(|_| format!("unknown signal {arg:?}"))
}

/// Forwards signals this process gets to `process` in the guest, from a thread.
pub fn forward_to_guest(uds: PathBuf, process: ProcessKey) -> std::io::Result<()> {
    let mut signals = Signals::new(FORWARDED)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let request = Request::Signal {
                    process: process.clone(),
                    signal,
                    all: false,
                };
                let sent = AgentClient::connect(
                    &uds,
                    runm_protocol::AGENT_PORT,
                    std::time::Duration::from_secs(5),
                )
                .and_then(|mut c| c.call_ok(&request, std::time::Duration::from_secs(5)));
                if let Err(e) = sent {
                    log::warn!("cannot forward signal {signal}: {e}");
                }
            }
        })?;
    Ok(())
}

/// Forwards signals this process gets to the host process `pid`.
pub fn forward_to_pid(pid: i32) -> std::io::Result<()> {
    let mut signals = Signals::new(FORWARDED)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if let Ok(sig) = Signal::try_from(signal) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse("9"), Ok(9));
        assert_eq!(parse("KILL"), Ok(9));
        assert_eq!(parse("SIGKILL"), Ok(9));
        assert_eq!(parse("term"), Ok(15));
        assert_eq!(parse("SIGUSR1"), Ok(10));
        assert!(parse("0").is_err());
        assert!(parse("NOPE").unwrap_err().contains("NOPE"));
    }
}
