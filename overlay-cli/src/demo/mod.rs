//! `overlay demo`: a guided tour for a newcomer. Starts a 5-node cluster, stores keys, reads
//! them back through other nodes, crashes a node, waits until every key is readable again, then
//! has one node listen to a multicast group while two others send to it, then has two users chat
//! (a DM delivered live, one queued in a mailbox and taken at another node; see `chat`), and says
//! what it does at each step. Every wait polls against a deadline; a step that does not finish in time fails
//! the demo with a non-zero exit.

use std::io::Write;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use overlay_api::{ApiError, Client, GroupEvent, StatusCode};

use crate::cli::{DemoArgs, GlobalArgs};
use crate::cluster::{self, ClusterFile};
use crate::commands;
use crate::output;

mod chat;

const NODES: usize = 5;
const KEYS: usize = 20;
/// Per-request time-out during the demo.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the demo waits for every key to be readable after the crash. The node has to
/// notice the failure (timeouts) and repair routes, which takes seconds, not minutes.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(60);
const RECOVERY_POLL: Duration = Duration::from_millis(500);
/// The multicast group of step 7.
const GROUP: &str = "demo-chat";
/// How long step 7 may take in all: attaching the listener, sending, and every message arriving.
/// The ring was repaired in step 6, so this is seconds of work; the margin covers a slow machine.
const MULTICAST_DEADLINE: Duration = Duration::from_secs(60);
/// Pause between attempts when the group's root could not be reached in time (503).
const MULTICAST_RETRY: Duration = Duration::from_millis(500);

/// The demo's key/value pairs: short, readable, and spread over the ring by their hashes.
fn demo_pairs() -> Vec<(String, String)> {
    const CITIES: [&str; KEYS] = [
        "amsterdam",
        "berlin",
        "cairo",
        "delhi",
        "edinburgh",
        "florence",
        "geneva",
        "havana",
        "istanbul",
        "jakarta",
        "kyoto",
        "lagos",
        "madrid",
        "nairobi",
        "oslo",
        "paris",
        "quito",
        "rome",
        "sydney",
        "toronto",
    ];
    CITIES.iter().map(|city| (format!("demo/{city}"), format!("hello from {city}"))).collect()
}

pub(crate) fn run(global: &GlobalArgs, args: &DemoArgs, out: &mut impl Write) -> Result<()> {
    let dir = &global.dir;
    say(
        out,
        &format!("Step 1: starting a {NODES}-node ring in {} (overlay cluster up -n {NODES})", dir.display()),
    )?;
    let cluster = cluster::up(dir, NODES, false, args.binary.node_bin.as_deref())
        .context("step 1 (starting the cluster) failed")?;
    let result = tour(global, &cluster, out);
    if args.stop {
        say(out, "Stopping the cluster (overlay cluster down) because of --stop.")?;
        let (stopped, killed) = cluster::down(dir).context("stopping the cluster")?;
        say(out, &format!("Stopped {stopped} nodes ({killed} needed SIGKILL)."))?;
    } else if result.is_err() {
        say(
            out,
            &format!(
                "The cluster is left running so you can look around; logs are in {}/node-*/node.log.",
                dir.display()
            ),
        )?;
    }
    let victim = result?;
    if !args.stop {
        next_steps(dir, victim, out)?;
        let page = cluster.nodes[(victim + 1) % cluster.nodes.len()].http.trim_end_matches('/').to_owned();
        say(out, &format!("Watch the ring live: open {page}/ in a browser (every node serves the page)."))?;
    }
    Ok(())
}

/// Where step 8 keeps its users' keys, inside the cluster's directory.
const DEMO_KEYS: &str = "demo-keys";

