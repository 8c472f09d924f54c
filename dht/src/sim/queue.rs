//! Queues in the simulator: every node runs a [`Queues`] core beside its ring core once
//! [`Simulation::enable_queues`] was called; queue messages travel through the same network model,
//! persistence is applied at once (before the messages drained after it are sent, as the core
//! requires), and client results and notifications are collected for the test to check.
//!
//! Without `enable_queues` nothing changes: runs stay bit-identical.

use rand::RngExt;

use super::{SimAddr, SimNode, Simulation, What};
use crate::queue::{
    MsgId, QueueConfig, QueueEvent, QueueMessage, QueueName, QueueOpId, QueuePersist, Queues, SubId,
};
use crate::time::Time;

/// A queue event one node emitted, and when.
#[derive(Clone, Debug)]
pub struct QueueRecord {
    /// The node.
    pub node: usize,
    /// When.
    pub at: Time,
    /// The event.
    pub event: QueueEvent<SimAddr>,
}

/// What the simulation keeps for queues.
#[derive(Debug, Default)]
pub(super) struct QueueWorld {
    pub(super) config: QueueConfig,
    pub(super) events: Vec<QueueRecord>,
    /// Queue messages sent by all nodes.
    pub(super) messages: u64,
    /// Changes persisted by all nodes.
    pub(super) persisted: u64,
}

impl Simulation {
    /// Gives every node (present and future) a queue core with `config`.
    pub fn enable_queues(&mut self, config: QueueConfig) {
        for sim_node in &mut self.nodes {
            if sim_node.queues.is_none() {
                sim_node.queues = Some(Box::new(Queues::new(sim_node.node.me().clone(), config.clone())));
            }
        }
        self.queues = Some(QueueWorld { config, ..QueueWorld::default() });
    }

    pub(super) fn new_sim_queues(&self, node: &crate::node::Node<SimAddr>) -> Option<Box<Queues<SimAddr>>> {
        self.queues.as_ref().map(|world| Box::new(Queues::new(node.me().clone(), world.config.clone())))
    }

    /// Node `index`'s queue core.
    pub fn queues(&self, index: usize) -> &Queues<SimAddr> {
        self.nodes[index].queues.as_ref().expect("queues are enabled")
    }

    /// Queue messages sent so far by all nodes.
    pub fn queue_messages(&self) -> u64 {
        self.queues.as_ref().map_or(0, |w| w.messages)
    }

    /// Puts `body` into `queue` through node `index`, under a fresh random id.
    pub fn queue_put(&mut self, index: usize, queue: &QueueName, body: Vec<u8>) -> (QueueOpId, MsgId) {
        let id = MsgId(self.rng.random::<u128>());
        (self.queue_put_with_id(index, queue, id, body), id)
    }

    /// Puts `body` into `queue` through node `index` under put id `id` (a retry keeps its id).
    pub fn queue_put_with_id(
        &mut self,
        index: usize,
        queue: &QueueName,
        id: MsgId,
        body: Vec<u8>,
    ) -> QueueOpId {
        let now = self.now;
        let SimNode { node, queues, .. } = &mut self.nodes[index];
        let queues = queues.as_mut().expect("queues are enabled");
        let op =
            queues.put(queue.clone(), id, format!("n{index}"), None, body, now.as_micros() / 1000, node, now);
        self.flush(index);
        op
    }

    /// Hands node `index` a queue message as if `from` had sent it, now (bypassing the network).
    pub fn deliver_queue_now(&mut self, index: usize, from: SimAddr, message: QueueMessage<SimAddr>) {
        self.deliver_queue(index, from, message);
    }

    /// Takes from `queue` through node `index`.
    pub fn queue_take(
        &mut self,
        index: usize,
        queue: &QueueName,
        wait: std::time::Duration,
        lease: std::time::Duration,
    ) -> QueueOpId {
        let now = self.now;
        let SimNode { node, queues, .. } = &mut self.nodes[index];
        let queues = queues.as_mut().expect("queues are enabled");
        let op = queues.take(queue.clone(), format!("n{index}"), wait, lease, node, now);
        self.flush(index);
        op
    }

    /// Acknowledges a taken message through node `index`.
    pub fn queue_ack(
        &mut self,
        index: usize,
        queue: &QueueName,
        seq: u64,
        id: MsgId,
        lease: u64,
    ) -> QueueOpId {
        let now = self.now;
        let SimNode { node, queues, .. } = &mut self.nodes[index];
        let op = queues.as_mut().expect("queues are enabled").ack(queue.clone(), seq, id, lease, node, now);
        self.flush(index);
        op
    }

    /// Asks for `queue`'s figures through node `index`.
    pub fn queue_stat(&mut self, index: usize, queue: &QueueName) -> QueueOpId {
        let now = self.now;
        let SimNode { node, queues, .. } = &mut self.nodes[index];
        let op = queues.as_mut().expect("queues are enabled").stat(queue.clone(), node, now);
        self.flush(index);
        op
    }

    /// Subscribes node `index` to `queue`.
    pub fn queue_subscribe(&mut self, index: usize, queue: &QueueName) -> Option<SubId> {
        let now = self.now;
        let SimNode { node, queues, .. } = &mut self.nodes[index];
        let sub = queues.as_mut().expect("queues are enabled").subscribe(queue.clone(), 0, node, now);
        self.flush(index);
        sub
    }

    /// The queue events emitted since the last call, in order.
    pub fn take_queue_events(&mut self) -> Vec<QueueRecord> {
        self.queues.as_mut().map(|w| std::mem::take(&mut w.events)).unwrap_or_default()
    }

    pub(super) fn deliver_queue(&mut self, index: usize, from: SimAddr, message: QueueMessage<SimAddr>) {
        if !self.nodes[index].alive || self.is_cut(from.index(), index) {
            return;
        }
        let now = self.now;
        let SimNode { node, queues, .. } = &mut self.nodes[index];
        let Some(queues) = queues.as_mut() else { return };
        queues.handle_message(from, message, node, now);
        self.flush(index);
    }

    pub(super) fn flush_queues(&mut self, index: usize) {
        let now = self.now;
        let from = self.nodes[index].node.me().addr;
        loop {
            let Some(queues) = self.nodes[index].queues.as_mut() else { return };
            // Persistence first: the simulated disk is instant, and nothing drained after a change
            // may be sent before it.
            if let Some(persist) = queues.poll_persist() {
                let _: QueuePersist = persist;
                if let Some(world) = self.queues.as_mut() {
                    world.persisted += 1;
                }
                continue;
            }
            if let Some((to, message)) = queues.poll_transmit() {
                if let Some(world) = self.queues.as_mut() {
                    world.messages += 1;
                }
                if let Some(delay) = self.network.sample(&mut self.rng) {
                    self.push(now + delay, What::DeliverQueue { to: to.index() as u32, from, message });
                }
                continue;
            }
            if let Some(event) = queues.poll_event() {
                if let Some(world) = self.queues.as_mut() {
                    world.events.push(QueueRecord { node: index, at: now, event });
                }
                continue;
            }
            return;
        }
    }
}
