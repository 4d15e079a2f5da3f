//! `saga bench` works: it starts its own stack, drives a workload with failures through it,
//! measures the floor, checks the invariants and writes its results. No timing is asserted
//! here: speed is what the bench reports, not what a test decides.

use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_bench_drives_orders_and_reports_results_with_the_invariants_checked() {
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-test");
    let _ = std::fs::remove_dir_all(&out);
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_saga"))
        .args([
            "bench",
            "-n",
            "20",
            "-c",
            "4",
            "--workload",
            "failures",
            "--floor",
        ])
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
    for function in ["frontend", "order", "inventory", "payments", "janitor"] {
        let f = &result["functions"][function];
        assert!(f["peak_rss_mib"].as_f64().unwrap() > 0.0, "{function}: {f}");
        assert!(f["ready_ms"].as_f64().is_some(), "{function}: {f}");
    }
    assert!(
        result["emulators"].as_object().unwrap().len() == 2,
        "{result}"
    );
    assert!(result["floor"]["orders_per_s"].as_f64().unwrap() > 0.0);
    assert!(
        result["hops"]
            .as_object()
            .unwrap()
            .contains_key("order → inventory")
    );
    let svg = std::fs::read_to_string(out.join("failures-c4-n20.svg")).unwrap();
    assert!(svg.starts_with("<svg"));
}
