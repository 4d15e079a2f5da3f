//! The checks against the real provider schema (fetched with npm on first run).

use std::path::{Path, PathBuf};

use saga_terraform_schema::FindingKind::{self, *};
use saga_terraform_schema::{Finding, check_dir};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn check(dir: &Path) -> Vec<Finding> {
    match check_dir(dir) {
        Ok(findings) => findings,
        Err(e) => panic!("checking {} failed: {e:?}", dir.display()),
    }
}

fn listed(findings: &[Finding]) -> String {
    findings.iter().map(|f| format!("\n  {f}")).collect()
}

/// Exactly one finding in `file` of `kind` whose message names `needle`.
fn assert_one(findings: &[Finding], file: &str, address: &str, kind: FindingKind, needle: &str) {
    let matching: Vec<_> = findings
        .iter()
        .filter(|f| f.file == Path::new(file) && f.kind == kind && f.message.contains(needle))
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "want one {kind:?} naming {needle} in {file}; all findings:{}",
        listed(findings)
    );
    assert_eq!(matching[0].address, address, "{}", matching[0]);
}

/// (file, address, kind, what the message must name): one case per check.
#[rustfmt::skip]
const CASES: &[(&str, &str, FindingKind, &str)] = &[
    ("unknown_argument.tf", "google_service_account.unknown_argument", UnknownArgument, "`display_nam`"),
    ("unknown_block.tf", "google_pubsub_subscription.unknown_block", UnknownBlock, "`retry_polcy`"),
    ("missing_argument.tf", "google_pubsub_topic_iam_member.missing_argument", MissingArgument, "`member`"),
    ("missing_block.tf", "google_cloud_run_v2_service.missing_block", MissingBlock, "`template`"),
    ("attribute_as_block.tf", "google_pubsub_subscription.attribute_as_block", AttributeAsBlock, "`labels`"),
    ("block_as_attribute.tf", "google_pubsub_subscription.block_as_attribute", BlockAsAttribute, "`expiration_policy`"),
    ("repeated_block.tf", "google_pubsub_subscription.repeated_block", RepeatedBlock, "`retry_policy`"),
    ("dynamic_block.tf", "google_cloud_run_v2_service.dynamic_block", UnknownArgument, "`valeu` in `template.containers.env`"),
    ("unknown_attribute.tf", "output.unknown_attribute", UnknownAttribute, "google_service_account.unknown_argument.emial"),
    ("unknown_attribute.tf", "locals", UnknownAttribute, "google_pubsub_subscription.repeated_block.topic_url"),
    ("unknown_attribute.tf", "module.unknown_attribute", UnknownAttribute, "data.google_project.unknown_attribute.project_number"),
    ("undeclared.tf", "output.undeclared", UndeclaredResource, "google_pubsub_topic.nowhere"),
    ("unknown_type.tf", "google_cloud_run_v3_service.unknown_type", UnknownResourceType, "`google_cloud_run_v3_service`"),
    ("unknown_type.tf", "google_project_service_identity.unknown_type", UnknownResourceType, "set `provider = google-beta`"),
];

#[test]
fn each_check_fires_on_the_broken_fixtures() {
    let findings = check(&fixture("broken"));
    for &(file, address, kind, needle) in CASES {
        assert_one(&findings, file, address, kind, needle);
    }
    assert_eq!(
        findings.len(),
        CASES.len(),
        "unexpected findings:{}",
        listed(&findings)
    );
}

#[test]
fn valid_terraform_has_no_findings() {
    let findings = check(&fixture("good"));
    assert!(findings.is_empty(), "findings:{}", listed(&findings));
}

#[test]
fn findings_display_file_address_and_message() {
    let findings = check(&fixture("broken"));
    let shown: Vec<String> = findings.iter().map(ToString::to_string).collect();
    assert!(
        shown.contains(&"missing_argument.tf: google_pubsub_topic_iam_member.missing_argument: missing required argument `member`".to_owned()),
        "{shown:#?}"
    );
}

/// The project's own Terraform.
#[test]
fn project_terraform_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../terraform");
    let findings = check(&dir);
    assert!(
        findings.is_empty(),
        "terraform/ has errors:{}",
        listed(&findings)
    );
}
