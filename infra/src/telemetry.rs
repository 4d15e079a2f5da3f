//! Logging: human-readable on a terminal, JSON lines otherwise (what Cloud Logging ingests).
//! `RUST_LOG` filters as usual; the default is `info`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::topology::Function;

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(function: Function) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,firestore=warn,h2=warn,tower=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if std::io::stderr().is_terminal() {
        builder.compact().try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    };
    if result.is_ok() {
        tracing::debug!(function = function.name(), "telemetry ready");
    }
}
