//! `overlay queue ...`: put, get, poll, listen and stat, over the node's `/v1/queues` API.
//!
//! `get` and `poll` take the first message, print it, and only then acknowledge it: a consumer
//! that dies between the two has printed nothing the queue forgot (the message is handed out
//! again when its lease runs out). Both exit with code 1 when nothing arrived ([`NothingArrived`]).
//! `listen` prints every message as it is put, without taking it (notify).

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use overlay_api::QueueItem;

use crate::cli::{GlobalArgs, QueueCommand};
use crate::commands;
use crate::output::{self, Table};

/// A get or poll found nothing in time (exit code 1).
#[derive(Debug, thiserror::Error)]
#[error("no message arrived in queue {queue} {within}")]
pub(crate) struct NothingArrived {
    queue: String,
    within: String,
}

pub(crate) fn run(global: &GlobalArgs, command: &QueueCommand, out: &mut impl Write) -> Result<()> {
    match command {
        QueueCommand::Put { queue, message } => put(global, queue, message, out),
        QueueCommand::Get(args) => {
            take(global, &args.queue, Duration::from_secs_f64(args.wait), args.lease, out)
        }
        QueueCommand::Poll(args) => take(global, &args.queue, Duration::ZERO, args.lease, out),
        QueueCommand::Listen { queue, from } => listen(global, queue, *from, out),
        QueueCommand::Stat { queue } => stat(global, queue, out),
    }
}

fn put(global: &GlobalArgs, queue: &str, message: &str, out: &mut impl Write) -> Result<()> {
    let body = if message == "-" {
        commands::read_bounded(io::stdin().lock()).context("reading the message from stdin")?
    } else {
        message.as_bytes().to_vec()
    };
    let receipt = commands::client(global)?.queue_put(queue, &body)?;
    if global.json {
        return Ok(output::write_json(out, &receipt.raw)?);
    }
    writeln!(out, "put seq {} in {} (id {})", receipt.parsed.seq, receipt.parsed.queue, receipt.parsed.id)?;
    Ok(())
}

fn body_bytes(item: &QueueItem) -> Result<Vec<u8>> {
    match (&item.body, &item.body_base64) {
        (Some(text), _) => Ok(text.clone().into_bytes()),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .context("the node sent a body that is not base64"),
        (None, None) => Ok(Vec::new()),
    }
}

fn take(global: &GlobalArgs, queue: &str, wait: Duration, lease: f64, out: &mut impl Write) -> Result<()> {
    let client = commands::client(global)?;
    let lease = Duration::from_secs_f64(lease);
    let Some(item) = client.queue_take(queue, wait, lease)? else {
        let within = if wait.is_zero() { "(it is empty)".to_string() } else { format!("within {wait:?}") };
        return Err(NothingArrived { queue: queue.to_string(), within }.into());
    };
    if global.json {
        output::write_json(out, &item.raw)?;
    } else {
        out.write_all(&body_bytes(&item.parsed)?)?;
        if !item.parsed.body.as_deref().unwrap_or("").ends_with('\n') {
            writeln!(out)?;
        }
    }
    out.flush()?;
    // Printed: now it may go.
    let receipt = client.queue_ack(queue, &item.parsed)?;
    match receipt.parsed.outcome.as_str() {
        "removed" => Ok(()),
        "gone" => Ok(()), // acknowledged already (a retried acknowledgement)
        other => bail!(
            "the message was printed but not acknowledged ({other}): its lease of {lease:?} ran out and it may \
             be delivered again"
        ),
    }
}

fn listen(global: &GlobalArgs, queue: &str, from: Option<u64>, out: &mut impl Write) -> Result<()> {
    let client = commands::client(global)?;
    let mut stream = client.queue_messages(queue, from, None)?;
    if io::stderr().is_terminal() {
        eprintln!("listening to queue {queue} via {} (Ctrl-C to stop)", client.base_url());
    }
    let mut received = 0u64;
    loop {
        let Some(item) = stream
            .next_item()
            .with_context(|| format!("listening to queue {queue} ({received} received)"))?
        else {
            bail!("the node ended the stream of queue {queue} ({received} received)");
        };
        received += 1;
        if global.json {
            output::write_json(out, &item.raw)?;
        } else {
            let text = String::from_utf8_lossy(&body_bytes(&item.parsed)?).into_owned();
            writeln!(out, "[{}] {}: {}", item.parsed.seq, item.parsed.sender, text.escape_debug())?;
        }
        out.flush()?;
    }
}

fn stat(global: &GlobalArgs, queue: &str, out: &mut impl Write) -> Result<()> {
    let answer = commands::client(global)?.queue_stat(queue)?;
    if global.json {
        return Ok(output::write_json(out, &answer.raw)?);
    }
    let s = answer.parsed;
    let mut table =
        Table::new(["queue", "length", "leased", "bytes", "consumers", "waiting", "listeners", "root"]);
    table.row([
        s.queue,
        s.len.to_string(),
        s.leased.to_string(),
        output::human_bytes(s.bytes),
        s.consumers.to_string(),
        s.waiting.to_string(),
        s.subscribers.to_string(),
        format!("{} ({})", output::short_peer_id(&s.root.peer_id), output::short_ring_id(&s.root.ring_id)),
    ]);
    Ok(table.write(out)?)
}
