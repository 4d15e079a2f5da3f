//! `saga dlq list` and `saga dlq redrive`: parked messages and dead letters.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum DlqCommand {
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

/// `saga dlq list` and `saga dlq redrive`: redrive exits 1 if a letter could not be.
pub async fn run(command: DlqCommand) -> ExitCode {
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
                Err(e) => super::fail("dlq list", e),
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
                Err(e) => super::fail("dlq redrive", e),
            }
        }
    }
}
