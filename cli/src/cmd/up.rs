//! `saga up`: the whole stack on the emulators, in the foreground, until Ctrl-C, with its
//! control port (`saga stop`, `saga start`, the console).

use std::process::ExitCode;

use saga_contracts::topology::Function;
use saga_emulator::stack::{DEMO_PASSWORD, Stack, UpArgs, UpError};
use saga_emulator::supervisor;
use saga_infra::config::{Config, UserAuth};
use saga_infra::store::Store;

/// Runs the stack until Ctrl-C, restarting a function that dies and serving the control
/// port (`saga stop`, `saga start`), then stops everything it started.
/// `saga up`.
pub async fn run(args: UpArgs) -> ExitCode {
    match up(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => super::fail("up", error),
    }
}

async fn up(args: UpArgs) -> Result<(), UpError> {
    let control = tokio::net::TcpListener::bind(("127.0.0.1", args.control_port))
        .await
        .map_err(|e| {
            UpError::Io(format!(
                "the control port {}: {e}; choose another with --control-port",
                args.control_port
            ))
        })?;
    let stack = Stack::start(&args).await?;
    let console = saga_ops::console::router(
        Store::connect(&stack.config.project_id, &stack.config.firestore).await?,
        saga_ops::pubsub_rest::PubsubRest::emulator(
            &format!("127.0.0.1:{}", args.ports.pubsub),
            &stack.config.project_id,
        ),
    );
    let server = tokio::spawn(supervisor::serve_control(
        stack.control.clone(),
        control,
        console,
    ));
    print_banner(&args, &stack.config, stack.seeded);
    saga_infra::runtime::shutdown_signal().await;
    server.abort();
    stack.stop().await;
    eprintln!("Stopped the functions and the emulators it started.");
    Ok(())
}

fn print_banner(args: &UpArgs, config: &Config, seeded: usize) {
    let frontend = format!("http://127.0.0.1:{}", args.port_of(Function::Frontend));
    let mut out = String::new();
    out.push_str("\nThe order saga is up.\n\n");
    out.push_str(&format!(
        "  Pub/Sub emulator    127.0.0.1:{}\n  Firestore emulator  127.0.0.1:{}\n  project             {}\n  fault injection     {}\n  seed documents      {} written ({} existing kept)\n\n",
        args.ports.pubsub,
        args.ports.firestore,
        config.project_id,
        if config.fault_injection { "on" } else { "off" },
        seeded,
        if args.reset_data { "none" } else { "all" },
    ));
    if let UserAuth::Firebase(f) = &config.user_auth {
        let host = f.emulator.clone().unwrap_or_default();
        let lines = [
            format!("  sign-in             Firebase Authentication emulator {host}: orders need a user's ID token"),
            format!("                      users jack, jill, penny: <name>@example.com, password {DEMO_PASSWORD:?}"),
            "  A token for jack:".to_owned(),
            format!("    TOKEN=$(curl -s -X POST 'http://{host}/identitytoolkit.googleapis.com/v1/accounts:signInWithPassword?key=emulator' \\"),
            format!("      -H 'Content-Type: application/json' -d '{{\"email\":\"jack@example.com\",\"password\":\"{DEMO_PASSWORD}\",\"returnSecureToken\":true}}' \\"),
            "      | sed 's/.*\"idToken\": *\"\\([^\"]*\\)\".*/\\1/')".to_owned(),
            "  then add -H \"Authorization: Bearer $TOKEN\" to the curl below, and leave out \"user\".".to_owned(),
        ];
        out.push_str(&lines.join("\n"));
        out.push_str("\n\n");
    }
    for function in Function::ALL {
        out.push_str(&format!(
            "  {:<10} http://127.0.0.1:{}\n",
            function.name(),
            args.port_of(function)
        ));
    }
    out.push_str(&format!(
        "\nPlace an order:\n  curl -i -X POST {frontend}/order -H 'Content-Type: application/json' \\\n       -d '{{\"item\":\"widget\",\"quantity\":5,\"user\":\"jack\"}}'\n\
         Follow it:\n  curl {frontend}/order/<order_id>\n\
         Watch results (another terminal):\n  export CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB=http://127.0.0.1:{}/ CLOUDSDK_AUTH_DISABLE_CREDENTIALS=true CLOUDSDK_CORE_PROJECT={}\n  gcloud pubsub subscriptions pull payment-created-sub --auto-ack\n  gcloud pubsub subscriptions pull error-cli-sub --auto-ack\n         Parked messages and dead letters, with a redrive button:\n  http://127.0.0.1:{}/\n         Take a function offline and back (a function that dies is restarted by itself):\n  cargo run --bin saga -- stop inventory --control-port {}\n  cargo run --bin saga -- start inventory --control-port {}\n\nCtrl-C stops everything.\n",
        args.ports.pubsub,
        config.project_id,
        args.control_port,
        args.control_port,
        args.control_port
    ));
    println!("{out}");
}
