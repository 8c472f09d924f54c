//! Byzantine nodes in the simulator (issue 11): a faulty variant of the protocol played by the
//! harness, not by the core.
//!
//! A Byzantine node runs the honest core for everything it does on its own behalf (stabilizing,
//! fixing fingers, answering pings), so that it stays in the ring and in everyone's tables, but
//! the simulator rewrites every lookup step it answers ([`Response::Route`]) into the most damaging
//! lie a node can tell without forging ids (ids are SHA-1 of addresses, which every receiver
//! checks): it claims to own the target, names its real successor as its predecessor (so that the
//! range it claims, (predecessor, liar], covers all of the ring but one gap), and offers the next
//! liars clockwise as its successor list, i.e. as the target's replica set. Before the core checked
//! such claims, one liar anywhere on a lookup's path ended it with the wrong owner.

use std::collections::BTreeMap;

use crate::address::NodeRef;
use crate::id::Id;
use crate::message::{Message, Response};

use super::SimAddr;

/// The liars of a run, by ring position.
#[derive(Debug, Default)]
pub(super) struct Liars {
    by_id: BTreeMap<Id, SimAddr>,
}

impl Liars {
    pub(super) fn insert(&mut self, node: &NodeRef<SimAddr>) {
        self.by_id.insert(node.id, node.addr);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Up to `n` other liars clockwise after `me`, in ring order.
    fn after(&self, me: &Id, n: usize) -> Vec<NodeRef<SimAddr>> {
        let later = self.by_id.range(me..).skip(1);
        let wrapped = self.by_id.range(..*me);
        later.chain(wrapped).take(n).map(|(&id, &addr)| NodeRef { id, addr }).collect()
    }

    /// Rewrites `message`, sent by the liar `me` whose real successor list is `successors`, into
    /// its lie; every other message passes unchanged.
    pub(super) fn rewrite(
        &self,
        me: &NodeRef<SimAddr>,
        successors: &[NodeRef<SimAddr>],
        message: Message<SimAddr>,
    ) -> Message<SimAddr> {
        match message {
            Message::Response { id, body: Response::Route { .. } } => Message::Response {
                id,
                body: Response::Route {
                    owner: true,
                    predecessor: successors.first().cloned().or_else(|| Some(me.clone())),
                    successors: self.after(&me.id, successors.len().max(1)),
                    closer: Vec::new(),
                },
            },
            other => other,
        }
    }
}
