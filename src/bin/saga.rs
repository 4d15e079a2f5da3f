//! `saga`: run the order saga locally and operate it.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use saga_contracts::topology::Function;

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
    Chaos(saga::chaos::ChaosArgs),
    /// The operator's console in a browser: parked messages and dead letters, with a
    /// redrive button (on 127.0.0.1, with your credentials: --cloud uses ADC).
    Console(saga_ops::console::ConsoleArgs),
    /// Stop one function of the running `saga up` (it stays stopped until `saga start`).
    Stop(saga_emulator::supervisor::ControlArgs),
    /// Start again a function `saga stop` stopped.
    Start(saga_emulator::supervisor::ControlArgs),
    /// Seed the catalogue and users (only what is missing, or --reset), locally or --cloud.
    Seed(saga::up::SeedArgs),
    /// Check the saga's invariants (stock and money conservation, terminal orders, the
    /// outbox) against the seed data; exits 1 if any does not hold.
    Check(saga::up::CheckArgs),
    /// Show an order's timeline: each step, what it consumed and emitted, and how long
    /// between them.
    Trace {
        #[command(flatten)]
        target: saga_ops::Target,
        /// The order id.
        order_id: String,
    },
    /// Republish recorded events of a topic (marked as replays) for consumers to catch up.
    Replay(saga_ops::ReplayArgs),
    /// Parked and dead-lettered messages.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Drive real orders through a local stack it starts, and report speed, latency,
    /// resources and the emulators' floor; a run that breaks an invariant fails (exit 1).
    Bench(saga_bench::BenchArgs),
    /// Regenerate the results section of a markdown file from the results in a directory.
    BenchReport {
        /// Where the bench wrote its JSON results and histograms.
        #[arg(long, default_value = "docs/benchmarks")]
        dir: std::path::PathBuf,
        /// The markdown file whose `<!-- bench:begin -->` ... `<!-- bench:end -->` section is
        /// rewritten.
        #[arg(long, default_value = "docs/benchmarks.md")]
        markdown: std::path::PathBuf,
    },
    /// Run one function, configured from the environment (what its container runs).
    Serve {
        /// frontend, order, inventory, payments or janitor.
        #[arg(value_parser = parse_function)]
        function: Function,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List parked messages and dead letters, with their reason and source subscription.
    List {
        #[command(flatten)]
        target: saga_ops::Target,
    },
    /// Republish dead letters to the topic they were meant for, once the cause is fixed.
    Redrive {
        #[command(flatten)]
        target: saga_ops::Target,
        /// `parked`, or a dead-letter subscription (e.g. error-sub-dlq-sub).
        place: String,
        /// Every message there.
        #[arg(long, conflicts_with = "id", required_unless_present = "id")]
        all: bool,
        /// Only this message (a parked id or a Pub/Sub message id).
        #[arg(long)]
        id: Option<String>,
    },
}

