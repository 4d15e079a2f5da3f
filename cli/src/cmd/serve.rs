//! `saga serve FUNCTION`: one function, configured from the environment (what its container
//! runs, and what `saga up` starts five times).

use std::process::ExitCode;

use saga_contracts::topology::Function;

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// frontend, order, inventory, payments or janitor.
    #[arg(value_parser = parse_function)]
    pub function: Function,
}

fn parse_function(name: &str) -> Result<Function, String> {
    Function::from_name(name).ok_or_else(|| {
        let names: Vec<_> = Function::ALL.iter().map(|f| f.name()).collect();
        format!("unknown function {name:?}; one of {}", names.join(", "))
    })
}

/// `saga serve`: until SIGTERM, or until the `saga up` that started it is gone.
pub async fn run(args: ServeArgs) -> ExitCode {
    let function = args.function;
    let router = crate::router_for(function);
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
