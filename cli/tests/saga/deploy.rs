//! The deployment is checked against the code, since `terraform validate` cannot run here:
//! the Terraform topology must be the Rust topology, the resources must be built from it, and
//! the Dockerfile must copy exactly the binaries cargo builds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use hcl::eval::{Context, Evaluate};
use saga_contracts::docs::collections;
use saga_contracts::topology::{Function, PULL_SUBSCRIPTIONS, TOPICS};
use serde_json::{Value, json};

fn root() -> &'static Path {
    Path::new(crate::helpers::WORKSPACE)
}

fn parse(path: &str) -> hcl::Body {
    let text = std::fs::read_to_string(root().join(path)).expect("reading Terraform");
    hcl::parse(&text).unwrap_or_else(|e| panic!("{path} is not valid HCL: {e}"))
}

/// The literal locals of terraform/topology.tf, as JSON.
fn topology_locals() -> BTreeMap<String, Value> {
    let body = parse("terraform/topology.tf");
    let mut locals = BTreeMap::new();
    for block in body.blocks().filter(|b| b.identifier() == "locals") {
        for attr in block.body().attributes() {
            if let Ok(value) = attr.expr().evaluate(&Context::new()) {
                locals.insert(attr.key().to_owned(), serde_json::to_value(value).unwrap());
            }
        }
    }
    locals
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .expect("a list")
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

fn seconds(d: std::time::Duration) -> String {
    format!("{}s", d.as_secs())
}

/// The attribute `name` of the block `kind "label"...` in `body`, formatted as HCL.
fn block_attr(body: &hcl::Body, kind: &str, labels: &[&str], name: &str) -> String {
    let block = body
        .blocks()
        .find(|b| {
            b.identifier() == kind
                && b.labels().iter().map(|l| l.as_str()).collect::<Vec<_>>() == labels
        })
        .unwrap_or_else(|| panic!("no {kind} {labels:?}"));
    let attr = block
        .body()
        .attributes()
        .find(|a| a.key() == name)
        .unwrap_or_else(|| panic!("{kind} {labels:?} has no {name}"));
    hcl::format::to_string(attr.expr()).unwrap()
}

#[test]
fn terraform_topics_are_the_rust_topics() {
    let locals = topology_locals();
    let rust: BTreeSet<String> = TOPICS.iter().map(|t| t.to_string()).collect();
    assert_eq!(strings(&locals["topics"]), rust);
}

#[test]
fn terraform_functions_consume_and_publish_what_the_rust_topology_says() {
    let locals = topology_locals();
    let functions = locals["functions"].as_object().expect("functions map");
    let names: BTreeSet<&str> = functions.keys().map(String::as_str).collect();
    let rust: BTreeSet<&str> = Function::ALL.iter().map(|f| f.name()).collect();
    assert_eq!(names, rust, "functions");
    for function in Function::ALL {
        let tf = &functions[function.name()];
        let publishes: BTreeSet<String> =
            function.publishes().iter().map(|t| t.to_string()).collect();
        assert_eq!(strings(&tf["publishes"]), publishes, "{function} publishes");
        assert_eq!(
            tf["public"],
            json!(function == Function::Frontend),
            "{function} public"
        );
        assert_eq!(
            tf["sweep_path"],
            json!(function.sweep_path()),
            "{function} sweep"
        );
        let expected: serde_json::Map<String, Value> = function
            .consumes()
            .map(|s| {
                let spec = json!({
                    "topic": s.topic,
                    "path": s.path,
                    "dead_letter_topic": s.dead_letter_topic,
                    "max_delivery_attempts": s.max_delivery_attempts,
                    "ack_deadline_seconds": s.ack_deadline.as_secs(),
                    "minimum_backoff": seconds(s.min_backoff),
                    "maximum_backoff": seconds(s.max_backoff),
                });
                (s.name.to_owned(), spec)
            })
            .collect();
        assert_eq!(
            tf["subscriptions"],
            Value::Object(expected),
            "{function} subscriptions"
        );
    }
}

#[test]
fn terraform_pull_subscriptions_are_the_rust_ones() {
    let locals = topology_locals();
    let expected: serde_json::Map<String, Value> = PULL_SUBSCRIPTIONS
        .iter()
        .map(|s| (s.name.to_owned(), json!(s.topic)))
        .collect();
    assert_eq!(locals["pull_subscriptions"], Value::Object(expected));
}

#[test]
fn terraform_resources_are_built_from_the_topology() {
    let main = parse("terraform/main.tf");
    let topics = block_attr(
        &main,
        "resource",
        &["google_pubsub_topic", "topics"],
        "for_each",
    );
    assert!(
        topics.contains("local.topics") && topics.contains("local.dead_letter_topics"),
        "{topics}"
    );
    let pull = block_attr(
        &main,
        "resource",
        &["google_pubsub_subscription", "pull"],
        "for_each",
    );
    assert!(pull.contains("local.pull_subscriptions"), "{pull}");
    let module = block_attr(&main, "module", &["function"], "for_each");
    assert!(module.contains("local.functions"), "{module}");
    let dlq = block_attr(
        &main,
        "resource",
        &["google_pubsub_topic_iam_member", "dead_letter_publisher"],
        "for_each",
    );
    assert!(dlq.contains("local.dead_letter_topics"), "{dlq}");

    let function = parse("terraform/modules/function/main.tf");
    let push = block_attr(
        &function,
        "resource",
        &["google_pubsub_subscription", "push"],
        "for_each",
    );
    assert!(push.contains("var.subscriptions"), "{push}");
    let text = std::fs::read_to_string(root().join("terraform/modules/function/main.tf")).unwrap();
    for needle in [
        "oidc_token",
        "dead_letter_policy",
        "retry_policy",
        "each.value.path",
        "ttl = \"\"",
        "google_cloud_scheduler_job",
        "${local.url}${var.sweep_path}",
    ] {
        assert!(text.contains(needle), "the function module lacks {needle}");
    }
    let publisher = block_attr(
        &function,
        "resource",
        &["google_pubsub_topic_iam_member", "publisher"],
        "for_each",
    );
    assert!(
        publisher.contains("var.publishes"),
        "publish rights come from the topology: {publisher}"
    );
}

#[test]
fn terraform_indexes_what_the_sweeps_query_and_nothing_the_order_only_carries() {
    let main = parse("terraform/main.tf");
    // The sweeps' query (Store::orders_due): status IN (...) and updated_at <= cutoff,
    // ordered by updated_at, needs a composite index.
    let index = blocks(&main, "resource", &["google_firestore_index", "orders_due"])
        .next()
        .expect("the sweeps' composite index");
    let text = hcl::format::to_string(index.body()).unwrap();
    assert!(
        text.contains(&format!("collection = \"{}\"", collections::ORDERS)),
        "{text}"
    );
    let status = text.find("\"status\"").expect("status first");
    let updated = text.find("\"updated_at\"").expect("then updated_at");
    assert!(status < updated, "{text}");
    // The records an order carries are read whole, never queried: no index entries for them.
    let exempt = block_attr(
        &main,
        "resource",
        &["google_firestore_field", "unindexed"],
        "for_each",
    );
    for field in ["steps", "duplicates"] {
        assert!(
            exempt.contains(&format!("\"{field}\"")),
            "{field}: {exempt}"
        );
    }
}

#[test]
fn the_dockerfile_copies_exactly_the_binaries_cargo_builds() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    for function in Function::ALL {
        let name = function.name();
        let manifest =
            std::fs::read_to_string(root().join(format!("functions/{name}/Cargo.toml"))).unwrap();
        assert!(
            manifest.contains(&format!("name = \"saga-{name}\"")),
            "package of {name}"
        );
        assert!(
            manifest.contains(&format!("[[bin]]\nname = \"{name}\"")),
            "binary of {name}"
        );
        assert!(
            dockerfile.contains(&format!("-p saga-{name}")),
            "Dockerfile builds {name}"
        );
        assert!(
            dockerfile.contains(&format!("target/release/{name}")),
            "Dockerfile copies {name}"
        );
    }
    assert!(
        dockerfile.contains("USER nonroot"),
        "the image runs as non-root"
    );
    assert_eq!(
        dockerfile.matches("-p saga-").count(),
        Function::ALL.len(),
        "nothing else is built"
    );
}