/// Exit codes scripts can trust: 0 done, 1 done but problems were found, 2 could not run.
fn fail(command: &str, error: impl std::fmt::Display) -> ExitCode {
    eprintln!("saga {command}: {error}");
    ExitCode::from(2)
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
            match std::env::var(saga_emulator::stack::PARENT_ENV)
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
            Err(error) => fail("seed", error),
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
        Command::Trace { target, order_id } => {
            let store = match target.store().await {
                Ok(store) => store,
                Err(e) => return fail("trace", e),
            };
            match saga_ops::trace(&store, &order_id).await {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(saga_ops::OpsError::NoOrder(id)) => {
                    eprintln!("saga trace: no order {id}");
                    ExitCode::FAILURE
                }
                Err(e) => fail("trace", e),
            }
        }
        Command::Replay(args) => {
            let progress = std::io::stderr().is_terminal();
            let run = async {
                let store = args.target.store().await?;
                let pubsub = args.target.pubsub()?;
                saga_ops::replay(&store, &pubsub, &args, progress).await
            };
            match run.await {
                Ok(r) => {
                    println!(
                        "{} events matched, {} republished to {}",
                        r.matched,
                        r.published,
                        args.to_topic.as_deref().unwrap_or(&args.topic)
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail("replay", e),
            }
        }
        Command::Dlq { command } => dlq(command).await,
        Command::Bench(args) => match saga_bench::bench(&args).await {
            Ok(result) => {
                print!("{}", saga_bench::report::table(&result));
                println!("results in {}", args.out.display());
                if result.invariants_held {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => fail("bench", e),
        },
        Command::BenchReport { dir, markdown } => {
            let run = || -> Result<(), String> {
                let section = saga_bench::report::report(&dir).map_err(|e| e.to_string())?;
                let text = std::fs::read_to_string(&markdown).map_err(|e| e.to_string())?;
                let (begin, end) = ("<!-- bench:begin -->", "<!-- bench:end -->");
                let (Some(a), Some(b)) = (text.find(begin), text.find(end)) else {
                    return Err(format!(
                        "{} has no {begin} ... {end} section",
                        markdown.display()
                    ));
                };
                let text = format!("{}{begin}\n{section}\n{}", &text[..a], &text[b..]);
                std::fs::write(&markdown, text).map_err(|e| e.to_string())
            };
            match run() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail("bench-report", e),
            }
        }
        Command::Chaos(args) => match saga::chaos::chaos(&args).await {
            Ok(outcome) => {
                print!("{}", outcome.text);
                if outcome.holds {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => fail("chaos", e),
        },
        Command::Console(args) => match saga_ops::console::serve(&args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail("console", e),
        },
        Command::Stop(args) => control(&args, "stop").await,
        Command::Start(args) => control(&args, "start").await,
        Command::Up(args) => match saga::up::up(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => fail("up", error),
        },
    }
}

async fn control(args: &saga_emulator::supervisor::ControlArgs, action: &str) -> ExitCode {
    match saga_emulator::supervisor::remote(args, action).await {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(e @ saga_emulator::supervisor::RemoteError::Refused(_)) => {
            eprintln!("saga {action}: {e}");
            ExitCode::from(1)
        }
        Err(e) => fail(action, e),
    }
}

async fn dlq(command: DlqCommand) -> ExitCode {
    let progress = std::io::stderr().is_terminal();
    match command {
        DlqCommand::List { target } => {
            let run = async {
                let store = target.store().await?;
                let pubsub = target.pubsub()?;
                saga_ops::dlq_list(&store, &pubsub).await
            };
            match run.await {
                Ok(letters) => {
                    println!(
                        "{:<28} {:<40} {:<24} {:<19} {:<36} REASON",
                        "WHERE", "ID", "SOURCE", "EVENT", "ORDER"
                    );
                    for l in &letters {
                        println!(
                            "{:<28} {:<40} {:<24} {:<19} {:<36} {}",
                            l.place, l.id, l.source, l.event_type, l.order_id, l.reason
                        );
                    }
                    println!("{} messages", letters.len());
                    ExitCode::SUCCESS
                }
                Err(e) => fail("dlq list", e),
            }
        }
        DlqCommand::Redrive {
            target,
            place,
            all,
            id,
        } => {
            let selection = match (all, id) {
                (_, Some(id)) => saga_ops::Selection::Id(id),
                _ => saga_ops::Selection::All,
            };
            let run = async {
                let store = target.store().await?;
                let pubsub = target.pubsub()?;
                saga_ops::dlq_redrive(&store, &pubsub, &place, &selection, progress).await
            };
            match run.await {
                Ok(r) => {
                    for id in &r.left_in_place {
                        println!("{id}: no source subscription recorded, left in place");
                    }
                    println!(
                        "{} republished, {} unrecoverable, {} left in place",
                        r.republished,
                        r.unrecoverable,
                        r.left_in_place.len()
                    );
                    if r.unrecoverable > 0 || !r.left_in_place.is_empty() {
                        ExitCode::FAILURE
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => fail("dlq redrive", e),
            }
        }
    }
}
