//! The `airssys-agent run --manifest` binary, as a user runs it: local manifest, real
//! guests, state in a data directory that survives a restart of the agent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

fn run_agent(
    manifest: &std::path::Path,
    data: &std::path::Path,
    requests: &[&str],
) -> (bool, String, String) {
    run_agent_with(manifest, data, requests, &[])
}

fn run_agent_with(
    manifest: &std::path::Path,
    data: &std::path::Path,
    requests: &[&str],
    flags: &[&str],
) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_airssys-agent"));
    cmd.arg("run")
        .arg("--manifest")
        .arg(manifest)
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "info")
        .args(flags);
    for r in requests {
        cmd.arg("--request").arg(r);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A temporary directory holding `guests` (by name, `<name>.wasm`) and a manifest
/// `agent.yaml` with `yaml`; returns the directory and the manifest's path.
fn manifest_dir(guests: &[&str], yaml: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for g in guests {
        std::fs::copy(
            support::guest_dir().join(format!("{g}.wasm")),
            dir.path().join(format!("{g}.wasm")),
        )
        .unwrap();
    }
    let manifest = dir.path().join("agent.yaml");
    std::fs::write(&manifest, yaml).unwrap();
    (dir, manifest)
}

#[test]
fn run_manifest_serves_requests_and_keeps_state_across_restarts() {
    let (dir, manifest) = manifest_dir(
        &["echo", "kv_counter"],
        r#"
components:
  - name: echo
    wasm: echo.wasm
  - namespace: shop
    name: counter
    wasm: kv_counter.wasm
    capabilities:
      storage: [{ bucket: counters, access: [read, write] }]
    limits: { timeout: 2s, memory: 32Mi }
"#,
    );
    let data = dir.path().join("data");

    let (ok, stdout, stderr) = run_agent(
        &manifest,
        &data,
        &["default/echo=hello", "shop/counter=incr:visits"],
    );
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("default/echo: hello"), "{stdout}");
    assert!(stdout.contains("shop/counter: 1"), "{stdout}");
    assert!(stderr.contains("Compiled"), "first run compiles: {stderr}");

    // Restart: the database keeps the counter, the cache spares the compile.
    let (ok, stdout, stderr) = run_agent(&manifest, &data, &["shop/counter=incr:visits"]);
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("shop/counter: 2"), "{stdout}");
    assert!(
        stderr.contains("Disk"),
        "second run loads from the cache: {stderr}"
    );
    assert!(!stderr.contains("Compiled"), "{stderr}");

    // The audit log recorded the starts, one JSON object per line.
    let audit = std::fs::read_to_string(data.join("audit.jsonl")).unwrap();
    let starts = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == "Started" && e["component"] == "shop/counter")
        .count();
    assert_eq!(starts, 2, "{audit}");

    // A request the component refuses makes the command fail, with the reason printed.
    let (ok, stdout, _) = run_agent(&manifest, &data, &["shop/counter=bogus"]);
    assert!(!ok);
    assert!(stdout.contains("shop/counter: error:"), "{stdout}");
}

#[test]
fn audit_flags_rotate_the_log_and_bound_the_files() {
    let (dir, manifest) = manifest_dir(
        &["echo"],
        "components:\n  - { name: a, wasm: echo.wasm }\n  - { name: b, wasm: echo.wasm }\n",
    );
    let data = dir.path().join("data");
    // Every line is longer than one byte, so each gets a file of its own.
    let flags = ["--audit-max-bytes", "1", "--audit-max-files", "3"];
    for _ in 0..3 {
        let (ok, stdout, stderr) = run_agent_with(&manifest, &data, &["default/a=x"], &flags);
        assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    }
    let mut files: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("audit.jsonl"))
        .collect();
    files.sort();
    assert_eq!(files, ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]);
    for f in &files {
        let text = std::fs::read_to_string(data.join(f)).unwrap();
        assert_eq!(text.lines().count(), 1, "{f}: {text}");
        serde_json::from_str::<serde_json::Value>(text.trim()).unwrap();
    }
    // The run-time arguments are checked before anything starts.
    let (ok, _, stderr) = run_agent_with(&manifest, &data, &[], &["--audit-max-bytes", "0"]);
    assert!(!ok);
    assert!(stderr.contains("--audit-max-bytes"), "{stderr}");
}

#[test]
fn run_refuses_a_manifest_whose_digest_does_not_match() {
    let (dir, manifest) = manifest_dir(
        &["echo"],
        "components:\n  - name: echo\n    wasm: echo.wasm\n    digest: sha256:0000000000000000000000000000000000000000000000000000000000000000\n",
    );
    let (ok, _, stderr) = run_agent(&manifest, &dir.path().join("data"), &["default/echo=x"]);
    assert!(!ok);
    assert!(stderr.contains("digest mismatch"), "{stderr}");
}

/// `GET path` over a fresh connection with `Connection: close`: the raw response, or `None`
/// while nothing listens.
fn raw_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

#[test]
fn a_local_manifest_serves_an_http_component_on_its_port() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (dir, manifest) = manifest_dir(
        &["http_hello"],
        &format!(
            "components:\n  - name: hello\n    wasm: http_hello.wasm\n    http: {{ port: {port}, pathPrefix: /hello }}\n"
        ),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_airssys-agent"))
        .arg("run")
        .arg("--manifest")
        .arg(&manifest)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--advertise-address", "127.0.0.1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let response = loop {
        if let Some(r) = raw_get(port, "/hello/cli") {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never listened on {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let outside = raw_get(port, "/elsewhere").unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("hello from /hello/cli\n"), "{response}");
    assert!(outside.starts_with("HTTP/1.1 404"), "{outside}");
}
