//! Tunables of the multicast core, with documented defaults and validation.

use std::time::Duration;

use thiserror::Error;

use super::wire::{MAX_BODY_BYTES, MAX_GROUP_FRAME_BYTES};

/// Configuration of a [`super::Multicast`]. Build with [`MulticastConfig::default`] and the
/// `with_*` setters, then [`MulticastConfig::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MulticastConfig {
    /// Most children one tree node keeps per group; a join beyond it is redirected to one of the
    /// children (the bottleneck remover). Default 32.
    pub max_children: usize,
    /// Most stamped messages a root (and each backup) keeps per group for members to fetch.
    /// Default 1024.
    pub history_messages: usize,
    /// Most bytes of messages ([`super::Stamped::approx_size`]) a root (and each backup) keeps
    /// per group; the oldest go first. Without it a group's history could hold
    /// `history_messages` bodies of the largest size, 64 MiB. Default 4 MiB: the whole
    /// `history_messages` of bodies up to 4 KiB, and 63 of the largest.
    pub history_bytes: usize,
    /// Oldest a kept message may be. Default 10 min.
    pub history_age: Duration,
    /// Largest body [`super::Multicast::publish`] accepts; at most [`MAX_BODY_BYTES`]. Default 64 KiB.
    pub max_body_bytes: usize,
    /// Cap on one encoded frame, for [`super::decode`] and for packing batches. Default
    /// [`MAX_GROUP_FRAME_BYTES`] (80 KiB).
    pub max_frame_bytes: usize,
    /// How often a child refreshes its parent (and the periodic work runs per group). Default 1 s.
    pub refresh_interval: Duration,
    /// A parent that has not acknowledged a refresh for this long is taken for dead and the child
    /// re-joins. Default 3 s.
    pub parent_timeout: Duration,
    /// A child that has not refreshed for this long is dropped. Default 5 s.
    pub child_timeout: Duration,
    /// A node whose parent has said for this long that it is not attached to a root (a cycle
    /// left by routing during repair, or a stuck branch) re-joins by another route. Default 10 s.
    pub detached_timeout: Duration,
    /// How long to wait for the answer to one join, fetch, state query or replication before
    /// trying again. Default 500 ms.
    pub rpc_timeout: Duration,
    /// How often an unacknowledged publish is sent again (the root recognises retries). Default 1 s.
    pub publish_retry: Duration,
    /// How long a publish may take before [`super::GroupEvent::PublishFailed`]. Default 10 s.
    pub publish_timeout: Duration,
    /// How many successors receive a copy of each stamped message; the first must acknowledge
    /// it before the root sends it down. Default 2.
    pub backups: usize,
    /// How often a root sends its head to its backups when idle. Default 5 s.
    pub backup_heartbeat: Duration,
    /// A backup copy not refreshed for this long is dropped. Default 60 s.
    pub backup_ttl: Duration,
    /// Most out-of-order messages a member buffers per group (and how far ahead of the next
    /// expected number a message may be). Default 1024.
    pub max_out_of_order: usize,
    /// Most groups (tree state and backups each) one node holds. Default 1024.
    pub max_groups: usize,
    /// Most publishes in flight at this node, and most queued at a root still learning its state.
    /// Default 1024.
    pub max_pending_publishes: usize,
    /// Attempts of one fetch before it is given up (a gap fill starts again later). Default 4.
    pub fetch_attempts: u32,
    /// How long a member waits for a missing number to arrive down the tree before fetching it
    /// (links do not keep order, so a later number often overtakes an earlier one). Default 500 ms.
    pub fetch_delay: Duration,
    /// Period of the housekeeping tick. Default 100 ms.
    pub tick: Duration,
}

impl Default for MulticastConfig {
    fn default() -> Self {
        MulticastConfig {
            max_children: 32,
            history_messages: 1024,
            history_bytes: 4 << 20,
            history_age: Duration::from_secs(600),
            max_body_bytes: MAX_BODY_BYTES,
            max_frame_bytes: MAX_GROUP_FRAME_BYTES,
            refresh_interval: Duration::from_secs(1),
            parent_timeout: Duration::from_secs(3),
            child_timeout: Duration::from_secs(5),
            detached_timeout: Duration::from_secs(10),
            rpc_timeout: Duration::from_millis(500),
            publish_retry: Duration::from_secs(1),
            publish_timeout: Duration::from_secs(10),
            backups: 2,
            backup_heartbeat: Duration::from_secs(5),
            backup_ttl: Duration::from_secs(60),
            max_out_of_order: 1024,
            max_groups: 1024,
            max_pending_publishes: 1024,
            fetch_attempts: 4,
            fetch_delay: Duration::from_millis(500),
            tick: Duration::from_millis(100),
        }
    }
}

