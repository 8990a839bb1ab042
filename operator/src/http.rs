//! HTTP components in Kubernetes terms, as pure functions: which port an HTTP component's
//! agents listen on ([`choose_port`]), which agents serve it ([`ready_endpoints`]), and the
//! `Service` and `EndpointSlice` that send its traffic there ([`service`], [`endpoint_slice`]).
//!
//! Every agent that runs an HTTP component listens on `<its advertised address>:<targetPort>`.
//! The operator gives each HTTP component one `targetPort`, unique in the cluster, from
//! `--http-port-range`; a Placement carries it, so the ports in use are read back from the
//! Placements after a restart or a leader change. The component's `Service` (same name, no
//! selector) forwards `spec.http.port` to it, and its one `EndpointSlice` lists the addresses
//! of the agents whose Placement for it is ready with the approved digest, so kube-proxy,
//! Ingress and Gateway controllers and `kubectl port-forward` reach only serving instances.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::RangeInclusive;

use airssys_crds::condition::{self, ConditionType};
use airssys_crds::{Digest, PlacementSpec, PlacementStatus, WasmComponent};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{
    Endpoint as SliceEndpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource as _, ResourceExt as _};

/// Label on the Services and EndpointSlices the operator manages: the component's name.
pub const COMPONENT_LABEL: &str = "wasm.airssys.dev/component";
/// `endpointslice.kubernetes.io/managed-by` of the operator's slices (the EndpointSlice
/// controller leaves slices with another manager alone; a label value holds no `/`).
pub const SLICE_MANAGER: &str = "operator.wasm.airssys.dev";
/// The name of the Service port and of the slice port that match.
pub const PORT_NAME: &str = "http";
/// The default of `--http-port-range`.
pub const DEFAULT_PORTS: RangeInclusive<u16> = 20000..=29999;

/// The port for a component: the one it has (`own`, when still in `range` and not taken by
/// another), else the lowest free one; `None` when the range is full.
pub fn choose_port(
    range: &RangeInclusive<u16>,
    own: Option<u16>,
    taken: &BTreeSet<u16>,
) -> Option<u16> {
    if let Some(port) = own.filter(|p| range.contains(p) && !taken.contains(p)) {
        return Some(port);
    }
    range.clone().find(|p| !taken.contains(p))
}

/// Parses `--http-port-range` (`FIRST-LAST`).
pub fn parse_port_range(text: &str) -> Result<RangeInclusive<u16>, String> {
    let (first, last) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not a port range like 20000-29999"))?;
    let port = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{s:?} in {text:?} is not a port (1-65535)"))
    };
    let (first, last) = (port(first)?, port(last)?);
    if first > last {
        return Err(format!("{text:?}: the first port is above the last"));
    }
    Ok(first..=last)
}

/// Whether an agent's advertised address can be an endpoint: the API server refuses loopback,
/// link-local, unspecified and multicast addresses in EndpointSlices (and kube-proxy could
/// not forward to them from another host).
pub fn can_be_endpoint(address: IpAddr) -> bool {
    let link_local = match address {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    };
    !(address.is_loopback() || address.is_unspecified() || address.is_multicast() || link_local)
}

/// One agent that serves the component: its advertised address and its node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub address: IpAddr,
    pub node: String,
}

/// One of the component's Placements, with what its agent reported.
#[derive(Debug, Clone, Copy)]
pub struct Serving<'a> {
    pub spec: &'a PlacementSpec,
    pub status: Option<&'a PlacementStatus>,
}

