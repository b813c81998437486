//! `runm`: an OCI runtime that runs each container in its own KVM microVM.

mod agent_client;
mod cli;
mod commands;
mod guest_assets;
mod sandbox;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    init_logging(&cli.global);
    let result = match cli.command {
        cli::Command::Boot(args) => commands::boot::run(args),
    };
    std::process::exit(match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("runm: {}", error_message(&e));
            1
        }
    });
}

fn init_logging(global: &cli::GlobalOpts) {
    let level = if global.debug { "debug" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .init();
}

/// The error and its causes on one line. Many of our errors already include their source
/// in their message (so that they read well on their own); a cause whose text is already
/// there is not repeated.
fn error_message(e: &anyhow::Error) -> String {
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
