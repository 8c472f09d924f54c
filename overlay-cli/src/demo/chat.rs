//! Step 8 of `overlay demo`: chat. Two users, alice and bob, register names bound to key pairs
//! the CLI keeps (not the nodes); bob logs in and listens at one node, alice sends him a DM
//! sealed to his key through another ("delivered"); bob logs out, alice sends again ("queued":
//! it waits in bob's mailbox, a durable queue), and bob, logged in at a third node, takes it
//! from there. Each DM is recognised by the id the sending node returned, so DMs of an earlier
//! demo on the same cluster are told apart. Every wait is bounded by the step's deadline.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use overlay_api::Client;
use overlay_chat::KeyDir;

use super::say;
use crate::chat::{self, Cx};

/// How long step 8 may take in all. The ring was repaired in step 6; the margin covers a slow
/// machine and a mailbox whose ordering node is still taking over.
const CHAT_DEADLINE: Duration = Duration::from_secs(60);
/// Pause between attempts while a presence record or mailbox is not reachable yet.
const CHAT_RETRY: Duration = Duration::from_millis(250);

/// Runs step 8 with the users' keys in `keys_dir`; `nodes` are three running nodes: where bob
/// listens first, where alice sends from, and where bob reads his mailbox.
pub(super) fn run(
    clients: &[Client],
    nodes: [usize; 3],
    keys_dir: &Path,
    dir_flag: &str,
    out: &mut impl Write,
) -> Result<()> {
    let [bob_at, alice_at, bob_later_at] = nodes;
    let deadline = Instant::now() + CHAT_DEADLINE;
    let cx = |node: usize| -> Result<Cx> {
        let keys = KeyDir::open(keys_dir).with_context(|| format!("opening {}", keys_dir.display()))?;
        Ok(Cx::new(keys, clients[node].clone()))
    };
    let keys_flag = format!("--keys {}", keys_dir.display());
    say(
        out,
        &format!(
            "Step 8: chat. alice and bob claim their names with key pairs the CLI keeps in {} \
             (overlay chat {keys_flag} register alice{dir_flag}); nodes only see signatures and sealed bytes.",
            keys_dir.display()
        ),
    )?;
    for name in ["alice", "bob"] {
        let mut said = Vec::new();
        chat::register(&cx(bob_at)?, name, &mut said).with_context(|| format!("registering {name}"))?;
        say(out, &format!("  {}", String::from_utf8_lossy(&said).trim_end()))?;
    }

    let bob = cx(bob_at)?;
    let login = chat::login(&bob, "bob").context("bob logging in")?;
    let mut feed = chat::dm_feed(&bob, "bob", &login.session, CHAT_DEADLINE).context("bob listening")?;
    say(
        out,
        &format!(
            "  bob logs in and listens at node {bob_at} (overlay chat listen --as bob); \
             his presence record says where he is: {}",
            wait_for_presence(clients, alice_at, "bob", true, deadline)?
        ),
    )?;

    let alice = cx(alice_at)?;
    let first = "hi bob, this is sealed to your key";
    let receipt = chat::send_dm(&alice, "alice", "bob", first.as_bytes()).context("alice sending to bob")?;
    say(
        out,
        &format!(
            "  alice at node {alice_at}: overlay chat send bob {first:?} --as alice -> {}",
            receipt.outcome
        ),
    )?;
    if receipt.outcome != "delivered" {
        bail!("bob listens at node {bob_at}, but the DM was {}", receipt.outcome);
    }
    let plain = loop {
        let Some(envelope) = chat::next_dm(&mut feed)? else {
            bail!("bob's feed at node {bob_at} ended before alice's DM arrived");
        };
        if chat::hex(&envelope.id) == receipt.id {
            break chat::open_dm(&bob, "bob", &envelope).context("bob opening alice's DM")?;
        }
    };
    say(
        out,
        &format!(
            "  bob at node {bob_at} opened it: {}: {}",
            plain.from,
            String::from_utf8_lossy(&plain.body)
        ),
    )?;
    drop(feed);

    let mut said = Vec::new();
    chat::logout(&bob, "bob", &mut said).context("bob logging out")?;
    say(
        out,
        &format!(
            "  bob logs out (overlay chat logout bob): {}",
            wait_for_presence(clients, alice_at, "bob", false, deadline)?
        ),
    )?;
    let second = "see you later: this one waits in your mailbox";
    let receipt = chat::send_dm(&alice, "alice", "bob", second.as_bytes()).context("alice sending to bob")?;
    say(out, &format!("  alice: overlay chat send bob {second:?} --as alice -> {}", receipt.outcome))?;
    if receipt.outcome != "queued" {
        bail!("bob is offline, but the DM was {}", receipt.outcome);
    }

    let bob_later = cx(bob_later_at)?;
    let login = chat::login(&bob_later, "bob").context("bob logging in again")?;
    let plain = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            bail!("alice's queued DM was not in bob's mailbox within {} s", CHAT_DEADLINE.as_secs());
        }
        // Taken, opened, and only then acknowledged: a DM is removed once it has been shown.
        match chat::take_from_mailbox(
            &bob_later,
            "bob",
            &login.session,
            remaining.min(Duration::from_secs(10)),
        ) {
            Ok(Some(plain)) if chat::hex(&plain.id) == receipt.id => break plain,
            Ok(Some(plain)) => say(
                out,
                &format!("  (an earlier DM from {} left in the mailbox, taken and acknowledged)", plain.from),
            )?,
            Ok(None) => {}
            // The mailbox's ordering node may still be taking over after the crash of step 4.
            Err(_) if Instant::now() + CHAT_RETRY < deadline => std::thread::sleep(CHAT_RETRY),
            Err(error) => return Err(error.context("bob taking from his mailbox")),
        }
    };
    say(
        out,
        &format!(
            "  bob logs in at node {bob_later_at} (overlay chat listen --as bob): his mailbox hands him {}: {}",
            plain.from,
            String::from_utf8_lossy(&plain.body)
        ),
    )?;
    say(
        out,
        "  Rooms are multicast groups: overlay chat join lobby --as bob, overlay chat say lobby hello --as alice.",
    )?;
    let mut said = Vec::new();
    chat::logout(&bob_later, "bob", &mut said).context("bob logging out")?;
    Ok(())
}

/// Polls `name`'s presence through node `via` until it shows `online`; returns how it reads.
fn wait_for_presence(
    clients: &[Client],
    via: usize,
    name: &str,
    online: bool,
    deadline: Instant,
) -> Result<String> {
    let started = Instant::now();
    loop {
        let presence = chat::presence(&clients[via], name);
        match presence {
            Ok(presence) if presence.online == online => {
                let waited = started.elapsed().as_secs_f64();
                return Ok(match presence.peer_id {
                    Some(peer) if online => {
                        format!(
                            "online at node {} (seen from node {via} after {waited:.1} s)",
                            crate::output::short_peer_id(&peer)
                        )
                    }
                    _ => format!("offline (seen from node {via} after {waited:.1} s)"),
                });
            }
            _ if Instant::now() + CHAT_RETRY < deadline => std::thread::sleep(CHAT_RETRY),
            Ok(_) => bail!(
                "{name} did not show {} within the step's deadline",
                if online { "online" } else { "offline" }
            ),
            Err(error) => return Err(error.context(format!("reading {name}'s presence"))),
        }
    }
}