/// The agents that serve the component now: their Placement carries `target_port`, reports
/// `Ready=True` with instances running `approved`, and their node's agent is live with an
/// address (`addresses`: live agents only). Sorted, one per node.
pub fn ready_endpoints(
    placements: &[Serving<'_>],
    target_port: u16,
    approved: &Digest,
    addresses: &BTreeMap<String, IpAddr>,
) -> Vec<Endpoint> {
    let mut endpoints: Vec<Endpoint> = placements
        .iter()
        .filter(|p| {
            p.spec
                .http
                .as_ref()
                .is_some_and(|h| h.target_port == target_port)
        })
        .filter(|p| {
            p.status.is_some_and(|s| {
                s.ready_instances > 0
                    && s.digest.as_ref() == Some(approved)
                    && condition::find(&s.conditions, ConditionType::Ready)
                        .is_some_and(condition::Condition::is_true)
            })
        })
        .filter_map(|p| {
            addresses
                .get(&p.spec.node_name)
                .filter(|a| can_be_endpoint(**a))
                .map(|address| Endpoint {
                    address: *address,
                    node: p.spec.node_name.clone(),
                })
        })
        .collect();
    endpoints.sort();
    endpoints.dedup_by(|a, b| a.node == b.node);
    endpoints
}

fn owner(c: &WasmComponent) -> OwnerReference {
    OwnerReference {
        api_version: WasmComponent::api_version(&()).into_owned(),
        kind: WasmComponent::kind(&()).into_owned(),
        name: c.name_any(),
        uid: c.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn metadata(c: &WasmComponent, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: c.namespace(),
        labels: Some(labels),
        owner_references: Some(vec![owner(c)]),
        ..ObjectMeta::default()
    }
}

/// The component's Service: its name, no selector (the operator writes its endpoints),
/// `port` forwarded to the agents' `target_port`.
pub fn service(c: &WasmComponent, port: u16, target_port: u16) -> Service {
    let labels = BTreeMap::from([(COMPONENT_LABEL.to_owned(), c.name_any())]);
    Service {
        metadata: metadata(c, c.name_any(), labels),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_owned()),
                protocol: Some("TCP".to_owned()),
                app_protocol: Some("http".to_owned()),
                port: i32::from(port),
                target_port: Some(IntOrString::Int(i32::from(target_port))),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The name of the component's one EndpointSlice.
pub fn slice_name(component: &str) -> String {
    format!("{component}-airssys")
}

/// The component's EndpointSlice: the serving agents at `target_port` (an empty list when none
/// serves, so the Service answers nothing rather than something stale).
pub fn endpoint_slice(
    c: &WasmComponent,
    target_port: u16,
    endpoints: &[Endpoint],
) -> EndpointSlice {
    let labels = BTreeMap::from([
        (COMPONENT_LABEL.to_owned(), c.name_any()),
        ("kubernetes.io/service-name".to_owned(), c.name_any()),
        (
            "endpointslice.kubernetes.io/managed-by".to_owned(),
            SLICE_MANAGER.to_owned(),
        ),
    ]);
    let family = |e: &Endpoint| e.address.is_ipv4();
    // One slice holds one address family; IPv4 unless every agent is IPv6.
    let ipv4 = endpoints.is_empty() || endpoints.iter().any(family);
    EndpointSlice {
        metadata: metadata(c, slice_name(&c.name_any()), labels),
        address_type: if ipv4 { "IPv4" } else { "IPv6" }.to_owned(),
        endpoints: endpoints
            .iter()
            .filter(|e| family(e) == ipv4)
            .map(|e| SliceEndpoint {
                addresses: vec![e.address.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: Some(e.node.clone()),
                ..SliceEndpoint::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some(PORT_NAME.to_owned()),
            protocol: Some("TCP".to_owned()),
            app_protocol: Some("http".to_owned()),
            port: Some(i32::from(target_port)),
        }]),
    }
}

/// Whether a stored Service already forwards as `wanted` does (what the operator writes).
pub fn service_matches(stored: &Service, wanted: &Service) -> bool {
    let ports = |s: &Service| {
        s.spec
            .as_ref()
            .and_then(|spec| spec.ports.as_ref())
            .map(|ports| {
                ports
                    .iter()
                    .map(|p| (p.name.clone(), p.port, p.target_port.clone()))
                    .collect::<Vec<_>>()
            })
    };
    let selector = |s: &Service| s.spec.as_ref().and_then(|spec| spec.selector.clone());
    ports(stored) == ports(wanted) && selector(stored) == selector(wanted)
}

/// Whether a stored EndpointSlice already lists what `wanted` does.
pub fn slice_matches(stored: &EndpointSlice, wanted: &EndpointSlice) -> bool {
    let endpoints = |s: &EndpointSlice| {
        s.endpoints
            .iter()
            .map(|e| {
                (
                    e.addresses.clone(),
                    e.node_name.clone(),
                    e.conditions.as_ref().and_then(|c| c.ready),
                )
            })
            .collect::<Vec<_>>()
    };
    let ports = |s: &EndpointSlice| {
        s.ports.as_ref().map(|ports| {
            ports
                .iter()
                .map(|p| (p.name.clone(), p.port))
                .collect::<Vec<_>>()
        })
    };
    stored.address_type == wanted.address_type
        && endpoints(stored) == endpoints(wanted)
        && ports(stored) == ports(wanted)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

    use airssys_crds::condition::Condition;
    use airssys_crds::http::{HttpSpec, PlacementHttp};
    use airssys_crds::{ConditionStatus, Reason};

    use super::*;

    #[test]
    fn choose_port_keeps_a_port_and_finds_the_lowest_free_one() {
        let range = 100..=103;
        let taken = |v: &[u16]| v.iter().copied().collect::<BTreeSet<u16>>();
        /// (rule, own, taken, chosen)
        type Row<'a> = (&'a str, Option<u16>, &'a [u16], Option<u16>);
        let rows: [Row<'_>; 6] = [
            ("nothing taken: the first", None, &[], Some(100)),
            ("the lowest free one", None, &[100, 101], Some(102)),
            ("its own port is kept", Some(103), &[100], Some(103)),
            (
                "its own port taken by another: a new one",
                Some(100),
                &[100],
                Some(101),
            ),
            (
                "its own port outside the range: a new one",
                Some(99),
                &[],
                Some(100),
            ),
            ("the range full: none", None, &[100, 101, 102, 103], None),
        ];
        for (rule, own, used, chosen) in rows {
            assert_eq!(choose_port(&range, own, &taken(used)), chosen, "{rule}");
        }
    }

    #[test]
    fn port_ranges_parse_or_say_why_not() {
        assert_eq!(parse_port_range("20000-29999").unwrap(), 20000..=29999);
        assert_eq!(parse_port_range("80-80").unwrap(), 80..=80);
        for (bad, says) in [
            ("20000", "not a port range"),
            ("0-10", "not a port"),
            ("10-70000", "not a port"),
            ("30-20", "above the last"),
        ] {
            let e = parse_port_range(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    fn digest(n: u8) -> Digest {
        Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
    }

    fn spec(node: &str, port: Option<u16>) -> PlacementSpec {
        let mut spec: PlacementSpec = serde_json::from_value(serde_json::json!({
            "nodeName": node,
            "component": {"name": "web", "uid": "u", "generation": 1},
            "digest": digest(1).as_str(),
            "artifact": {"https": {"url": "https://example.com/x.wasm", "digest": digest(1).as_str()}},
            "instances": 1,
        }))
        .unwrap();
        spec.http = port.map(|p| PlacementHttp::new(&HttpSpec::default(), p));
        spec
    }

    fn status(ready: ConditionStatus, instances: i32, d: u8) -> PlacementStatus {
        PlacementStatus {
            observed_generation: Some(1),
            digest: Some(digest(d)),
            ready_instances: instances,
            restarts: 0,
            conditions: vec![Condition::new(
                ConditionType::Ready,
                ready,
                Reason::InstancesReady,
                "",
                Some(1),
            )],
            last_error: None,
        }
    }

    #[test]
    fn only_ready_live_agents_serving_the_approved_digest_are_endpoints() {
        use ConditionStatus::{False, True};
        let addresses: BTreeMap<String, IpAddr> = [
            ("a", "10.0.0.1"),
            ("b", "10.0.0.2"),
            ("c", "10.0.0.3"),
            ("d", "10.0.0.4"),
        ]
        .into_iter()
        .map(|(n, a)| (n.to_owned(), a.parse().unwrap()))
        .collect();
        // (rule, node, target port on the Placement, its status)
        type Row = (
            &'static str,
            &'static str,
            Option<u16>,
            Option<PlacementStatus>,
            bool,
        );
        let rows: Vec<Row> = vec![
            (
                "ready with the approved digest",
                "a",
                Some(7),
                Some(status(True, 1, 1)),
                true,
            ),
            ("not ready", "b", Some(7), Some(status(False, 0, 1)), false),
            ("no report yet", "c", Some(7), None, false),
            (
                "another digest",
                "d",
                Some(7),
                Some(status(True, 1, 2)),
                false,
            ),
            (
                "another port (an older Placement)",
                "b",
                Some(8),
                Some(status(True, 1, 1)),
                false,
            ),
            (
                "not an HTTP Placement",
                "c",
                None,
                Some(status(True, 1, 1)),
                false,
            ),
            (
                "no live agent (no address)",
                "e",
                Some(7),
                Some(status(True, 1, 1)),
                false,
            ),
        ];
        for (rule, node, port, report, serves) in &rows {
            let spec = spec(node, *port);
            let found = ready_endpoints(
                &[Serving {
                    spec: &spec,
                    status: report.as_ref(),
                }],
                7,
                &digest(1),
                &addresses,
            );
            assert_eq!(!found.is_empty(), *serves, "{rule}");
        }
        let specs = [spec("b", Some(7)), spec("a", Some(7))];
        let ready = status(True, 2, 1);
        let serving: Vec<Serving<'_>> = specs
            .iter()
            .map(|s| Serving {
                spec: s,
                status: Some(&ready),
            })
            .collect();
        let found = ready_endpoints(&serving, 7, &digest(1), &addresses);
        let nodes: Vec<&str> = found.iter().map(|e| e.node.as_str()).collect();
        assert_eq!(nodes, ["a", "b"], "sorted, one per node");
    }

    #[test]
    fn addresses_the_api_server_refuses_are_no_endpoints() {
        for (address, ok) in [
            ("10.0.0.1", true),
            ("192.0.2.2", true),
            ("2001:db8::1", true),
            ("127.0.0.1", false),
            ("127.77.1.2", false),
            ("::1", false),
            ("169.254.1.1", false),
            ("fe80::1", false),
            ("0.0.0.0", false),
            ("224.0.0.1", false),
        ] {
            assert_eq!(can_be_endpoint(address.parse().unwrap()), ok, "{address}");
        }
        let addresses = BTreeMap::from([("a".to_owned(), "127.0.0.2".parse().unwrap())]);
        let spec = spec("a", Some(7));
        let ready = status(ConditionStatus::True, 1, 1);
        let found = ready_endpoints(
            &[Serving {
                spec: &spec,
                status: Some(&ready),
            }],
            7,
            &digest(1),
            &addresses,
        );
        assert!(
            found.is_empty(),
            "a loopback agent is no endpoint: {found:?}"
        );
    }

    #[test]
    fn service_and_slice_point_the_port_at_the_agents() {
        let mut c = WasmComponent::new(
            "web",
            serde_json::from_value(serde_json::json!({
                "artifact": {"oci": {"reference": "r.example/web:1"}},
            }))
            .unwrap(),
        );
        c.metadata.namespace = Some("shop".into());
        c.metadata.uid = Some("uid-1".into());
        let svc = service(&c, 80, 20001);
        let spec = svc.spec.as_ref().unwrap();
        assert!(
            spec.selector.is_none(),
            "no selector: the operator writes the endpoints"
        );
        let port = &spec.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.port, port.target_port.clone()),
            (80, Some(IntOrString::Int(20001)))
        );
        assert_eq!(
            svc.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-1"
        );

        let endpoints = [Endpoint {
            address: "10.0.0.1".parse().unwrap(),
            node: "a".into(),
        }];
        let slice = endpoint_slice(&c, 20001, &endpoints);
        let labels = slice.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["kubernetes.io/service-name"], "web");
        assert_eq!(
            labels["endpointslice.kubernetes.io/managed-by"],
            SLICE_MANAGER
        );
        assert_eq!(slice.address_type, "IPv4");
        assert_eq!(slice.endpoints[0].addresses, ["10.0.0.1"]);
        assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(20001));
        assert_eq!(
            slice.ports.as_ref().unwrap()[0].name.as_deref(),
            Some(PORT_NAME)
        );
        let empty = endpoint_slice(&c, 20001, &[]);
        assert!(empty.endpoints.is_empty());
        assert_eq!(empty.address_type, "IPv4");

        // What decides a write.
        assert!(service_matches(&svc, &service(&c, 80, 20001)));
        assert!(!service_matches(&svc, &service(&c, 8080, 20001)));
        assert!(!service_matches(&svc, &service(&c, 80, 20002)));
        assert!(slice_matches(
            &slice,
            &endpoint_slice(&c, 20001, &endpoints)
        ));
        assert!(!slice_matches(&slice, &empty));
        assert!(!slice_matches(
            &slice,
            &endpoint_slice(&c, 20002, &endpoints)
        ));
    }
}
