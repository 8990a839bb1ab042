//! Capability check cost (goal: ≤ 20 ns), next to bare baselines so each figure is also a
//! ratio: a raw `str::starts_with` for paths, a `HashSet<&str>` lookup for names, and the
//! uncompiled `CapabilitySet::allows_*` the table replaces.
//!
//! `cargo bench -p airssys-agent --bench grant -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::hint::black_box;
use std::net::IpAddr;

use airssys_agent::grant::{Access, GrantTable};
use airssys_crds::capability::{Capabilities, CapabilitySet, classify};
use criterion::{Criterion, criterion_group, criterion_main};

/// A realistic, medium-sized grant.
const GRANT: &str = r#"
filesystem:
  - { path: /data, access: [read, write] }
  - { path: /etc/app, access: [read] }
  - { path: /var/cache/app, access: [read, write] }
  - { path: /srv/static, access: [read] }
network:
  - { host: "*.example.com", port: 443 }
  - { host: api.partner.io, port: 8000, endPort: 8100 }
  - { host: metrics.internal.example.net, port: 9090 }
  - { host: 10.0.0.0/8, port: 5432 }
storage:
  - { bucket: counters, access: [read, write] }
  - { bucket: cache, access: [read] }
  - { bucket: sessions, access: [read, write] }
  - { bucket: inbox, access: [write] }
  - { bucket: config, access: [read] }
messaging:
  - { topic: "orders.>", access: [publish, subscribe] }
  - { topic: "audit.*", access: [subscribe] }
  - { topic: "events.login", access: [publish] }
  - { topic: "events.logout", access: [publish] }
  - { component: billing, access: [send] }
  - { component: inventory, access: [send] }
env: [{ name: LOG_LEVEL }, { name: REGION }, { name: FEATURE_FLAGS }, { name: TZ }]
"#;

fn bench(c: &mut Criterion) {
    let api: Capabilities = serde_yaml::from_str(GRANT).unwrap();
    let set = CapabilitySet::parse(&api).unwrap();
    let table = GrantTable::compile(&set);
    let public: IpAddr = "93.184.216.34".parse().unwrap();
    let private: IpAddr = "10.1.2.3".parse().unwrap();

    let mut g = c.benchmark_group("grant");

    // Baselines.
    let prefixes = ["/data", "/etc/app", "/var/cache/app", "/srv/static"];
    g.bench_function("baseline/str_starts_with_scan", |b| {
        b.iter(|| {
            let p = black_box("/var/cache/app/blobs/42");
            prefixes.iter().any(|pre| p.starts_with(pre))
        })
    });
    let buckets: HashSet<&str> = ["counters", "cache", "sessions", "inbox", "config"].into();
    g.bench_function("baseline/hashset_contains", |b| {
        b.iter(|| buckets.contains(black_box("sessions")))
    });

    // The compiled table.
    g.bench_function("table/check_path_hit", |b| {
        b.iter(|| table.check_path(black_box("/var/cache/app/blobs/42"), Access::Write))
    });
    g.bench_function("table/check_path_miss", |b| {
        b.iter(|| table.check_path(black_box("/etc/passwd"), Access::Read))
    });
    g.bench_function("table/check_path_unnormalized", |b| {
        b.iter(|| table.check_path(black_box("//data/./x"), Access::Read))
    });
    g.bench_function("table/check_bucket_hit", |b| {
        b.iter(|| table.check_bucket(black_box("sessions"), Access::Write))
    });
    g.bench_function("table/check_bucket_miss", |b| {
        b.iter(|| table.check_bucket(black_box("secrets"), Access::Read))
    });
    g.bench_function("table/check_connect_suffix_host", |b| {
        b.iter(|| table.check_connect(black_box(Some("api.example.com")), black_box(public), 443))
    });
    g.bench_function("table/check_connect_cidr", |b| {
        b.iter(|| table.check_connect(black_box(None), black_box(private), 5432))
    });
    g.bench_function("table/check_connect_denied_private", |b| {
        b.iter(|| table.check_connect(black_box(Some("api.example.com")), black_box(private), 443))
    });
    let public_v6: IpAddr = "2606:2800:220:1:248:1893:25c8:1946".parse().unwrap();
    g.bench_function("table/check_connect_suffix_host_v6", |b| {
        b.iter(|| {
            table.check_connect(
                black_box(Some("api.example.com")),
                black_box(public_v6),
                443,
            )
        })
    });
    // The address classification alone (crds `classify`), by family.
    g.bench_function("classify/public_v4", |b| {
        b.iter(|| classify(black_box(public)))
    });
    g.bench_function("classify/public_v6", |b| {
        b.iter(|| classify(black_box(public_v6)))
    });
    g.bench_function("classify/private_v4", |b| {
        b.iter(|| classify(black_box(private)))
    });
    // A broad block differs address by address: the one case that still classifies.
    let broad = CapabilitySet::parse(
        &serde_yaml::from_str::<Capabilities>("network: [{ host: 0.0.0.0/0, port: 443 }]").unwrap(),
    )
    .unwrap();
    let broad = GrantTable::compile(&broad);
    g.bench_function("table/check_connect_broad_cidr", |b| {
        b.iter(|| broad.check_connect(black_box(None), black_box(public), 443))
    });
    g.bench_function("table/check_publish_literal", |b| {
        b.iter(|| table.check_publish(black_box("events.logout")))
    });
    g.bench_function("table/check_publish_wildcard", |b| {
        b.iter(|| table.check_publish(black_box("orders.eu.created")))
    });
    g.bench_function("table/check_send", |b| {
        b.iter(|| table.check_send(black_box("inventory")))
    });
    g.bench_function("table/check_env", |b| {
        b.iter(|| table.check_env(black_box("FEATURE_FLAGS")))
    });

    // The uncompiled set, for the ratio the table buys.
    g.bench_function("set/allows_path_hit", |b| {
        b.iter(|| set.allows_path(black_box("/var/cache/app/blobs/42"), Access::Write))
    });
    g.bench_function("set/allows_bucket_hit", |b| {
        b.iter(|| set.allows_bucket(black_box("sessions"), Access::Write))
    });
    g.bench_function("set/allows_publish_literal", |b| {
        b.iter(|| set.allows_publish(black_box("events.logout")))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
