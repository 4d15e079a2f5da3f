//! `saga bench` works: it starts its own stack, each function from its own binary as
//! deployed, drives a workload with failures through it, measures the floor, checks the
//! invariants and writes its results. No timing is asserted
//! here: speed is what the bench reports, not what a test decides.

use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_bench_drives_orders_and_reports_results_with_the_invariants_checked() {
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-test");
    let _ = std::fs::remove_dir_all(&out);
    // The per-function binaries are not built by `cargo test`; these stand-ins run the same
    // runtime through `saga serve`, so the test shows the bench launching what is in the
    // directory it is given.
    let bin = out.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for function in ["frontend", "order", "inventory", "payments", "janitor"] {
        let path = bin.join(function);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nexec '{}' serve {function}\n",
                env!("CARGO_BIN_EXE_saga")
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let run = crate::helpers::saga()
        .args([
            "bench",
            "-n",
            "20",
            "-c",
            "4",
            "--workload",
            "failures",
            "--floor",
            "--warmup",
            "5",
            "--sweep-interval",
            "7",
            "--passes",
            "4",
            "--emulator-heap",
            "1g",
        ])
        .arg("--functions-from")
        .arg(&bin)
        .arg("--out")
        .arg(&out)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("invariants held"), "{stdout}");

    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("failures-c4-n20.json")).unwrap())
            .unwrap();
    assert_eq!(result["invariants_held"], true);
    assert_eq!(
        result["completed"].as_u64().unwrap() + result["compensated"].as_u64().unwrap(),
        20
    );
    assert!(
        result["compensated"].as_u64().unwrap() >= 6,
        "stock and payment failures: {result}"
    );
    assert_eq!(result["end_to_end"]["count"], 20);
    // The warm-up's orders ran through the saga too, unmeasured, and were checked.
    assert_eq!(result["warmup"], 5);
    assert_eq!(result["checked_orders"], 25, "{result}");
    assert!(
        result["driver_cpu_s_per_1000_orders"].as_f64().unwrap() > 0.0,
        "{result}"
    );
    assert!(
        stdout.contains("warm-up            5 spread orders"),
        "{stdout}"
    );
    let mut sum_of_peaks = 0.0;
    for function in ["frontend", "order", "inventory", "payments", "janitor"] {
        let f = &result["functions"][function];
        assert!(f["peak_rss_mib"].as_f64().unwrap() > 0.0, "{function}: {f}");
        assert!(f["ready_ms"].as_f64().is_some(), "{function}: {f}");
        sum_of_peaks += f["peak_rss_mib"].as_f64().unwrap();
    }
    // The five at one instant hold no more than each one's own peak added up (give or take
    // the rounding of six figures to 0.1 MiB).
    let at_once = result["five_rss_at_once_peak_mib"].as_f64().unwrap();
    assert!(
        at_once > 0.0 && at_once <= sum_of_peaks + 0.3,
        "at once {at_once}, sum of peaks {sum_of_peaks}"
    );
    assert!(stdout.contains("RSS at once peak"), "{stdout}");
    // What bounds the run, in its own numbers: CPU against the cores, orders in flight
    // against their latency, and the transactions that collided (from the functions' logs).
    for line in [
        "bound: CPU",
        "bound: in flight",
        "contention",
        "nearest bound",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    assert!(result["contention"]["transactions"].is_u64(), "{result}");
    assert!(
        result["emulators"].as_object().unwrap().len() == 2,
        "{result}"
    );
    assert_eq!(
        result["binaries"],
        format!("per-function binaries from {}", bin.display())
    );
    // The floor: 20 trivial orders of 4 transactions and 3 push hops each, after 5 of its
    // own to warm up, as the saga's 20 came after 5 spread orders; both sides measured in
    // four passes of 5, taking turns, each pooled over its four.
    let floor = &result["floor"];
    for (side, line) in [(&result, "  orders/s "), (floor, "  floor ")] {
        let passes: Vec<f64> = side["passes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap())
            .collect();
        assert_eq!(passes.len(), 4, "{side}");
        assert!(passes.iter().all(|p| *p > 0.0), "{side}");
        let said = format!(
            "passes {}, {}, {} and {}",
            passes[0], passes[1], passes[2], passes[3]
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(line) && l.contains(&said)),
            "{said}: {stdout}"
        );
    }
    assert_eq!(floor["warmup"], 5, "{floor}");
    assert!(
        stdout.contains(
            "5 spread orders before, not measured; the floor's 5 trivial ones before its own"
        ),
        "{stdout}"
    );
    assert!(floor["orders_per_s"].as_f64().unwrap() > 0.0, "{floor}");
    assert_eq!(floor["end_to_end"]["count"], 20, "{floor}");
    assert!(
        floor["pubsub_hop"]["count"].as_u64().unwrap() >= 60,
        "{floor}"
    );
    assert!(
        floor["firestore_txn"]["count"].as_u64().unwrap() >= 80,
        "{floor}"
    );
    assert!(
        result["hops"]
            .as_object()
            .unwrap()
            .contains_key("order → inventory")
    );
    // Where the time went: every push of every measured order, Pub/Sub's part and the
    // step's, from the steps' own log lines; the floor's stages measured the same way.
    let pushes = &result["pushes"];
    for step in ["order", "inventory", "payments", "janitor"] {
        let delivery = pushes[step]["delivery"]["count"].as_u64().unwrap_or(0);
        assert!(delivery > 0, "{step}: {pushes}");
        assert_eq!(
            pushes[step]["handling"]["count"], delivery,
            "{step}: {pushes}"
        );
        assert!(
            pushes[step]["delivery"]["mean"].as_f64().unwrap() > 0.0,
            "{step}: {pushes}"
        );
    }
    assert!(
        pushes["order"]["delivery"]["count"].as_u64().unwrap() >= 20,
        "one push to the order step at least for each order: {pushes}"
    );
    assert!(
        floor["pushes"]["delivery"]["count"].as_u64().unwrap() >= 60,
        "{floor}"
    );
    // And what the CPU allows beside the floor: the budget an order, each emulator's cost
    // an operation against the floor's, and the ratio with the waits for Pub/Sub set equal.
    for line in [
        "time an order",
        "floor time",
        "against the floor",
        "at equal waits",
        "CPU at the floor",
        "per operation",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    // Every Firestore and Pub/Sub operation, counted by the functions, per order, with its
    // price; the floor's the same way; the sweeps' apart, per minute.
    for cost in [&result["cost"], &floor["cost"]] {
        let per_order = &cost["per_order"];
        for op in [
            "writes",
            "billed_reads",
            "commits",
            "transactions",
            "publishes",
        ] {
            assert!(per_order[op].as_f64().unwrap() > 0.0, "{op}: {cost}");
        }
        assert!(per_order["publish_bytes"].as_f64().unwrap() > 0.0, "{cost}");
        assert!(
            cost["per_million_usd"]["firestore"].as_f64().unwrap() > 0.0,
            "{cost}"
        );
        assert!(!cost["prices_as_of"].as_str().unwrap().is_empty());
    }
    assert!(result["cost"]["cpu_ms"].as_f64().unwrap() > 0.0);
    // A trivial order is 4 stages of one read and one write.
    assert_eq!(floor["cost"]["per_order"]["writes"], 4.0, "{floor}");
    assert_eq!(floor["cost"]["per_order"]["publishes"], 4.0, "{floor}");
    assert!(
        result["sweeps_per_minute"]["queries"].as_f64().unwrap() > 0.0,
        "{result}"
    );
    assert!(stdout.contains("per million orders"), "{stdout}");
    assert!(stdout.contains("sweeps             per minute"), "{stdout}");
    // Reads of missing documents (every idempotency check's) are answers, not NOT_FOUND
    // errors, which the Firestore emulator logs with a stack trace at a cost in its CPU.
    let emulator_log = std::fs::read_to_string(
        std::path::Path::new(crate::helpers::WORKSPACE)
            .join("target/bench/logs/firestore-emulator.log"),
    )
    .unwrap();
    assert!(
        emulator_log.contains("Dev App Server is now running"),
        "{emulator_log}"
    );
    assert!(
        !emulator_log.contains("not found"),
        "the emulator logged NOT_FOUND errors:\n{emulator_log}"
    );
    // Both emulators' JVMs ran with the heap the run asked for, fixed, as it says.
    assert_eq!(result["emulator_heap"], "1g", "{result}");
    assert!(
        stdout.contains("emulators' heap    fixed at 1g each"),
        "{stdout}"
    );
    for log in ["firestore-emulator.log", "pubsub-emulator.log"] {
        let log = std::fs::read_to_string(
            std::path::Path::new(crate::helpers::WORKSPACE)
                .join("target/bench/logs")
                .join(log),
        )
        .unwrap();
        assert!(
            log.contains("Picked up JAVA_TOOL_OPTIONS:") && log.contains("-Xms1g -Xmx1g"),
            "{log}"
        );
    }
    // Each function sweeps on the interval it was given.
    let order_log = std::fs::read_to_string(
        std::path::Path::new(crate::helpers::WORKSPACE).join("target/bench/logs/order.log"),
    )
    .unwrap();
    assert!(order_log.contains(r#""sweep_interval_s":7"#), "{order_log}");
    let svg = std::fs::read_to_string(out.join("failures-c4-n20.svg")).unwrap();
    assert!(svg.starts_with("<svg"));
}