/// Steps 2 to 8; returns the index of the node it crashed.
fn tour(global: &GlobalArgs, cluster: &ClusterFile, out: &mut impl Write) -> Result<usize> {
    let clients = cluster
        .nodes
        .iter()
        .map(|node| Client::new(&node.http, REQUEST_TIMEOUT, 1))
        .collect::<Result<Vec<_>, _>>()?;
    let consistency = global.consistency;
    say(out, "The ring is correct: every node's successor and predecessor are its neighbours by ring id.")?;
    let ring = clients[0].ring().context("reading the ring from node 0")?;
    commands::write_ring_table(&ring.parsed.nodes, out)?;
    writeln!(out)?;

    let pairs = demo_pairs();
    say(
        out,
        &format!(
            "Step 2: storing {KEYS} keys, sending each write to a different node ({}).",
            commands::consistency_label(consistency)
        ),
    )?;
    for (position, (key, value)) in pairs.iter().enumerate() {
        let client = &clients[position % clients.len()];
        let (_, receipt) = client
            .put(key, value.as_bytes(), consistency)
            .with_context(|| format!("step 2: storing {key:?} through {}", client.base_url()))?;
        if position < 3 {
            say(
                out,
                &format!(
                    "  put {key:?} via node {} -> {} replicas acknowledged",
                    position % clients.len(),
                    receipt.parsed.replicas_acked
                ),
            )?;
        }
    }
    say(out, &format!("  ... and {} more.", KEYS - 3))?;

    let (key, _) = &pairs[0];
    let lookup = clients[0].lookup(key).with_context(|| format!("looking up {key:?}"))?;
    say(
        out,
        &format!(
            "  Where does {key:?} live? SHA-1 puts it at {}; its owner is {} ({} hops), replicated on {} nodes.",
            output::short_ring_id(&lookup.parsed.key_id),
            lookup
                .parsed
                .owner
                .as_ref()
                .map_or_else(|| "none".to_owned(), |owner| output::short_peer_id(&owner.peer_id)),
            lookup.parsed.hops,
            lookup.parsed.replicas.len().max(1),
        ),
    )?;
    writeln!(out)?;

    say(out, "Step 3: reading every key back through a node other than the one that stored it.")?;
    for (position, (key, value)) in pairs.iter().enumerate() {
        let reader = (position + 1) % clients.len();
        let stored = clients[reader]
            .get(key, consistency)
            .with_context(|| format!("step 3: reading {key:?} through node {reader}"))?;
        if stored.value != value.as_bytes() {
            bail!(
                "step 3: node {reader} returned {:?} for {key:?}, expected {value:?}",
                String::from_utf8_lossy(&stored.value)
            );
        }
    }
    say(out, &format!("  All {KEYS} keys read back correctly."))?;
    writeln!(out)?;

    let (victim, owned) = choose_victim(&clients, &pairs);
    say(
        out,
        &format!(
            "Step 4: crashing node {victim} with SIGKILL (overlay cluster kill {victim}); it owns {owned} of the {KEYS} keys, \
         and it gets no chance to hand them over."
        ),
    )?;
    cluster::kill(&global.dir, victim).with_context(|| format!("step 4: killing node {victim}"))?;

    let survivors: Vec<usize> = (0..clients.len()).filter(|&index| index != victim).collect();
    say(
        out,
        &format!(
            "Step 5: reading all keys through the surviving nodes until every read succeeds (up to {} s).",
            RECOVERY_DEADLINE.as_secs()
        ),
    )?;
    let recovered_after = wait_until_all_readable(&clients, &survivors, &pairs, global, out)?;
    say(
        out,
        &format!(
            "  All {KEYS} keys survived the crash: readable with the right values {:.1} s after node {victim} died.",
            recovered_after.as_secs_f64()
        ),
    )?;

    say(out, "Step 6: waiting for the four survivors to close the ring around the gap.")?;
    let mut cluster_now = ClusterFile::load_existing(&global.dir)?;
    let started = Instant::now();
    cluster::wait_for_ring(&mut cluster_now, &survivors, started, started + cluster::RING_DEADLINE)
        .context("step 6: the survivors did not repair the ring")?;
    let ring = clients[survivors[0]].ring().context("reading the repaired ring")?;
    commands::write_ring_table(&ring.parsed.nodes, out)?;
    writeln!(out)?;

    multicast(&clients, &survivors, out).context("step 7 (multicast) failed")?;
    writeln!(out)?;

    let [first, second, third, ..] = *survivors.as_slice() else {
        bail!("step 8 needs three running nodes, {} are left", survivors.len());
    };
    chat::run(&clients, [first, second, third], &global.dir.join(DEMO_KEYS), &dir_flag(&global.dir), out)
        .context("step 8 (chat) failed")?;
    writeln!(out)?;
    Ok(victim)
}

