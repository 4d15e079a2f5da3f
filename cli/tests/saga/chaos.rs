//! `saga chaos`, run as a user runs it: a schedule drawn from a seed, applied while orders
//! flow, and the invariants checked after. Here against the tests' emulators, each run in a
//! project of its own.

use std::process::Output;
use std::time::Duration;

use saga_contracts::docs::{UserDoc, collections};
use saga_infra::config::Endpoint;
use tokio::process::Command;

use crate::helpers::{TestApp, spawn_app};

fn saga() -> Command {
    crate::helpers::saga()
}

/// `saga chaos` against the emulators `app` runs on, in `project`.
fn chaos(app: &TestApp, project: &str, seed: u64, duration: u64) -> Command {
    let Endpoint::Emulator(firestore) = &app.config.firestore else {
        panic!("tests run on the emulators");
    };
    let port = |host: &str| host.rsplit(':').next().unwrap().to_owned();
    let mut command = saga();
    command
        .args(["chaos", "--seed", &seed.to_string()])
        .args(["--duration", &duration.to_string()])
        .args(["--project", project])
        .args(["--pubsub-port", &port(&app.pubsub_host)])
        .args(["--firestore-port", &port(firestore)])
        .kill_on_drop(true);
    command
}

fn text(out: &Output) -> String {
    format!(
        "{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn a_seed_draws_the_same_schedule_every_time() {
    let schedule = |seed: &str| {
        let mut command = saga();
        command.args([
            "chaos",
            "--seed",
            seed,
            "--duration",
            "60",
            "--schedule-only",
        ]);
        command
    };
    let first = schedule("7").output().await.unwrap();
    let again = schedule("7").output().await.unwrap();
    let other = schedule("8").output().await.unwrap();
    assert!(first.status.success(), "{}", text(&first));
    let first = String::from_utf8_lossy(&first.stdout).into_owned();
    assert_eq!(first, String::from_utf8_lossy(&again.stdout));
    let digest = |s: &str| s.lines().next().unwrap_or_default().to_owned();
    assert!(digest(&first).contains("digest"), "{first}");
    assert_ne!(
        digest(&first),
        digest(&String::from_utf8_lossy(&other.stdout))
    );
    for fault in ["killed", "POST /order"] {
        assert!(first.contains(fault), "{first}");
    }
}

/// The CI's seeds: every fault applied is printed, every saga finishes, the invariants hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_chaos_heals_and_the_invariants_hold() {
    let app = spawn_app().await;
    for seed in [1, 2, 3] {
        let project = format!("chaos-ci-{seed}-{}", &app.project[..6]);
        let out = chaos(&app, &project, seed, 15).output().await.unwrap();
        let said = text(&out);
        assert_eq!(out.status.code(), Some(0), "seed {seed}:\n{said}");
        assert!(said.starts_with("schedule digest"), "{said}");
        assert!(said.contains("applied  t+"), "{said}");
        assert!(said.contains("killed (pid"), "{said}");
        assert!(said.contains("all invariants hold"), "{said}");
        assert!(said.contains("restarted (pid"), "{said}");
    }
}

/// An invariant broken under the run (here a balance changed behind the saga's back) fails
/// the run, exit 1, and says which seed replays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_invariant_fails_the_run_and_prints_the_seed_to_replay() {
    let app = spawn_app().await;
    let project = format!("chaos-broken-{}", &app.project[..6]);
    let run = chaos(&app, &project, 5, 12).output();
    let tamper = async {
        let store = saga_infra::store::Store::connect(&project, &app.config.firestore)
            .await
            .unwrap();
        // Once the run has seeded its project and orders flow.
        tokio::time::sleep(Duration::from_secs(8)).await;
        store
            .set(collections::USERS, "penny", &UserDoc { balance: 1_000 })
            .await
            .unwrap();
    };
    let (out, ()) = tokio::join!(run, tamper);
    let out = out.unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("BROKEN: "), "{said}");
    assert!(
        said.contains("replay this schedule with: saga chaos --seed 5 --duration 12"),
        "{said}"
    );
}
