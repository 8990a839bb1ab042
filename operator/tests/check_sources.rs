//! `airssys-operator check-sources`: the examples pass, the invalid examples are rejected with
//! the reason, as the operator's `Accepted` condition would say, and other kinds in the same
//! files are skipped.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use std::path::PathBuf;
use std::process::Command;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn check(files: &[PathBuf]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_airssys-operator"))
        .arg("check-sources")
        .args(files)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn example_sources_are_accepted() {
    let files: Vec<PathBuf> = std::fs::read_dir(examples())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("trustsource-"))
        })
        .collect();
    assert_eq!(files.len(), 5, "{files:?}");
    let (ok, stdout, stderr) = check(&files);
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(
        stdout.matches("source is valid and in use").count(),
        5,
        "{stdout}"
    );
}

#[test]
fn invalid_sources_are_rejected_with_the_reason() {
    let cases = [
        (
            "trustsource-deny-with-ceiling.yaml",
            "a Deny source takes no capabilityCeiling",
        ),
        (
            "trustsource-dev-mode-everywhere.yaml",
            "must select namespaces",
        ),
        ("trustsource-matches-nothing.yaml", "must match something"),
        (
            "trustsource-approval-without-capabilities.yaml",
            "records no capabilities",
        ),
        ("trustsource-bad-decision.yaml", "not a valid TrustSource"),
    ];
    for (file, want) in cases {
        let (ok, stdout, stderr) = check(&[examples().join("invalid").join(file)]);
        assert!(!ok, "{file} must be rejected: {stdout}");
        assert!(
            stdout.contains(want) || stderr.contains(want),
            "{file}: {stdout}{stderr}"
        );
    }
}

#[test]
fn other_kinds_in_the_same_files_are_skipped() {
    // examples/ mixes Namespaces, WasmComponents and the five TrustSources.
    let files: Vec<PathBuf> = std::fs::read_dir(examples())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    let (ok, stdout, stderr) = check(&files);
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(
        stdout.matches("source is valid and in use").count(),
        5,
        "{stdout}"
    );
}

#[test]
fn every_source_in_a_mixed_file_is_still_checked() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(examples().join("trustsource-deny.yaml")).unwrap();
    let bad = std::fs::read_to_string(examples().join("invalid/trustsource-matches-nothing.yaml"))
        .unwrap();
    let component = std::fs::read_to_string(examples().join("component-echo.yaml")).unwrap();
    let mixed = dir.path().join("mixed.yaml");
    std::fs::write(
        &mixed,
        format!("{component}\n---\n{good}\n---\n{bad}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{ name: x }}\n"),
    )
    .unwrap();
    let (ok, stdout, stderr) = check(&[mixed]);
    assert!(
        !ok,
        "the invalid source must fail the check: {stdout}{stderr}"
    );
    assert_eq!(
        stdout.matches("source is valid and in use").count(),
        1,
        "{stdout}"
    );
    assert!(stdout.contains("must match something"), "{stdout}{stderr}");
    assert!(!stderr.contains("not a valid TrustSource"), "{stderr}");

    let only_components = dir.path().join("components.yaml");
    std::fs::write(&only_components, &component).unwrap();
    let (ok, stdout, stderr) = check(&[only_components]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stderr.contains("holds no TrustSource"), "{stderr}");
}
