//! What `pending` and `explain` print, read from the component's status as the operator wrote
//! it (conditions, digests, matched sources). The plugin never re-decides trust. Pure.

use std::fmt::Write as _;

use airssys_crds::condition::find;
use airssys_crds::{
    CapabilitySet, ConditionStatus, ConditionType, WasmComponent, WasmComponentSpec,
};

use crate::entry::component_id;

/// `Approved` reasons that mean a person must act: nothing vouches for the artifact, or a
/// source does but the request is wider than its ceiling. The operator writes these strings.
const WAITING_FOR_A_PERSON: [&str; 2] = ["PendingApproval", "RequestExceedsCeiling"];
/// The `Approved` reason of a component a `Deny` source matched.
const DENIED: &str = "Denied";

/// One line of `kubectl wasm pending`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRow {
    pub namespace: String,
    pub name: String,
    pub digest: String,
    pub requested: String,
    pub reason: String,
    pub age: String,
}

/// Whether `c` waits for a person: Approved=False for PendingApproval or RequestExceedsCeiling.
pub fn is_pending(c: &WasmComponent) -> bool {
    pending_reason(c).is_some()
}

fn approved_reason(c: &WasmComponent, status: ConditionStatus) -> Option<&str> {
    let cond = find(&c.status.as_ref()?.conditions, ConditionType::Approved)?;
    (cond.status == status).then_some(cond.reason.as_str())
}

fn pending_reason(c: &WasmComponent) -> Option<&str> {
    approved_reason(c, ConditionStatus::False).filter(|r| WAITING_FOR_A_PERSON.contains(r))
}

/// The request as one line, in the grammar's own words.
pub fn requested_summary(spec: &WasmComponentSpec) -> String {
    match CapabilitySet::parse(&spec.capabilities) {
        Ok(set) => set.to_string(),
        Err(e) => format!("invalid: {e}"),
    }
}

/// The first 12 hex digits, as image tools shorten digests.
pub fn short_digest(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..12).unwrap_or(hex).to_owned()
}

