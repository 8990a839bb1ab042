//! Every manifest in `examples/` deserializes, passes the CRDs' CEL rules client-side and the
//! Rust-side checks; every manifest in `examples/invalid/` is rejected with the message its
//! `# expect-client-error:` header names. (The real API server's verdict on the same files is
//! tested in `tests/e2e`, against each file's `# expect-error:` header.)
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use std::path::{Path, PathBuf};

use airssys_crds::{Placement, TrustSource, WasmComponent};
use kube::CustomResourceExt;
use kube::core::cel::Validator;
use serde::Deserialize;
use serde_json::Value;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("CRD has a schema");
    serde_json::to_value(schema).expect("schema is JSON")
}

/// Client-side admission of one document, in the API server's order: typed decoding (unknown
/// fields, enums, required fields), the CEL rules, then the Rust-side checks the operator runs.
/// Returns the kind admitted or the rejection message.
fn admit(doc: &Value) -> Result<&'static str, String> {
    fn decode<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, String> {
        serde_json::from_value(v.clone()).map_err(|e| e.to_string())
    }
    let cel = |crd| {
        Validator::new()
            .validate(&schema_of(&crd), doc, None)
            .map_err(|errs| {
                errs.as_slice()
                    .iter()
                    .map(|e| e.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
    };
    match doc["kind"].as_str().unwrap_or_default() {
        "WasmComponent" => {
            let wc: WasmComponent = decode(doc)?;
            cel(WasmComponent::crd())?;
            wc.spec.validate().map_err(|e| e.to_string())?;
            Ok("WasmComponent")
        }
        "TrustSource" => {
            let ts: TrustSource = decode(doc)?;
            cel(TrustSource::crd())?;
            ts.spec.validate().map_err(|e| e.to_string())?;
            Ok("TrustSource")
        }
        "Placement" => {
            decode::<Placement>(doc)?;
            cel(Placement::crd())?;
            Ok("Placement")
        }
        "Namespace" => Ok("Namespace"),
        other => panic!("unexpected kind {other:?} in examples"),
    }
}

#[test]
fn every_example_is_admitted() {
    let mut kinds = Vec::new();
    for path in yaml_files(&examples_dir()) {
        for doc in documents(&path) {
            match admit(&doc) {
                Ok(kind) => kinds.push(kind),
                Err(err) => panic!("{} was rejected: {err}", path.display()),
            }
        }
    }
    let count = |k| kinds.iter().filter(|x| **x == k).count();
    assert!(count("WasmComponent") >= 3, "several components: {kinds:?}");
    assert!(
        count("TrustSource") >= 5,
        "a realistic TrustSource set: {kinds:?}"
    );
}

#[test]
fn every_invalid_example_is_rejected_with_its_message() {
    let files = yaml_files(&examples_dir().join("invalid"));
    assert!(files.len() >= 10, "a real set of invalid manifests");
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable");
        let expected = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect-client-error:"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{} lacks '# expect-client-error:'", path.display()));
        assert!(
            text.lines().any(|l| l.starts_with("# expect-error:")),
            "{} lacks '# expect-error:' for the API server test",
            path.display()
        );
        let docs = documents(&path);
        assert_eq!(
            docs.len(),
            1,
            "{}: one manifest per invalid file",
            path.display()
        );
        match admit(&docs[0]) {
            Ok(_) => panic!("{} was admitted; expected: {expected}", path.display()),
            Err(err) => assert!(
                err.contains(expected),
                "{}: rejected with {err:?}, expected it to say {expected:?}",
                path.display()
            ),
        }
    }
}
