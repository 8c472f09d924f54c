//! The ring as the API shows it: nodes, one node's status (`GET /v1/status`) and the walk
//! along successors (`GET /v1/ring`).
//!
//! Ids travel as text: ring ids as 40 lowercase hex digits (SHA-1), peer ids in libp2p's
//! base58 form, addresses as multiaddrs. Fields are declared in alphabetical order to keep the
//! node's output byte-compatible (see the crate docs).

use serde::{Deserialize, Serialize};

/// A node as the API describes it (owner, replica, successor, finger, ring member, tree node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The multiaddr its peers dial.
    pub addr: String,
    /// Its libp2p peer id: who it is.
    pub peer_id: String,
    /// Its position on the ring: where it is.
    pub ring_id: String,
}

/// `GET /v1/status`: the answering node's view of itself and its neighbours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Its listen addresses, each ending in `/p2p/<peer id>`.
    pub addresses: Vec<String>,
    /// The address it announces to peers.
    pub announce: String,
    /// Value bytes it stores.
    pub bytes: u64,
    /// Its distinct finger-table entries, each at the first index it appears at.
    pub fingers: Vec<Finger>,
    /// The address its HTTP API is served at.
    pub http: String,
    /// Live keys it stores.
    pub keys: u64,
    /// Whether it is a ring member yet (false while joining).
    pub member: bool,
    /// Its peer id.
    pub peer_id: String,
    /// Its predecessor, if it knows one.
    pub predecessor: Option<NodeInfo>,
    /// Its ring id.
    pub ring_id: String,
    /// Its successor list, nearest first.
    pub successors: Vec<NodeInfo>,
    /// Seconds since it started.
    pub uptime_s: f64,
    /// The node's crate version.
    pub version: String,
}

/// One distinct finger-table entry of [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finger {
    /// The first finger index (0..160) that points at this node.
    pub index: u32,
    /// The node.
    pub node: NodeInfo,
}

/// `GET /v1/ring`: the members in ring order, starting at the answering node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ring {
    /// Whether the walk came back to the answering node.
    pub complete: bool,
    /// The members, in ring order.
    pub nodes: Vec<RingMember>,
}

/// One member of a [`Ring`]: the node, then what it said of itself when the walk asked it. The
/// node's fields come first, as they were before `keys` was added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingMember {
    /// The node.
    #[serde(flatten)]
    pub node: NodeInfo,
    /// The live keys it stores, as it reported them to the walk (the answering node's own count
    /// for the first member); `null` when it did not answer (the node an incomplete walk stopped
    /// at) or predates the report.
    #[serde(default)]
    pub keys: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `literal`, serialises the result and expects the same bytes back.
    fn round_trip<T: serde::de::DeserializeOwned + Serialize>(literal: &str) -> T {
        let parsed: T = serde_json::from_str(literal).expect("the literal follows the type");
        assert_eq!(serde_json::to_string(&parsed).expect("serialises"), literal);
        parsed
    }

    const A: &str = r#"{"addr":"/ip4/127.0.0.1/tcp/4001","peer_id":"12D3KooWA","ring_id":"0a00000000000000000000000000000000000000"}"#;
    const B: &str = r#"{"addr":"/ip4/127.0.0.1/tcp/4002","peer_id":"12D3KooWB","ring_id":"f000000000000000000000000000000000000000"}"#;

    #[test]
    fn a_node_is_peer_ring_and_address() {
        let node: NodeInfo = round_trip(A);
        assert_eq!(node.peer_id, "12D3KooWA");
        assert_eq!(node.addr, "/ip4/127.0.0.1/tcp/4001");
    }

    #[test]
    fn status_round_trips() {
        let literal = format!(
            r#"{{"addresses":["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWA"],"announce":"/ip4/127.0.0.1/tcp/4001","bytes":2048,"fingers":[{{"index":0,"node":{B}}}],"http":"127.0.0.1:7001","keys":12,"member":true,"peer_id":"12D3KooWA","predecessor":{B},"ring_id":"0a00000000000000000000000000000000000000","successors":[{B}],"uptime_s":12.5,"version":"0.1.0"}}"#
        );
        let status: Status = round_trip(&literal);
        assert_eq!((status.keys, status.bytes, status.member), (12, 2048, true));
        assert_eq!(status.fingers[0].node.peer_id, "12D3KooWB");
    }

    #[test]
    fn a_lone_joining_node_has_no_predecessor() {
        let literal = r#"{"addresses":[],"announce":"/ip4/127.0.0.1/tcp/4001","bytes":0,"fingers":[],"http":"127.0.0.1:7001","keys":0,"member":false,"peer_id":"12D3KooWA","predecessor":null,"ring_id":"0a00000000000000000000000000000000000000","successors":[],"uptime_s":0.0,"version":"0.1.0"}"#;
        let status: Status = round_trip(literal);
        assert!(status.predecessor.is_none());
    }

    #[test]
    fn ring_round_trips() {
        let a = A.replace('}', r#","keys":12}"#);
        let b = B.replace('}', r#","keys":null}"#);
        let ring: Ring = round_trip(&format!(r#"{{"complete":true,"nodes":[{a},{b}]}}"#));
        assert_eq!(ring.nodes.len(), 2);
        assert_eq!((ring.nodes[0].keys, ring.nodes[1].keys), (Some(12), None));
        assert_eq!(ring.nodes[1].node.peer_id, "12D3KooWB");
    }

    #[test]
    fn documents_in_the_readmes_field_order_and_with_extra_fields_parse() {
        let readme_order = format!(r#"{{"nodes":[{B}],"complete":false,"added_later":1}}"#);
        let ring: Ring = serde_json::from_str(&readme_order).expect("field order does not matter");
        assert!(!ring.complete);
        assert_eq!(ring.nodes[0].keys, None, "a member without a count (an older node's walk)");
    }
}
