//! `saga replay`: republish recorded events of a topic, marked as replays.

use std::io::IsTerminal;
use std::process::ExitCode;

pub use saga_ops::ReplayArgs;

/// `saga replay`.
pub async fn run(args: ReplayArgs) -> ExitCode {
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
        Err(e) => super::fail("replay", e),
    }
}
