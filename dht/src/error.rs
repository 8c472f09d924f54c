//! Errors the core reports to its driver, one enum per operation.

use thiserror::Error;

/// Why a lookup ended without an answer.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum LookupError {
    /// The lookup took the configured number of steps without reaching the owner; the ring is
    /// probably still repairing. Retry later.
    #[error("lookup gave up after {hops} hops")]
    TooManyHops {
        /// Steps taken.
        hops: u32,
    },
    /// Every node that could have led to the owner failed or refused. Retry after stabilization.
    #[error("no reachable node leads to the key ({hops} hops, {timeouts} time-outs)")]
    NoRoute {
        /// Steps taken.
        hops: u32,
        /// Time-outs met.
        timeouts: u32,
    },
    /// The lookup ran past its overall deadline.
    #[error("lookup timed out after {hops} hops")]
    TimedOut {
        /// Steps taken.
        hops: u32,
    },
    /// This node is not (or no longer) a ring member.
    #[error("this node is not a member of a ring")]
    NotJoined,
    /// Too many lookups are running on this node; retry later.
    #[error("too many concurrent lookups")]
    Overloaded,
}

/// Why a join failed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum JoinError {
    /// No bootstrap address was given.
    #[error("no bootstrap node given")]
    NoBootstrap,
    /// No bootstrap node led to a successor within the join timeout.
    #[error("could not join through any bootstrap node after {attempts} attempts")]
    TimedOut {
        /// Join lookups tried.
        attempts: u32,
    },
}