/// Step 7: the first survivor listens to [`GROUP`]; the next two send three messages in turn;
/// the listener must receive exactly those, in the order of the sequence numbers the group's
/// root gave them. The listener asks for the history from seq 1, so it misses nothing however
/// long it takes to attach; messages of an earlier demo on the same cluster are skipped.
fn multicast(clients: &[Client], survivors: &[usize], out: &mut impl Write) -> Result<()> {
    let [listener, first_sender, second_sender, ..] = *survivors else {
        bail!("needs three running nodes, {} are left", survivors.len());
    };
    say(
        out,
        &format!(
            "Step 7: multicast. Node {listener} listens to group {GROUP:?} (overlay group listen {GROUP} --from 1); \
             nodes {first_sender} and {second_sender} send it three messages."
        ),
    )?;
    let started = Instant::now();
    let deadline = started + MULTICAST_DEADLINE;
    // The whole stream, replay and waiting included, is bounded by the step's deadline.
    let mut stream = retry_while_unavailable(deadline, || {
        let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        clients[listener].group_messages(GROUP, Some(1), Some(remaining))
    })
    .with_context(|| format!("node {listener} could not start listening to {GROUP:?}"))?;
    say(
        out,
        &format!(
            "  Node {listener} is a member of {GROUP:?} now ({:.1} s); --from 1 replays what the group already \
             holds, so nothing sent meanwhile is missed.",
            started.elapsed().as_secs_f64()
        ),
    )?;

    let messages = [
        (first_sender, format!("hello from node {first_sender}")),
        (second_sender, format!("hi, node {second_sender} here")),
        (first_sender, "multicast keeps the order: every member sees the same sequence".to_owned()),
    ];
    let mut sent = Vec::new();
    let first_sent = Instant::now();
    for (sender, body) in &messages {
        let label = format!("node-{sender}");
        let receipt = retry_while_unavailable(deadline, || {
            clients[*sender].send_to_group(GROUP, body.as_bytes(), Some(&label))
        })
        .with_context(|| format!("node {sender} could not send to {GROUP:?}"))?;
        let seq = receipt.parsed.seq;
        say(
            out,
            &format!(
                "  node {sender} sent {body:?} (overlay group send {GROUP} ... --from {label}) -> seq {seq}"
            ),
        )?;
        sent.push((seq, label, body.clone()));
    }
    // Sent one after the other, so the root numbered them in this order.
    if !sent.windows(2).all(|pair| pair[0].0 < pair[1].0) {
        bail!("the sequence numbers are not increasing: {:?}", sent.iter().map(|s| s.0).collect::<Vec<_>>());
    }

    let mut received = Vec::new();
    while received.len() < sent.len() {
        let event = stream.next_event().with_context(|| {
            format!(
                "waiting for the messages at node {listener} ({} of {} arrived)",
                received.len(),
                sent.len()
            )
        })?;
        let message = match event {
            Some(GroupEvent::Message(message)) => message.parsed,
            // History this cluster no longer holds, or an event of a kind this CLI does not know:
            // neither is one of the demo's messages.
            Some(GroupEvent::Gap(_) | GroupEvent::Unreadable { .. }) => continue,
            Some(GroupEvent::Error(reason)) => bail!("node {listener} ended the stream: {reason}"),
            None => bail!(
                "node {listener} ended the stream after {} of the {} messages",
                received.len(),
                sent.len()
            ),
        };
        let Some((_, label, body)) = sent.iter().find(|(seq, ..)| *seq == message.seq) else {
            continue; // an earlier demo's message, replayed by --from 1
        };
        if message.body != *body || message.from != *label {
            bail!(
                "node {listener} received seq {} as {:?} from {:?}, but {label} sent {body:?}",
                message.seq,
                message.body,
                message.from
            );
        }
        say(
            out,
            &format!("  node {listener} received [{}] {}: {}", message.seq, message.from, message.body),
        )?;
        received.push(message.seq);
    }
    let expected: Vec<u64> = sent.iter().map(|(seq, ..)| *seq).collect();
    if received != expected {
        bail!("node {listener} received seqs {received:?}, expected {expected:?} in that order");
    }
    say(
        out,
        &format!(
            "  All {} messages reached node {listener} once each, in sequence order, {:.1} s after the first was sent.",
            sent.len(),
            first_sent.elapsed().as_secs_f64()
        ),
    )?;
    say(out, &format!("  The tree that carried them: overlay group tree {GROUP}"))?;
    Ok(())
}

/// Calls `attempt` until it succeeds, retrying while the group's root cannot be reached in time
/// (503) or the node is slow to answer, both of which pass once the ring has settled; any
/// other error, or the deadline, ends the wait with the last error.
fn retry_while_unavailable<T>(
    deadline: Instant,
    mut attempt: impl FnMut() -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    loop {
        match attempt() {
            Err(error) if is_transient(&error) && Instant::now() + MULTICAST_RETRY < deadline => {
                thread::sleep(MULTICAST_RETRY);
            }
            result => return result,
        }
    }
}

fn is_transient(error: &ApiError) -> bool {
    match error {
        ApiError::Rejected { status, .. } => {
            matches!(*status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT)
        }
        ApiError::TimedOut { .. } => true,
        _ => false,
    }
}

