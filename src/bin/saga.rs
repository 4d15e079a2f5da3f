//! `saga`: run the order saga locally and operate it.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use saga_infra::topology::Function;

#[derive(Parser)]
#[command(
    name = "saga",
    version,
    about = "The order saga on Pub/Sub and Firestore"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start everything locally on the emulators, until Ctrl-C.
    Up(saga::up::UpArgs),
    /// Seed the catalogue and users (only what is missing, or --reset), locally or --cloud.
    Seed(saga::up::SeedArgs),
    /// Check the saga's invariants (stock and money conservation, terminal orders, the
    /// outbox) against the seed data; exits 1 if any does not hold.
    Check(saga::up::CheckArgs),
    /// Run one function, configured from the environment (what its container runs).
    Serve {
        /// frontend, order, inventory, payments or janitor.
        #[arg(value_parser = parse_function)]
        function: Function,
    },
}

fn parse_function(name: &str) -> Result<Function, String> {
    Function::from_name(name).ok_or_else(|| {
        let names: Vec<_> = Function::ALL.iter().map(|f| f.name()).collect();
        format!("unknown function {name:?}; one of {}", names.join(", "))
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve { function } => {
            let router = saga::router_for(function);
            // Started by `saga up`: stop with it, however it ends.
            match std::env::var(saga::up::PARENT_ENV)
                .ok()
                .and_then(|p| p.parse().ok())
            {
                Some(parent) => {
                    let shutdown = async move {
                        tokio::select! {
                            _ = saga_infra::runtime::shutdown_signal() => {}
                            _ = saga_infra::runtime::parent_gone(parent) => {}
                        }
                    };
                    saga_infra::runtime::main_until(function, router, shutdown).await
                }
                None => saga_infra::runtime::main(function, router).await,
            }
        }
        Command::Seed(args) => match saga::up::seed(args).await {
            Ok(written) => {
                println!("{written} seed documents written");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("saga seed: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Check(args) => match saga::up::check(args).await {
            Ok(report) => {
                print!("{report}");
                if report.holds() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(error) => {
                eprintln!("saga check: {error}");
                ExitCode::from(2)
            }
        },
        Command::Up(args) => match saga::up::up(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("saga up: {error}");
                ExitCode::FAILURE
            }
        },
    }
}