/// The shared libraries each distroless runtime image provides (from distroless's package
/// lists: base-nossl is libc6; base adds libssl3; cc adds libgcc-s1, libstdc++6, libgomp1).
fn distroless_libraries(image: &str) -> Option<BTreeSet<&'static str>> {
    let libc = [
        "libc.so.6",
        "libm.so.6",
        "ld-linux-x86-64.so.2",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
    ];
    let ssl = ["libssl.so.3", "libcrypto.so.3"];
    let cc = ["libgcc_s.so.1", "libstdc++.so.6", "libgomp.so.1"];
    let kind = image
        .split(':')
        .next()?
        .strip_prefix("gcr.io/distroless/")?;
    let libraries: Vec<&str> = match kind {
        "base-nossl-debian12" => libc.to_vec(),
        "base-debian12" => [&libc[..], &ssl].concat(),
        "cc-debian12" => [&libc[..], &ssl, &cc].concat(),
        _ => return None,
    };
    Some(libraries.into_iter().collect())
}

#[test]
fn the_runtime_image_has_every_shared_library_the_binaries_link() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let runtime = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .next_back()
        .expect("a runtime stage");
    let provided =
        distroless_libraries(runtime).unwrap_or_else(|| panic!("unknown runtime image {runtime}"));
    // `saga` links everything a function binary links (the same runtime, plus the CLI).
    let dynamic = std::process::Command::new("readelf")
        .args(["-d", env!("CARGO_BIN_EXE_saga")])
        .output()
        .expect("readelf (binutils)");
    let needed: BTreeSet<String> = String::from_utf8_lossy(&dynamic.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split('[').nth(1)?.trim_end_matches(']').to_owned()))
        .collect();
    assert!(needed.contains("libc.so.6"), "readelf found {needed:?}");
    let missing: Vec<&String> = needed
        .iter()
        .filter(|l| !provided.contains(l.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{runtime} lacks {missing:?}, which the binaries link"
    );
    assert!(
        !needed
            .iter()
            .any(|l| l.starts_with("libssl") || l.starts_with("libcrypto")),
        "TLS is rustls: nothing links OpenSSL, {needed:?}"
    );
}

