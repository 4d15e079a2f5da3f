//! `saga console`: the operator's console in a browser, on 127.0.0.1.

use std::process::ExitCode;

pub use saga_ops::console::ConsoleArgs;

/// `saga console`: until Ctrl-C.
pub async fn run(args: ConsoleArgs) -> ExitCode {
    match saga_ops::console::serve(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::fail("console", e),
    }
}