/// The node to crash and how many demo keys it owns: not node 0 (the one newcomers talk to),
/// and among the others the one that owns the most demo keys, so the crash actually tests
/// replication. Ownership that cannot be learnt counts as zero.
fn choose_victim(clients: &[Client], pairs: &[(String, String)]) -> (usize, usize) {
    let peers: Vec<Option<String>> =
        clients.iter().map(|client| client.status().ok().map(|status| status.parsed.peer_id)).collect();
    let mut owned = vec![0usize; clients.len()];
    for (key, _) in pairs {
        let Ok(lookup) = clients[0].lookup(key) else { continue };
        let Some(owner) = &lookup.parsed.owner else { continue };
        if let Some(index) = peers.iter().position(|peer| peer.as_deref() == Some(owner.peer_id.as_str())) {
            owned[index] += 1;
        }
    }
    let victim =
        (1..clients.len()).max_by_key(|&index| (owned[index], std::cmp::Reverse(index))).unwrap_or(1);
    (victim, owned.get(victim).copied().unwrap_or(0))
}

/// Polls until every key reads back with its value through the survivors (rotating which
/// survivor serves which key), printing the count whenever it changes. Returns how long it took.
fn wait_until_all_readable(
    clients: &[Client],
    survivors: &[usize],
    pairs: &[(String, String)],
    global: &GlobalArgs,
    out: &mut impl Write,
) -> Result<Duration> {
    let started = Instant::now();
    let deadline = started + RECOVERY_DEADLINE;
    let mut last_readable = None;
    let mut round = 0usize;
    loop {
        let mut readable = 0;
        let mut first_failure = None;
        for (position, (key, value)) in pairs.iter().enumerate() {
            let reader = survivors[(position + round) % survivors.len()];
            match clients[reader].get(key, global.consistency) {
                Ok(stored) if stored.value == value.as_bytes() => readable += 1,
                Ok(_) => {
                    first_failure
                        .get_or_insert_with(|| format!("node {reader} returned a wrong value for {key:?}"));
                }
                Err(error) => {
                    first_failure.get_or_insert_with(|| format!("{key:?} via node {reader}: {error}"));
                }
            }
        }
        if last_readable != Some(readable) {
            say(
                out,
                &format!(
                    "  after {:.1} s: {readable}/{} keys readable",
                    started.elapsed().as_secs_f64(),
                    pairs.len()
                ),
            )?;
            last_readable = Some(readable);
        }
        if readable == pairs.len() {
            return Ok(started.elapsed());
        }
        if Instant::now() >= deadline {
            bail!(
                "step 5: only {readable} of {} keys were readable {} s after the crash; first failure: {}",
                pairs.len(),
                RECOVERY_DEADLINE.as_secs(),
                first_failure.unwrap_or_default()
            );
        }
        thread::sleep(RECOVERY_POLL);
        round = round.wrapping_add(1);
    }
}

fn say(out: &mut impl Write, line: &str) -> Result<()> {
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// The `--dir` flag commands need to find the cluster: none for the default directory; any
/// other must be repeated (kv commands use it to pick a node).
fn dir_flag(dir: &Path) -> String {
    if dir == Path::new(".overlay") { String::new() } else { format!(" --dir {}", dir.display()) }
}

fn next_steps(dir: &Path, victim: usize, out: &mut impl Write) -> Result<()> {
    let dir_flag = dir_flag(dir);
    writeln!(out, "Done. The cluster keeps running with node {victim} down. Try next:")?;
    for (command, what) in [
        ("cluster status".to_owned(), "which nodes run, their ports and key counts"),
        ("ring".to_owned(), "the ring in order, as one node sees it"),
        ("status".to_owned(), "one node's predecessor, successors and fingers"),
        ("put greeting 'hello, ring'".to_owned(), "store a value"),
        ("get greeting".to_owned(), "read it back (only the raw value on stdout)"),
        ("lookup greeting".to_owned(), "which nodes own and replicate it, and the hop count"),
        (format!("group listen {GROUP}"), "print the group's messages as they arrive (Ctrl-C to stop)"),
        (format!("group send {GROUP} 'hello, group'"), "send one; every listener prints it"),
        (format!("group tree {GROUP}"), "the group's tree: root, forwarders, members"),
        ("group list".to_owned(), "the groups one node takes part in"),
        (
            format!("chat --keys {} listen --as bob", dir.join(DEMO_KEYS).display()),
            "bob's DMs as they arrive (his mailbox first; Ctrl-C to stop)",
        ),
        (
            format!("chat --keys {} send bob 'hello again' --as alice", dir.join(DEMO_KEYS).display()),
            "\"delivered\" while bob listens, else \"queued\"",
        ),
        (format!("cluster start {victim}"), "bring the crashed node back on its data directory"),
        ("bench --ops 5000 --concurrency 16 --value-size 256".to_owned(), "latency and throughput"),
        ("cluster down".to_owned(), "stop every node"),
    ] {
        let line = format!("overlay {command}{dir_flag}");
        writeln!(out, "  {line:<60} # {what}")?;
    }
    Ok(())
}
