//! The transport address the `dht` core sees for a peer: its authenticated libp2p `PeerId`, plus
//! the multiaddr it announced, which is only a dialing hint.
//!
//! Identity is the `PeerId` alone: equality, order and hashing ignore the multiaddr, so a peer
//! that is heard of through different addresses is still one node. Its ring id is SHA-1 of the
//! `PeerId` bytes, which the peer cannot choose without generating keys.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use dht::{Address, Id};
use libp2p::{Multiaddr, PeerId};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A peer as the core addresses it.
#[derive(Clone)]
pub struct PeerAddr {
    /// Who: authenticated by the transport (Noise).
    pub peer: PeerId,
    /// Where it said it can be dialed.
    pub addr: Multiaddr,
}

impl PeerAddr {
    /// Pairs a peer with an address.
    pub fn new(peer: PeerId, addr: Multiaddr) -> Self {
        PeerAddr { peer, addr }
    }
}

impl PartialEq for PeerAddr {
    fn eq(&self, other: &Self) -> bool {
        self.peer == other.peer
    }
}
impl Eq for PeerAddr {}
impl PartialOrd for PeerAddr {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for PeerAddr {
    fn cmp(&self, other: &Self) -> Ordering {
        self.peer.cmp(&other.peer)
    }
}
impl Hash for PeerAddr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.peer.hash(state);
    }
}

impl fmt::Debug for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.peer)
    }
}

impl Address for PeerAddr {
    fn node_id(&self) -> Id {
        Id::hash(&self.peer.to_bytes())
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(with = "dht::bytes")]
    peer: Vec<u8>,
    #[serde(with = "dht::bytes")]
    addr: Vec<u8>,
}

impl Serialize for PeerAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Wire { peer: self.peer.to_bytes(), addr: self.addr.to_vec() }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PeerAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        let peer = PeerId::from_bytes(&wire.peer).map_err(D::Error::custom)?;
        let addr = Multiaddr::try_from(wire.addr).map_err(D::Error::custom)?;
        Ok(PeerAddr { peer, addr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    #[test]
    fn identity_is_the_peer_alone_and_round_trips() {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let a = PeerAddr::new(peer, "/ip4/127.0.0.1/tcp/1".parse().expect("valid"));
        let b = PeerAddr::new(peer, "/dns4/node-1/tcp/4001".parse().expect("valid"));
        assert_eq!(a, b);
        assert_eq!(a.node_id(), Id::hash(&peer.to_bytes()));
        let mut buf = Vec::new();
        ciborium::into_writer(&b, &mut buf).expect("vec write");
        let back: PeerAddr = ciborium::from_reader(buf.as_slice()).expect("decodes");
        assert_eq!(back.addr, b.addr);
        assert_eq!(back.peer, peer);
    }

    #[test]
    fn garbage_peer_bytes_are_refused() {
        let mut buf = Vec::new();
        ciborium::into_writer(&Wire { peer: vec![1, 2, 3], addr: vec![] }, &mut buf).expect("vec write");
        assert!(ciborium::from_reader::<PeerAddr, _>(buf.as_slice()).is_err());
    }
}
