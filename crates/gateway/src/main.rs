//! The `phigate` command line: parse it, hand each command to its module in `phigate::cli`, and
//! turn the result into the exit status.

use std::process::ExitCode;

use clap::Parser;
use phigate::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Check(args) => cli::serve::check(args),
        Command::Schema => cli::serve::schema(),
        Command::Serve(args) => cli::serve::run(args),
        Command::Demo(args) => cli::demo::run(args),
        Command::Keys { command } => cli::keys::run(command),
        Command::Audit { command } => cli::audit::run(command),
        Command::Sessions { command } => cli::sessions::run(command),
        Command::Replay(args) => cli::replay::run(args),
        Command::Review(args) => cli::review::run(args),
        Command::Discover(args) => cli::discover::run(args),
        Command::Token { command } => cli::token::run(command),
        Command::Login(args) => cli::login::run(args),
        Command::Mcp(args) => cli::mcp::run(args),
        Command::Completions(args) => cli::ops::completions(args),
        Command::Man(args) => cli::ops::man(args),
        Command::Tls { command } => cli::ops::tls(command),
        Command::Healthcheck(args) => cli::ops::healthcheck(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phigate: {}", cli::describe(&e));
            ExitCode::FAILURE
        }
    }
}
