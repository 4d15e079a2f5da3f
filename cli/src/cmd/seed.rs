//! `saga seed`: the catalogue and the users, only what is missing or `--reset`, on the
//! emulators or a project on Google Cloud.

use std::process::ExitCode;

use saga_emulator::SeedMode;
use saga_ops::{OpsError, Target};

#[derive(Debug, Clone, clap::Args)]
pub struct SeedArgs {
    #[command(flatten)]
    pub target: Target,
    /// Put stock and balances back to their seed values.
    #[arg(long)]
    pub reset: bool,
}

/// `saga seed`.
pub async fn run(args: SeedArgs) -> ExitCode {
    match seed(args).await {
        Ok(written) => {
            println!("{written} seed documents written");
            ExitCode::SUCCESS
        }
        Err(error) => super::fail("seed", error),
    }
}

/// `saga seed`: seeds the emulator, or a project on Google Cloud; returns how many documents it wrote.
pub async fn seed(args: SeedArgs) -> Result<usize, OpsError> {
    let store = args.target.store().await?;
    let mode = if args.reset {
        SeedMode::Reset
    } else {
        SeedMode::IfAbsent
    };
    Ok(saga_emulator::seed(&store, mode).await?)
}
