//! The `saga` command, one module per subcommand: its arguments and what it runs. Exit codes
//! scripts can trust: 0 done, 1 done but problems were found, 2 could not run.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod bench;
pub mod chaos;
pub mod check;
pub mod console;
pub mod control;
pub mod dlq;
pub mod replay;
pub mod seed;
pub mod serve;
pub mod trace;
pub mod up;

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
    Up(saga_emulator::stack::UpArgs),
    /// Break the saga on purpose while orders flow (a fault schedule drawn from the seed),
    /// then check that it healed; exits 1 if an invariant broke.
    Chaos(chaos::ChaosArgs),
    /// The operator's console in a browser: parked messages and dead letters, with a
    /// redrive button (on 127.0.0.1, with your credentials: --cloud uses ADC).
    Console(console::ConsoleArgs),
    /// Stop one function of the running `saga up` (it stays stopped until `saga start`).
    Stop(control::ControlArgs),
    /// Start again a function `saga stop` stopped.
    Start(control::ControlArgs),
    /// Seed the catalogue and users (only what is missing, or --reset), locally or --cloud.
    Seed(seed::SeedArgs),
    /// Check the saga's invariants (stock and money conservation, terminal orders, the
    /// outbox) against the seed data; exits 1 if any does not hold.
    Check(check::CheckArgs),
    /// Show an order's timeline: each step, what it consumed and emitted, and how long
    /// between them.
    Trace(trace::TraceArgs),
    /// Republish recorded events of a topic (marked as replays) for consumers to catch up.
    Replay(replay::ReplayArgs),
    /// Parked and dead-lettered messages.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Drive real orders through a local stack it starts, and report speed, latency,
    /// resources and the emulators' floor; a run that breaks an invariant fails (exit 1).
    Bench(bench::BenchArgs),
    /// Regenerate the results section of a markdown file from the results in a directory.
    BenchReport(bench::ReportArgs),
    /// Run one function, configured from the environment (what its container runs).
    Serve(serve::ServeArgs),
}

/// Parses the command line and runs the command.
pub async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Up(args) => up::run(args).await,
        Command::Chaos(args) => chaos::run(args).await,
        Command::Console(args) => console::run(args).await,
        Command::Stop(args) => control::run(args, "stop").await,
        Command::Start(args) => control::run(args, "start").await,
        Command::Seed(args) => seed::run(args).await,
        Command::Check(args) => check::run(args).await,
        Command::Trace(args) => trace::run(args).await,
        Command::Replay(args) => replay::run(args).await,
        Command::Dlq { command } => dlq::run(command).await,
        Command::Bench(args) => bench::run(args).await,
        Command::BenchReport(args) => bench::report(args),
        Command::Serve(args) => serve::run(args).await,
    }
}

/// Could not run (exit 2), and why.
pub(crate) fn fail(command: &str, error: impl std::fmt::Display) -> ExitCode {
    eprintln!("saga {command}: {error}");
    ExitCode::from(2)
}
