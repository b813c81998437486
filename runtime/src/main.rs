//! `runm`: an OCI runtime that runs each container in its own KVM microVM.

mod agent_client;
mod cli;
mod commands;
mod config;
mod console;
mod guest_assets;
mod hooks;
mod host;
mod mounts;
mod namespaces;
mod network;
mod ready;
mod relay;
mod sandbox;
mod signals;
mod spec;
mod state;
mod terminal;
mod virtiofs;
mod watch;

use clap::Parser;

fn main() {
    fill_closed_stdio();
    let cli = cli::Cli::parse();
    init_logging(&cli.global);
    let g = &cli.global;
    use cli::Command as C;
    use commands::{check, create, exec, info, lifecycle};
    let result = match cli.command {
        C::Boot(args) => commands::boot::run(args),
        C::Create(args) => create::create(g, &args),
        C::Start(args) => lifecycle::start(g, &args),
        C::Run(args) => create::run(g, &args),
        C::State(args) => info::state(g, &args),
        C::Kill(args) => lifecycle::kill_cmd(g, &args),
        C::Delete(args) => lifecycle::delete(g, &args),
        C::Exec(args) => exec::exec(g, &args),
        C::Ps(args) => info::ps(g, &args),
        C::List(args) => info::list(g, &args),
        C::Spec(args) => info::spec(&args),
        C::Pause(args) => lifecycle::pause(g, &args),
        C::Resume(args) => lifecycle::resume(g, &args),
        C::Events(args) => info::events(g, &args),
        C::Features => info::features(),
        C::Check => check::check(g),
        C::Sandbox(args) => Ok(host::run_sandbox(
            &state::Root::new(&g.root),
            &args.id,
            args.console_socket.as_deref(),
        )),
        C::ExecHost(args) => Ok(exec::exec_host(g, &args)),
    };
    std::process::exit(match result {
        Ok(code) => code,
        Err(e) => {
            let msg = error_message(&e);
            // containerd's shim reads the reason from the --log file.
            log::error!("{msg}");
            if g.log.is_some() {
                eprintln!("runm: {msg}");
            }
            1
        }
    });
}

/// Opens /dev/null on each of fds 0-2 that is closed: otherwise the first socket or file
/// runm opens lands there and is taken for its stdio (relayed to the container, or
/// handed to a host process as its stdin).
fn fill_closed_stdio() {
    for fd in 0..=2 {
        // SAFETY: F_GETFD only reads the descriptor's flags; a closed one gives EBADF.
        if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } == -1 {
            // The lowest free descriptor is this one, as the lower ones are open now.
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null");
            // Kept open for the life of the process, as stdio is.
            std::mem::forget(null);
        }
    }
}

/// Logs go to stderr, or to `--log` (appended) in runc's text or JSON format.
fn init_logging(global: &cli::GlobalOpts) {
    let level = if global.debug { "debug" } else { "warn" };
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level));
    let json = global.log_format == "json";
    builder.format(move |buf, record| {
        use std::io::Write;
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let level = record.level().as_str().to_ascii_lowercase();
        if json {
            let line = serde_json::json!({
                "level": level, "msg": record.args().to_string(), "time": time.to_string()
            });
            writeln!(buf, "{line}")
        } else if record.level() == log::Level::Error {
            writeln!(buf, "runm: {}", record.args())
        } else {
            writeln!(buf, "{time} {level} runm: {}", record.args())
        }
    });
    if let Some(path) = &global.log {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(file) => {
                builder.target(env_logger::Target::Pipe(Box::new(file)));
            }
            Err(e) => eprintln!("runm: cannot open log file {}: {e}", path.display()),
        }
    }
    builder.init();
}

/// The last `n` non-blank lines of a log file joined with ` | `, for an error message;
/// empty when there are none or the file cannot be read.
pub fn last_lines(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// The error and its causes on one line. Many of our errors already include their source
/// in their message (so that they read well on their own); a cause whose text is already
/// there is not repeated.
pub fn error_message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if out.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("kernel image /k: {source}")]
    struct Outer {
        source: std::io::Error,
    }

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(Outer { source: io }).context("cannot start the microVM");
        assert_eq!(
            error_message(&e),
            "cannot start the microVM: kernel image /k: no such file"
        );
    }
}
