//! The HTTP API's connection loop: accepts TCP connections and serves each with hyper's HTTP/1
//! under the limits that keep slow or idle clients from holding the node's API.
//!
//! Owns: the accept loop ([`serve`]), the bound on open connections and on open server-sent event
//! streams, and the counts of what those bounds refused ([`Limits`], read by `/metrics`).
//!
//! Invariants:
//! - A connection holds one slot of [`Limits::connections`] from accept until its task ends; past
//!   the bound a new connection is accepted and closed at once (counted), so the kernel's backlog
//!   never fills with clients the node will not serve.
//! - A client gets [`ServeConfig::header_timeout`] to send a request head, counted from when hyper
//!   starts waiting for one: on a new connection and again after each answer on a kept-alive one,
//!   so the same time-out closes slow-header and idle connections alike. A request being answered
//!   (a long server-sent event stream included) is not cut by it.
//! - An event stream holds one slot of [`Limits::listeners`] for the stream's lifetime: the slot
//!   is freed when the stream is dropped, which is when its client goes away.
//! - Shutdown stops accepting, asks every open connection to finish its request and close, and
//!   returns when all have; the caller bounds how long it waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::metrics::HttpLoad;

/// The HTTP server's limits, from the node's flags.
#[derive(Clone, Copy, Debug)]
pub struct ServeConfig {
    /// Time a client has to send a request head, and to send the next one on a kept-alive
    /// connection.
    pub header_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Server-sent event streams (group listeners) open at once.
    pub max_listeners: usize,
}

/// The bounds on connections and event streams, shared by the accept loop and the handlers, with
/// the counts of what they refused: semaphores and atomics, no lock.
#[derive(Debug)]
pub struct Limits {
    connections: Arc<Semaphore>,
    max_connections: usize,
    connections_refused: AtomicU64,
    listeners: Arc<Semaphore>,
    max_listeners: usize,
    listeners_refused: AtomicU64,
}

impl Limits {
    /// Limits of `config`'s sizes, nothing open and nothing refused yet.
    pub fn new(config: &ServeConfig) -> Self {
        Limits {
            connections: Arc::new(Semaphore::new(config.max_connections)),
            max_connections: config.max_connections,
            connections_refused: AtomicU64::new(0),
            listeners: Arc::new(Semaphore::new(config.max_listeners)),
            max_listeners: config.max_listeners,
            listeners_refused: AtomicU64::new(0),
        }
    }

    /// A slot for one event stream, to be kept as long as the stream lives; `None` (counted) when
    /// all [`ServeConfig::max_listeners`] are taken.
    pub fn listener_slot(&self) -> Option<OwnedSemaphorePermit> {
        let slot = self.listeners.clone().try_acquire_owned().ok();
        if slot.is_none() {
            // Relaxed: an independent counter; a scrape needs no ordering with anything else.
            self.listeners_refused.fetch_add(1, Ordering::Relaxed);
        }
        slot
    }

    /// The most event streams open at once.
    pub fn max_listeners(&self) -> usize {
        self.max_listeners
    }

    /// What is open and what was refused, now.
    pub fn load(&self) -> HttpLoad {
        HttpLoad {
            connections_open: (self.max_connections - self.connections.available_permits()) as u64,
            connections_refused: self.connections_refused.load(Ordering::Relaxed),
            listeners_open: (self.max_listeners - self.listeners.available_permits()) as u64,
            listeners_refused: self.listeners_refused.load(Ordering::Relaxed),
        }
    }
}

/// Serves `app` on `listener` until `stop` fires, then waits for the open connections to finish
/// (see the module's invariants).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: ServeConfig,
    limits: Arc<Limits>,
    stop: CancellationToken,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(config.header_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, most likely: the error is the listener's, not a
                // client's, and retrying at once would spin; connections that close free some.
                debug!(%error, "accepting an HTTP connection failed");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    () = stop.cancelled() => break,
                }
            }
        };
        let Ok(slot) = limits.connections.clone().try_acquire_owned() else {
            limits.connections_refused.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, max = config.max_connections, "HTTP connection refused: too many open");
            drop(stream);
            continue;
        };
        // Answers are small and often the whole exchange: send them without Nagle's delay.
        let _ = stream.set_nodelay(true);
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // Header time-outs and clients that vanish end here: the client's doing, not the node's.
            if let Err(error) = connection.await {
                debug!(%peer, %error, "HTTP connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_slot_lasts_as_long_as_it_is_held_and_refusals_are_counted() {
        let config =
            ServeConfig { header_timeout: Duration::from_secs(1), max_connections: 4, max_listeners: 2 };
        let limits = Limits::new(&config);
        let first = limits.listener_slot().expect("a first slot");
        let _second = limits.listener_slot().expect("a second slot");
        assert!(limits.listener_slot().is_none(), "the cap is 2");
        let load = limits.load();
        assert_eq!((load.listeners_open, load.listeners_refused), (2, 1));
        drop(first);
        assert!(limits.listener_slot().is_some(), "a dropped slot is free again");
        assert_eq!(limits.load().listeners_refused, 1);
    }
}
