//! The `saga` CLI as scripts use it: help, flags, exit codes (0 done, 1 problems found,
//! 2 could not run).

use saga_infra::config::Endpoint;
use serde_json::json;
use tokio::process::Command;

use crate::helpers::spawn_app;

fn saga() -> Command {
    crate::helpers::saga()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_has_help_consistent_flags_and_exit_codes_scripts_can_trust() {
    let help = saga().arg("--help").output().await.unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for command in [
        "up", "stop", "start", "seed", "check", "trace", "replay", "dlq", "serve",
    ] {
        assert!(help.contains(command), "--help lacks {command}:\n{help}");
    }

    let app = spawn_app().await;
    let id = app
        .place(json!({"item": "widget", "quantity": 1, "user": "jack"}))
        .await;
    assert_eq!(app.wait_terminal(id).await["status"], "COMPLETED");
    let Endpoint::Emulator(firestore) = &app.config.firestore else {
        panic!("tests run on the emulators");
    };
    let target = [
        "--project",
        &app.project,
        "--firestore",
        firestore,
        "--pubsub",
        &app.pubsub_host,
    ];

    let check = saga().arg("check").args(target).output().await.unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(0), "{out}");
    assert!(
        out.contains("all invariants hold") && out.contains("COMPLETED 1"),
        "{out}"
    );

    let trace = saga()
        .arg("trace")
        .args(target)
        .arg(id.to_string())
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&trace.stdout);
    assert_eq!(trace.status.code(), Some(0), "{out}");
    assert!(
        out.contains("COMPLETED") && out.contains("payments"),
        "{out}"
    );

    let unknown = saga()
        .arg("trace")
        .args(target)
        .arg(uuid::Uuid::new_v4().to_string())
        .output()
        .await
        .unwrap();
    assert_eq!(
        unknown.status.code(),
        Some(1),
        "an unknown order is a finding, not a crash"
    );

    let usage = saga()
        .args(["dlq", "redrive", "parked"])
        .args(target)
        .output()
        .await
        .unwrap();
    assert_eq!(usage.status.code(), Some(2), "--all or --id is required");

    let list = saga()
        .args(["dlq", "list"])
        .args(target)
        .output()
        .await
        .unwrap();
    assert_eq!(list.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&list.stdout).contains("0 messages"));

    // Stock moved behind the saga's back: check says so, with exit code 1.
    app.store
        .set(
            saga_contracts::docs::collections::INVENTORY,
            "widget",
            &json!({"price": 10, "stock": 5}),
        )
        .await
        .unwrap();
    let broken = saga().arg("check").args(target).output().await.unwrap();
    assert_eq!(broken.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&broken.stdout).contains("not conserved"));
}
