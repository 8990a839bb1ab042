//! The committed CRD YAML must be exactly what the types generate, in both places it lives.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use std::path::Path;

#[test]
fn committed_crds_match_the_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs = [
        root.join("yaml"),
        root.join("../charts/airssys-wasm/files/crds"),
    ];
    let files = airssys_crds::generate::crd_files().expect("CRDs render");
    for dir in &dirs {
        for (name, generated) in &files {
            let path = dir.join(name);
            let committed = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                committed == *generated,
                "{} is stale: run `cargo run -p airssys-crds --features crdgen --bin crdgen -- --write crds/yaml charts/airssys-wasm/files/crds`",
                path.display()
            );
        }
        let extra: Vec<_> = std::fs::read_dir(dir)
            .expect("CRD dir exists")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !files.iter().any(|(f, _)| f == n))
            .collect();
        assert!(
            extra.is_empty(),
            "{}: files no CRD generates: {extra:?}",
            dir.display()
        );
    }
}

#[test]
fn crds_have_the_api_surface_users_rely_on() {
    use kube::CustomResourceExt;
    let wc = airssys_crds::WasmComponent::crd();
    let version = &wc.spec.versions[0];
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    for want in ["Trust", "Approved", "Ready", "Age"] {
        assert!(
            columns.contains(&want),
            "printer column {want} in {columns:?}"
        );
    }
    let sub = version.subresources.as_ref().expect("subresources");
    assert!(sub.status.is_some(), "status subresource");
    assert_eq!(
        sub.scale.as_ref().map(|s| s.spec_replicas_path.as_str()),
        Some(".spec.replicas")
    );
    assert_eq!(wc.spec.scope, "Namespaced");

    assert_eq!(airssys_crds::TrustSource::crd().spec.scope, "Cluster");

    let placement = airssys_crds::Placement::crd();
    let fields: Vec<&str> = placement.spec.versions[0]
        .selectable_fields
        .iter()
        .flatten()
        .map(|f| f.json_path.as_str())
        .collect();
    assert!(
        fields.contains(&".spec.nodeName"),
        "agents select their Placements by node: {fields:?}"
    );
}