/// Age of `since` (RFC 3339) at `now`, as kubectl prints it.
pub fn age(since: &str, now: jiff::Timestamp) -> String {
    let Ok(since) = since.parse::<jiff::Timestamp>() else {
        return "<unknown>".to_owned();
    };
    let secs = now.as_second().saturating_sub(since.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The rows for the components that wait for a person, sorted by namespace and name.
pub fn pending_rows(components: &[WasmComponent], now: jiff::Timestamp) -> Vec<PendingRow> {
    let mut rows: Vec<PendingRow> = components
        .iter()
        .filter_map(|c| {
            let reason = pending_reason(c)?;
            let status = c.status.as_ref()?;
            let since = find(&status.conditions, ConditionType::Approved)
                .map(|cond| cond.last_transition_time.as_str())
                .unwrap_or_default();
            let (namespace, name) = component_id(c);
            Some(PendingRow {
                namespace,
                name,
                digest: status
                    .resolved_digest
                    .as_deref()
                    .map_or_else(|| "<unresolved>".to_owned(), short_digest),
                requested: requested_summary(&c.spec),
                reason: reason.to_owned(),
                age: age(since, now),
            })
        })
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    rows
}

/// A kubectl-style table: columns padded to their widest cell, three spaces apart.
pub fn render_table(rows: &[PendingRow]) -> String {
    let header = ["NAMESPACE", "NAME", "DIGEST", "REASON", "AGE", "REQUESTED"];
    let cells: Vec<[&str; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.namespace.as_str(),
                r.name.as_str(),
                r.digest.as_str(),
                r.reason.as_str(),
                r.age.as_str(),
                r.requested.as_str(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(cells.iter()) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}   ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The command that approves `namespace/name` as it stands.
pub fn approve_command(namespace: &str, name: &str) -> String {
    format!("kubectl wasm approve {namespace}/{name} --reason '<why>'")
}

/// Why `c` is or is not approved, and what a person can do about it.
pub fn explain(c: &WasmComponent) -> String {
    let (namespace, name) = component_id(c);
    let status = c.status.clone().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "WasmComponent {namespace}/{name}");
    let trust = status
        .trust_level
        .map_or_else(|| "<not decided>".to_owned(), |t| t.to_string());
    let _ = writeln!(out, "  Trust level:      {trust}");
    let _ = writeln!(
        out,
        "  Resolved digest:  {}",
        status
            .resolved_digest
            .as_deref()
            .unwrap_or("<not resolved>")
    );
    let _ = writeln!(
        out,
        "  Approved digest:  {}",
        status.approved_digest.as_deref().unwrap_or("<none>")
    );
    let matched = if status.matched_sources.is_empty() {
        "<none>".to_owned()
    } else {
        status.matched_sources.join(", ")
    };
    let _ = writeln!(out, "  Matched sources:  {matched}");
    let _ = writeln!(out, "  Requested:        {}", requested_summary(&c.spec));
    let _ = writeln!(out, "  Conditions:");
    if status.conditions.is_empty() {
        let _ = writeln!(out, "    <none yet: the operator has not reconciled it>");
    }
    for cond in &status.conditions {
        let state = match cond.status {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        };
        let _ = writeln!(
            out,
            "    {}={state} ({}): {}",
            cond.type_, cond.reason, cond.message
        );
    }
    if is_pending(c) {
        let _ = writeln!(out, "It waits for a person's approval. To approve it, run:");
        let _ = writeln!(out, "  {}", approve_command(&namespace, &name));
        let _ = writeln!(
            out,
            "or add `--dry-run -o yaml` to get a TrustSource to commit through a pull request."
        );
    } else if approved_reason(c, ConditionStatus::False) == Some(DENIED) {
        let _ = writeln!(
            out,
            "A Deny source matched its digest, and a denial always wins. To let it run, remove \
             the digest from the Deny source ({matched})."
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;
    use crate::testing::{component, digest, with_approved};

    #[test]
    fn pending_lists_only_components_waiting_for_a_person() {
        let now: jiff::Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        let comps = vec![
            with_approved(
                component("b", "wide", "{ env: [{ name: A }] }", Some(&digest('b'))),
                ConditionStatus::False,
                "RequestExceedsCeiling",
            ),
            with_approved(
                component("a", "kv", "{}", Some(&digest('a'))),
                ConditionStatus::False,
                "PendingApproval",
            ),
            with_approved(
                component("a", "ok", "{}", Some(&digest('c'))),
                ConditionStatus::True,
                "TrustSourceMatched",
            ),
            with_approved(
                component("a", "bad", "{}", Some(&digest('d'))),
                ConditionStatus::False,
                "Denied",
            ),
            component("a", "new", "{}", None),
        ];
        let rows = pending_rows(&comps, now);
        let names: Vec<_> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["kv", "wide"]);
        assert_eq!(rows[0].digest, "aaaaaaaaaaaa");
        assert_eq!(rows[0].age, "5m");
        assert_eq!(rows[0].requested, "none");
        assert!(rows[1].requested.contains('A'), "{}", rows[1].requested);
    }

    #[test]
    fn the_table_aligns_columns_under_a_header() {
        let row = |ns: &str, name: &str| PendingRow {
            namespace: ns.into(),
            name: name.into(),
            digest: "aaaaaaaaaaaa".into(),
            requested: "none".into(),
            reason: "PendingApproval".into(),
            age: "5s".into(),
        };
        let table = render_table(&[row("a", "kv"), row("longer-ns", "x")]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("NAMESPACE   NAME"), "{table}");
        let col = lines[0].find("DIGEST").unwrap();
        assert_eq!(lines[1].find("aaaa"), Some(col), "{table}");
        assert_eq!(lines[2].find("aaaa"), Some(col), "{table}");
        assert!(lines[2].ends_with("none"), "{table}");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now: jiff::Timestamp = "2026-01-03T00:00:00Z".parse().unwrap();
        assert_eq!(age("2026-01-02T23:59:30Z", now), "30s");
        assert_eq!(age("2026-01-02T23:00:00Z", now), "60m");
        assert_eq!(age("2026-01-02T00:00:00Z", now), "24h");
        assert_eq!(age("2026-01-01T00:00:00Z", now), "2d");
        assert_eq!(age("garbage", now), "<unknown>");
    }

    #[test]
    fn explain_gives_the_approve_line_only_when_pending() {
        let pending = with_approved(
            component("ns", "kv", "{}", Some(&digest('a'))),
            ConditionStatus::False,
            "PendingApproval",
        );
        let text = explain(&pending);
        assert!(
            text.contains("Approved=False (PendingApproval): msg"),
            "{text}"
        );
        assert!(text.contains("kubectl wasm approve ns/kv"), "{text}");
        assert!(text.contains(&digest('a')), "{text}");
        let ok = with_approved(
            component("ns", "kv", "{}", Some(&digest('a'))),
            ConditionStatus::True,
            "ManuallyApproved",
        );
        assert!(!explain(&ok).contains("kubectl wasm approve"));
    }

    #[test]
    fn explain_of_a_denied_component_names_the_way_out_not_an_approval() {
        let mut denied = with_approved(
            component("ns", "kv", "{}", Some(&digest('a'))),
            ConditionStatus::False,
            "Denied",
        );
        if let Some(s) = denied.status.as_mut() {
            s.matched_sources = vec!["denied-ns".into()];
        }
        let text = explain(&denied);
        assert!(!text.contains("kubectl wasm approve"), "{text}");
        assert!(
            text.contains("remove the digest from the Deny source (denied-ns)"),
            "{text}"
        );
    }
}
