//! `saga stop FUNCTION` and `saga start FUNCTION`: one function of the running `saga up`
//! offline and back, through its control port.

use std::process::ExitCode;

use saga_emulator::supervisor::{self, RemoteError};

pub use saga_emulator::supervisor::ControlArgs;

/// `saga stop` (`action` "stop") or `saga start`: exit 1 when `saga up` refuses (an unknown
/// function, or one already stopped or running), 2 without a `saga up`.
pub async fn run(args: ControlArgs, action: &str) -> ExitCode {
    match supervisor::remote(&args, action).await {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(e @ RemoteError::Refused(_)) => {
            eprintln!("saga {action}: {e}");
            ExitCode::from(1)
        }
        Err(e) => super::fail(action, e),
    }
}
