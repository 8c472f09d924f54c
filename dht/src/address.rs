//! Transport addresses and the node references that pair an address with its ring id.
//!
//! The core is generic over the address type `A`: a libp2p `PeerId` wrapper in the real node, a
//! small integer in the simulator. A node's ring id is always SHA-1 of its address bytes, so a
//! reference whose id does not match its address is forged or corrupt and is dropped on receipt.

use std::fmt;
use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::id::Id;

/// What the core needs from a transport address.
pub trait Address: Clone + Eq + Ord + Hash + fmt::Debug + Serialize + DeserializeOwned {
    /// The ring id of the node at this address: SHA-1 of the address's canonical bytes.
    fn node_id(&self) -> Id;
}

/// A node on the ring: where it sits and how to reach it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeRef<A> {
    /// Ring position; must equal `addr.node_id()`.
    pub id: Id,
    /// Transport address.
    pub addr: A,
}

impl<A: Address> NodeRef<A> {
    /// The reference for `addr`, with its id computed.
    pub fn new(addr: A) -> Self {
        NodeRef { id: addr.node_id(), addr }
    }

    /// Whether the claimed id is the one the address implies.
    pub fn is_genuine(&self) -> bool {
        self.addr.node_id() == self.id
    }
}

impl<A: fmt::Debug> fmt::Debug for NodeRef<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{:?}", self.id.short(), self.addr)
    }
}
