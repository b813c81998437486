//! `runm`: an OCI runtime that runs each container in its own KVM microVM.

mod agent_client;
mod cli;
mod commands;
mod guest_assets;

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
            eprintln!("runm: {e:#}");
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