/// A multicast configuration that cannot work.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MulticastConfigError {
    /// A count that must be at least one is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// A period or timeout of zero would spin.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
    /// Bodies must fit the wire cap, and frames must hold one full body.
    #[error(
        "max_body_bytes ({body}) must be ≤ {MAX_BODY_BYTES} and leave 4 KiB in max_frame_bytes ({frame})"
    )]
    Sizes {
        /// The body cap.
        body: usize,
        /// The frame cap.
        frame: usize,
    },
    /// Timeouts must be longer than the refresh period they watch.
    #[error("parent_timeout and child_timeout must exceed refresh_interval")]
    TimeoutsTooShort,
}

impl MulticastConfig {
    /// Sets the fan-out bound.
    pub fn with_max_children(mut self, n: usize) -> Self {
        self.max_children = n;
        self
    }
    /// Sets the history bounds.
    pub fn with_history(mut self, messages: usize, age: Duration) -> Self {
        self.history_messages = messages;
        self.history_age = age;
        self
    }
    /// Sets the byte budget of each group's history.
    pub fn with_history_bytes(mut self, bytes: usize) -> Self {
        self.history_bytes = bytes;
        self
    }
    /// Sets the refresh period and the parent/child timeouts.
    pub fn with_refresh(
        mut self,
        interval: Duration,
        parent_timeout: Duration,
        child_timeout: Duration,
    ) -> Self {
        self.refresh_interval = interval;
        self.parent_timeout = parent_timeout;
        self.child_timeout = child_timeout;
        self
    }
    /// Sets the body cap.
    pub fn with_max_body_bytes(mut self, n: usize) -> Self {
        self.max_body_bytes = n;
        self
    }

    /// Checks that the configuration can work.
    pub fn validate(&self) -> Result<(), MulticastConfigError> {
        for (name, n) in [
            ("max_children", self.max_children),
            ("history_messages", self.history_messages),
            ("history_bytes", self.history_bytes),
            ("backups", self.backups),
            ("max_out_of_order", self.max_out_of_order),
            ("max_groups", self.max_groups),
            ("max_pending_publishes", self.max_pending_publishes),
            ("fetch_attempts", self.fetch_attempts as usize),
        ] {
            if n == 0 {
                return Err(MulticastConfigError::Zero(name));
            }
        }
        for (name, d) in [
            ("history_age", self.history_age),
            ("refresh_interval", self.refresh_interval),
            ("parent_timeout", self.parent_timeout),
            ("child_timeout", self.child_timeout),
            ("detached_timeout", self.detached_timeout),
            ("rpc_timeout", self.rpc_timeout),
            ("publish_retry", self.publish_retry),
            ("publish_timeout", self.publish_timeout),
            ("backup_heartbeat", self.backup_heartbeat),
            ("backup_ttl", self.backup_ttl),
            ("tick", self.tick),
        ] {
            if d.is_zero() {
                return Err(MulticastConfigError::ZeroDuration(name));
            }
        }
        if self.max_body_bytes > MAX_BODY_BYTES || self.max_body_bytes + 4096 > self.max_frame_bytes {
            return Err(MulticastConfigError::Sizes {
                body: self.max_body_bytes,
                frame: self.max_frame_bytes,
            });
        }
        if self.parent_timeout <= self.refresh_interval || self.child_timeout <= self.refresh_interval {
            return Err(MulticastConfigError::TimeoutsTooShort);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_bad_settings_are_refused() {
        assert_eq!(MulticastConfig::default().validate(), Ok(()));
        assert_eq!(
            MulticastConfig::default().with_max_children(0).validate(),
            Err(MulticastConfigError::Zero("max_children"))
        );
        assert!(MulticastConfig::default().with_max_body_bytes(MAX_BODY_BYTES + 1).validate().is_err());
        let s = Duration::from_secs(1);
        assert_eq!(
            MulticastConfig::default().with_refresh(s, s, 5 * s).validate(),
            Err(MulticastConfigError::TimeoutsTooShort)
        );
    }
}
