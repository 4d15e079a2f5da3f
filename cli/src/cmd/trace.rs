//! `saga trace ORDER`: where an order is and why, every step with its times.

use std::process::ExitCode;

#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub target: saga_ops::Target,
    /// The order id.
    pub order_id: String,
}

/// `saga trace`: exit 1 for an unknown order.
pub async fn run(args: TraceArgs) -> ExitCode {
    let store = match args.target.store().await {
        Ok(store) => store,
        Err(e) => return super::fail("trace", e),
    };
    match saga_ops::trace(&store, &args.order_id).await {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(saga_ops::OpsError::NoOrder(id)) => {
            eprintln!("saga trace: no order {id}");
            ExitCode::FAILURE
        }
        Err(e) => super::fail("trace", e),
    }
}