/// The blocks `kind "label"...` of `body` whose labels start with `labels`.
fn blocks<'a>(
    body: &'a hcl::Body,
    kind: &'a str,
    labels: &'a [&'a str],
) -> impl Iterator<Item = &'a hcl::Block> {
    body.blocks().filter(move |b| {
        b.identifier() == kind
            && b.labels()
                .iter()
                .map(|l| l.as_str())
                .take(labels.len())
                .eq(labels.iter().copied())
    })
}

fn text(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

#[test]
fn the_readme_deploy_builds_for_cloud_run_and_rolls_out_each_build() {
    let readme = text("README.md");
    let deploy = readme
        .split("## Deploy to Google Cloud")
        .nth(1)
        .expect("a deploy section");
    let builds: Vec<&str> = deploy
        .lines()
        .filter(|l| l.contains("docker build"))
        .collect();
    assert!(!builds.is_empty(), "the deploy section builds the images");
    for build in &builds {
        // Cloud Run runs linux/amd64: an image built on Apple Silicon otherwise fails there.
        assert!(build.contains("--platform linux/amd64"), "{build}");
        assert!(build.contains(":$TAG"), "a per-build tag: {build}");
    }
    assert!(!deploy.contains(":latest"), "no moving tag");
    for apply in deploy.lines().filter(|l| l.contains("terraform apply")) {
        assert!(apply.contains("image_tag=$TAG"), "{apply}");
    }
    let variables = parse("terraform/variables.tf");
    let tag = blocks(&variables, "variable", &["image_tag"])
        .next()
        .unwrap();
    assert!(
        tag.body().attributes().all(|a| a.key() != "default"),
        "image_tag has no default: every apply names its build"
    );
    assert!(text("terraform/variables.tf").contains("var.image_tag != \"latest\""));
}

#[test]
fn terraform_grants_what_the_push_path_needs_and_no_more() {
    let main = text("terraform/main.tf");
    // The Pub/Sub service agent is created before it is granted roles, never spelt by hand.
    assert!(main.contains("resource \"google_project_service_identity\" \"pubsub\""));
    assert!(
        !main.contains("gcp-sa-pubsub"),
        "the agent comes from the resource"
    );
    assert!(main.contains("roles/iam.serviceAccountOpenIdTokenCreator"));
    assert!(!main.contains("roles/iam.serviceAccountTokenCreator"));
    for api in [
        "cloudresourcemanager.googleapis.com",
        "iamcredentials.googleapis.com",
        "monitoring.googleapis.com",
        "logging.googleapis.com",
    ] {
        assert!(main.contains(api), "{api} is enabled");
    }

    let module = parse("terraform/modules/function/main.tf");
    let firestore = blocks(
        &module,
        "resource",
        &["google_project_iam_member", "firestore"],
    )
    .next()
    .unwrap();
    let condition = firestore
        .body()
        .blocks()
        .find(|b| b.identifier() == "condition")
        .expect("Firestore access limited by an IAM condition");
    let expression = condition
        .body()
        .attributes()
        .find(|a| a.key() == "expression")
        .map(|a| hcl::format::to_string(a.expr()).unwrap())
        .unwrap();
    assert!(
        expression.contains("/databases/") && expression.contains("var.firestore_database"),
        "{expression}"
    );
    // Pushes and sweeps start only once their service exists and the push identity may call it.
    for (kind, name) in [
        ("google_pubsub_subscription", "push"),
        ("google_cloud_scheduler_job", "sweep"),
    ] {
        let labels = [kind, name];
        let block = blocks(&module, "resource", &labels).next().unwrap();
        let depends = block
            .body()
            .attributes()
            .find(|a| a.key() == "depends_on")
            .map(|a| hcl::format::to_string(a.expr()).unwrap())
            .unwrap_or_default();
        for needed in [
            "google_cloud_run_v2_service.function",
            "google_cloud_run_v2_service_iam_member.invoker",
        ] {
            assert!(
                depends.contains(needed),
                "{kind}.{name} depends on {needed}"
            );
        }
    }
    // Behind the invoker check, functions accept the tokens Cloud Run forwards.
    let service = text("terraform/modules/function/main.tf");
    assert!(service.contains("SAGA_PUSH_IAM_FRONTED"));
    assert!(service.contains("invoker_iam_disabled = var.public"));
}

#[test]
fn terraform_alerts_on_dead_letters_stuck_pushes_timeouts_and_errors() {
    let monitoring = parse("terraform/monitoring.tf");
    let policies: Vec<String> =
        blocks(&monitoring, "resource", &["google_monitoring_alert_policy"])
            .map(|b| b.labels()[1].as_str().to_owned())
            .collect();
    assert_eq!(policies, ["dead_letters", "unacked", "timeouts", "errors"]);
    let text = text("terraform/monitoring.tf");
    for metric in [
        "pubsub.googleapis.com/subscription/num_undelivered_messages",
        "pubsub.googleapis.com/subscription/oldest_unacked_message_age",
        "run.googleapis.com/request_count",
    ] {
        assert!(text.contains(metric), "{metric}");
    }
    assert!(text.contains("notification_channels = var.notification_channels"));
    // The log-based metric counts exactly the janitor's line.
    assert!(
        text.contains(&format!(
            "jsonPayload.message=\\\"{}\\\"",
            saga_janitor::TIMED_OUT_LOG
        )),
        "the timeout metric's filter names the janitor's log line"
    );
}

#[test]
fn terraform_turns_sign_in_on_for_the_frontend() {
    let main = text("terraform/main.tf");
    assert!(main.contains("resource \"google_identity_platform_config\" \"users\""));
    assert!(main.contains("identitytoolkit.googleapis.com"));
    // Compared without whitespace: `terraform fmt` aligns the map's `=`.
    let compact: String = main.split_whitespace().collect();
    for env in [
        "SAGA_USER_AUTH=\"firebase\"",
        "SAGA_TRUST_FORWARDED=\"true\"",
    ] {
        assert!(compact.contains(env), "the frontend gets {env}");
    }
    let parsed = parse("terraform/main.tf");
    let index = blocks(
        &parsed,
        "resource",
        &["google_firestore_index", "orders_of_user"],
    )
    .next()
    .expect("the live list's index");
    let text = hcl::format::to_string(index.body()).unwrap();
    let user = text.find("\"user\"").expect("user first");
    let updated = text.find("\"updated_at\"").expect("then updated_at");
    assert!(user < updated && text.contains("DESCENDING"), "{text}");
}

#[test]
fn terraform_exports_every_function_s_spans_to_cloud_trace() {
    let main = text("terraform/main.tf");
    for api in ["telemetry.googleapis.com", "cloudtrace.googleapis.com"] {
        assert!(main.contains(api), "{api} is enabled");
    }
    let variables = text("terraform/variables.tf");
    assert!(
        variables.contains("default     = \"https://telemetry.googleapis.com\""),
        "spans go to the Telemetry API unless told otherwise"
    );
    let module = parse("terraform/modules/function/main.tf");
    let grant = blocks(
        &module,
        "resource",
        &["google_project_iam_member", "trace_writer"],
    )
    .next()
    .expect("each function may write spans");
    let grant = hcl::format::to_string(grant.body()).unwrap();
    assert!(grant.contains("roles/telemetry.tracesWriter"), "{grant}");
    assert!(
        grant.contains("google_service_account.function.email"),
        "{grant}"
    );
    // The variables the function reads (infra/src/config.rs), in the one protocol it speaks.
    let compact: String = text("terraform/modules/function/main.tf")
        .split_whitespace()
        .collect();
    assert!(compact.contains("OTEL_EXPORTER_OTLP_ENDPOINT=var.otlp_endpoint"));
    assert!(compact.contains(&format!(
        "OTEL_EXPORTER_OTLP_PROTOCOL=\"{}\"",
        saga_infra::config::OTLP_PROTOCOL
    )));
}

#[test]
fn terraform_sets_a_rollout_s_pins_on_every_function_and_each_is_a_setting_they_read() {
    let main = parse("terraform/main.tf");
    let env = block_attr(&main, "module", &["function"], "env");
    let (frontend_only, every) = env.split_at(env.find("var.rollout_pins").expect("the pins"));
    assert!(frontend_only.contains("SAGA_USER_AUTH"), "{env}");
    assert!(
        !every.contains("each.key"),
        "the pins go to every function, not only the frontend: {env}"
    );
    // The names the variable takes (its validation) are the pins docs/evolving.md names, and
    // a function refuses to start on a bad value of each: it reads them.
    let variables = text("terraform/variables.tf");
    let pins = ["SAGA_EMIT_EVENT_VERSION", "SAGA_ORDER_LAYOUT"];
    let allowed = variables
        .split("contains([")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("rollout_pins' validation");
    assert_eq!(allowed, pins.map(|p| format!("\"{p}\"")).join(", "));
    for pin in pins {
        let vars = [
            ("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085"),
            ("FIRESTORE_EMULATOR_HOST", "127.0.0.1:8086"),
            (pin, "not-a-value"),
        ];
        let read = saga_infra::config::Config::from_vars(Function::Order, |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        });
        let error = read.expect_err(pin).to_string();
        assert!(error.contains(pin), "{error}");
        assert!(text("docs/evolving.md").contains(pin), "{pin} documented");
    }
}
