//! `saga check`: the saga's invariants against the seed data, read at one moment; the parked
//! messages and dead letters too.

use std::process::ExitCode;
use std::time::Duration;

use saga_ops::check::Mode;
use saga_ops::{OpsError, Target};

#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub target: Target,
    /// Only check what holds at any moment (skip "every order is terminal" and "every event
    /// is published"), for a stack with orders in flight.
    #[arg(long)]
    pub in_flight: bool,
    /// With --in-flight: an order unfinished this many seconds after its last change is
    /// reported stuck (the saga timeout, 300 s, and two sweeps of the janitor).
    #[arg(long, default_value_t = 420, value_name = "SECS")]
    pub stuck_after: u64,
}

/// `saga check`: exit 1 if an invariant does not hold.
pub async fn run(args: CheckArgs) -> ExitCode {
    match check(args).await {
        Ok(report) => {
            print!("{report}");
            if report.holds() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => super::fail("check", error),
    }
}

/// `saga check`: the invariants of the project's data against the seed state.
pub async fn check(args: CheckArgs) -> Result<saga_ops::check::Report, OpsError> {
    let store = args.target.store().await?;
    let baseline = saga_ops::check::Baseline::seed();
    let mut report = if args.in_flight {
        let stuck_after = Duration::from_secs(args.stuck_after);
        saga_ops::check::check(&store, &baseline, Mode::InFlight { stuck_after }).await?
    } else {
        saga_ops::check::check_settled(&store, &baseline, saga_ops::check::SETTLE).await?
    };
    report.letters = saga_ops::dlq_list(&store, &args.target.pubsub()?).await?;
    Ok(report)
}
