//! The `nodelink` binary: parses the command line and runs the server, dev mode or an agent.

use std::process::ExitCode;

use clap::Parser;
use nodelink::cli::{Cli, Command};

mod commands;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Server(args) if args.dev => commands::dev(*args),
        Command::Server(args) => commands::server(*args),
        Command::Agent(args) => commands::agent(*args),
    };
    ExitCode::from(code)
}
