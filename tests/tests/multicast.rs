//! Multicast groups on real nodes: every listener gets every acknowledged message exactly once and
//! in sequence order — on a stable ring of 12, when a forwarder of the tree is killed, and when the
//! group's root leaves — and bad group input is refused without harm.
//!
//! Listeners are server-sent-event streams (`GET /v1/groups/{g}/messages`) read on a thread each
//! (`GroupListener`). Before counting, each test sends probes until every listener has seen the
//! same one; its sequence number is the baseline, and every message after it must arrive at every
//! listener. A send the node refused (503, or no answer) is retried as a new message with a new
//! body; such an unacknowledged attempt may still have been numbered, so it may appear too, but
//! only once and only in its place. The three 12-node tests take turns (`SERIAL`), to keep 36
//! nodes from sharing two cores.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use overlay_api::{GroupLeft, GroupReceipt, GroupSummary, GroupTree, encode_path_segment, path};
use overlay_tests::{Cluster, GroupListener, Http, poll};

const NODE: &str = env!("CARGO_BIN_EXE_overlay-node-e2e");

const NODES: usize = 12;
const LISTENERS: usize = 5;
/// Ring formation of 12 nodes on a busy 2-core machine.
const RING_DEADLINE: Duration = Duration::from_secs(120);
/// Opening every stream and seeing the node a member of the group.
const ATTACH_DEADLINE: Duration = Duration::from_secs(60);
/// Finding a probe that every listener saw.
const BASELINE_DEADLINE: Duration = Duration::from_secs(90);
/// Every acknowledged message at every listener, counted from the last acknowledgement.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(90);
/// Attempts per message when the node answers 503 or not at all.
const SEND_ATTEMPTS: usize = 8;

/// The 12-node tests run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next test still deserves its turn.
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn start_ring(n: usize) -> Cluster {
    let cluster = Cluster::start(NODE, n, &[]);
    let took = cluster.wait_for_correct_ring(RING_DEADLINE);
    eprintln!("{n} nodes formed a correct ring {took:?} after the last one started");
    cluster
}

fn group_path(group: &str, rest: &str) -> String {
    format!("/v1/groups/{}{rest}", encode_path_segment(group))
}

/// What became of one message the test sent.
#[derive(Debug, Clone)]
struct Sent {
    /// Every body tried, in order (each attempt has its own).
    attempts: Vec<String>,
    /// The acknowledged attempt's sequence number and body.
    acked: Option<(u64, String)>,
    /// Why the attempts failed.
    failures: Vec<String>,
}

/// Sends message `index` to `group` through `http`, retrying as a new attempt while the node
/// answers 503 (or 504) or does not answer; any other refusal ends it.
fn send(http: &Http, group: &str, prefix: &str, index: usize, label: &str) -> Sent {
    let mut sent = Sent { attempts: Vec::new(), acked: None, failures: Vec::new() };
    for attempt in 0..SEND_ATTEMPTS {
        let body = format!("{prefix}-{index:04}-try{attempt}");
        sent.attempts.push(body.clone());
        match http.post(&path::group_send(group, Some(label)), body.as_bytes()) {
            Ok(answer) if answer.status == 201 => {
                let receipt: GroupReceipt = answer.parse().unwrap_or_else(|e| {
                    panic!("201 without a receipt ({e}): {}", String::from_utf8_lossy(&answer.body))
                });
                assert_eq!(receipt.group, group, "the receipt names the group");
                sent.acked = Some((receipt.seq, body));
                return sent;
            }
            // 503: the root was not reached in time; 504: the node itself did not answer in time.
            Ok(answer) if answer.status == 503 || answer.status == 504 => {
                sent.failures.push(format!("{} {}", answer.status, String::from_utf8_lossy(&answer.body)));
            }
            Ok(answer) => {
                sent.failures.push(format!("{} {}", answer.status, String::from_utf8_lossy(&answer.body)));
                return sent;
            }
            Err(error) => sent.failures.push(format!("{error:#}")),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    sent
}

/// Opens a stream of `group` on each of `nodes` (retrying while the node answers 503), then waits
/// until each node lists the group with `member: true`.
fn attach(cluster: &Cluster, group: &str, nodes: &[usize]) -> Vec<GroupListener> {
    let listeners: Vec<GroupListener> = nodes
        .iter()
        .map(|&i| {
            poll(&format!("a stream of {group} on node {i}"), ATTACH_DEADLINE, || {
                GroupListener::open(&cluster.nodes[i].http, group, None).map(Some)
            })
        })
        .collect();
    for &i in nodes {
        poll(&format!("node {i} is a member of {group}"), ATTACH_DEADLINE, || {
            let groups = cluster.http(i).api().groups()?.parsed.groups;
            Ok(groups.iter().any(|g| g.group == group && g.member).then_some(()))
        });
    }
    listeners
}

/// Sends probes through `via` until one reaches every listener; returns its sequence number.
/// After it, the streams must carry every message of the group.
fn baseline(cluster: &Cluster, group: &str, via: usize, listeners: &mut [GroupListener]) -> u64 {
    let deadline = Instant::now() + BASELINE_DEADLINE;
    for probe in 0.. {
        assert!(Instant::now() < deadline, "no probe reached all {} listeners of {group}", listeners.len());
        let sent = send(&cluster.http(via), group, "probe", probe, "probe");
        let Some((seq, _)) = sent.acked else {
            eprintln!("probe {probe} was not acknowledged: {:?}", sent.failures);
            continue;
        };
        let seen_by_all = eventually(Duration::from_secs(10), || {
            listeners.iter_mut().all(|listener| {
                assert!(
                    listener.ended.is_none(),
                    "the stream at {} ended: {:?}",
                    listener.addr,
                    listener.ended
                );
                listener.has_seq(seq)
            })
        });
        if seen_by_all {
            eprintln!("baseline of {group}: probe {probe} with seq {seq}");
            return seq;
        }
    }
    unreachable!("the probe loop only ends by returning or panicking")
}

/// Polls `done` every 50 ms for up to `timeout`; whether it became true.
fn eventually(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks that every listener received, after `baseline`, every acknowledged message exactly once,
/// in sequence order, with no sequence number skipped or reused and nothing the test did not send.
fn assert_delivered(listeners: &mut [GroupListener], baseline: u64, sent: &[Sent]) {
    let mut acked: BTreeMap<u64, &str> = BTreeMap::new();
    for (seq, body) in sent.iter().filter_map(|s| s.acked.as_ref()) {
        if let Some(other) = acked.insert(*seq, body) {
            panic!("seq {seq} was acknowledged twice: for {other:?} and {body:?}");
        }
    }
    let attempted: BTreeSet<&str> = sent.iter().flat_map(|s| s.attempts.iter().map(String::as_str)).collect();
    let unacked = sent.iter().filter(|s| s.acked.is_none()).count();
    assert!(!acked.is_empty(), "no message was acknowledged");
    let (&first, &last) = (acked.keys().next().expect("non-empty"), acked.keys().last().expect("non-empty"));
    assert!(first > baseline, "seq {first} was acknowledged after the baseline {baseline} was seen");
    eprintln!(
        "{} messages acknowledged (seqs {first}..={last}), {unacked} never acknowledged, {} attempts in all",
        acked.len(),
        attempted.len()
    );

    for listener in listeners.iter_mut() {
        listener.wait_until(
            &format!("every acknowledged message up to seq {last}"),
            DELIVERY_DEADLINE,
            |l| l.messages.iter().any(|m| m.seq >= last),
        );
    }

    let mut reference: Option<(String, Vec<(u64, String)>)> = None;
    for listener in listeners.iter_mut() {
        let at = listener.addr.clone();
        let seqs: Vec<u64> = listener.messages.iter().map(|m| m.seq).collect();
        assert!(
            seqs.windows(2).all(|pair| pair[0] < pair[1]),
            "listener at {at}: sequence numbers not strictly increasing (a duplicate or a reordering): {seqs:?}"
        );
        let window: Vec<(u64, String)> = listener
            .messages
            .iter()
            .filter(|m| m.seq > baseline && m.seq <= last)
            .map(|m| (m.seq, m.body.clone()))
            .collect();
        let expected: Vec<u64> = (baseline + 1..=last).collect();
        let got: Vec<u64> = window.iter().map(|(seq, _)| *seq).collect();
        if got != expected {
            let missing: Vec<u64> = expected.iter().filter(|seq| !got.contains(seq)).copied().collect();
            panic!(
                "listener at {at}: seqs {}..={last} not all there once: missing {missing:?}, gaps reported {:?}",
                baseline + 1,
                listener.gaps
            );
        }
        for (seq, body) in &acked {
            let received = window.iter().find(|(s, _)| s == seq).map(|(_, b)| b.as_str());
            assert_eq!(received, Some(*body), "listener at {at}: seq {seq}");
        }
        let mut bodies = BTreeSet::new();
        for (seq, body) in &window {
            assert!(attempted.contains(body.as_str()), "listener at {at}: seq {seq} is {body:?}, never sent");
            assert!(bodies.insert(body.clone()), "listener at {at}: {body:?} delivered twice");
        }
        let gaps: Vec<&(u64, u64)> =
            listener.gaps.iter().filter(|(from, to)| *to > baseline && *from <= last).collect();
        assert!(gaps.is_empty(), "listener at {at}: gaps reported inside the test's range: {gaps:?}");
        match &reference {
            None => reference = Some((at, window)),
            Some((first_at, first)) => {
                assert_eq!(&window, first, "listeners at {at} and {first_at} saw different messages")
            }
        }
    }
}

/// The group's tree as the first node in `via` that has one tells it.
fn tree(cluster: &Cluster, group: &str, via: &[usize]) -> anyhow::Result<GroupTree> {
    let mut last = String::from("no node asked");
    for &i in via {
        match cluster.http(i).api().group_tree(group) {
            Ok(tree) => return Ok(tree.parsed),
            Err(error) => last = format!("node {i}: {error}"),
        }
    }
    anyhow::bail!("no tree for {group}: {last}")
}

/// Index of the running node with this peer id.
fn index_of(cluster: &Cluster, peer_id: &str) -> Option<usize> {
    cluster.running().into_iter().find(|&i| cluster.nodes[i].peer_id == peer_id)
}

/// Running nodes in ring order (by ring id).
fn ring_order(cluster: &Cluster) -> Vec<usize> {
    let statuses = cluster.statuses().expect("statuses");
    let mut ring: Vec<(String, usize)> =
        statuses.iter().map(|(&i, status)| (status.ring_id.to_ascii_lowercase(), i)).collect();
    ring.sort();
    ring.into_iter().map(|(_, i)| i).collect()
}

/// The node expected to be `group`'s root: the owner of the group's id, which a lookup of the
/// same name finds (a group's id is the SHA-1 of its name, like a key's). Only a hint for placing
/// listeners; the tree says who the root really is.
fn predicted_root(cluster: &Cluster, group: &str) -> Option<usize> {
    let owner = cluster.http(0).api().lookup(group).ok()?.parsed.owner?;
    index_of(cluster, &owner.peer_id)
}

/// Listener nodes for a group rooted at `root`: the three nodes after the root in ring order and
/// the two before it. The ones after it reach the root through fingers that point across the ring,
/// so the tree gets forwarders that are not members; none is on the root's node.
fn listener_nodes(cluster: &Cluster, root: Option<usize>) -> Vec<usize> {
    let ring = ring_order(cluster);
    let Some(at) = root.and_then(|root| ring.iter().position(|&i| i == root)) else {
        return ring.into_iter().skip(1).step_by(2).take(LISTENERS).collect();
    };
    let n = ring.len();
    [1, 2, 3, n - 1, n - 2].into_iter().map(|offset| ring[(at + offset) % n]).collect()
}

/// Waits until the tree of `group` is complete and shows every listener node as a member.
fn settled_tree(cluster: &Cluster, group: &str, listener_nodes: &[usize]) -> GroupTree {
    let members: BTreeSet<&str> = listener_nodes.iter().map(|&i| cluster.nodes[i].peer_id.as_str()).collect();
    poll(&format!("the tree of {group} shows all {} listeners", members.len()), ATTACH_DEADLINE, || {
        let tree = tree(cluster, group, &cluster.running())?;
        let shown: BTreeSet<&str> =
            tree.nodes.iter().filter(|n| n.member).map(|n| n.node.peer_id.as_str()).collect();
        let all_there = members.iter().all(|peer| shown.contains(peer));
        Ok((tree.complete && all_there).then(|| tree.clone()))
    })
}

/// Sends `count` messages from a background thread through `senders` in turn (about 40 per
/// second), while `during` runs on this thread once `trigger_after` of them are acknowledged.
/// Returns what became of each message.
fn send_while(
    cluster: &mut Cluster,
    group: &str,
    senders: &[usize],
    count: usize,
    trigger_after: usize,
    during: impl FnOnce(&mut Cluster),
) -> Vec<Sent> {
    let clients: Vec<(usize, Http)> = senders.iter().map(|&i| (i, cluster.http(i))).collect();
    let acked = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            (0..count)
                .map(|index| {
                    let (node, http) = &clients[index % clients.len()];
                    let sent = send(http, group, "msg", index, &format!("node-{node}"));
                    if sent.acked.is_some() {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(25));
                    sent
                })
                .collect::<Vec<Sent>>()
        });
        let triggered = eventually(Duration::from_secs(120), || {
            acked.load(Ordering::Relaxed) >= trigger_after || sender.is_finished()
        });
        assert!(triggered, "{trigger_after} messages were not acknowledged within 120 s");
        during(cluster);
        sender.join().expect("the sender thread")
    })
}

#[test]
fn twelve_nodes_five_listeners_receive_every_message_once_in_order() {
    let _turn = serial();
    let cluster = start_ring(NODES);
    let group = "e2e-chat";
    let nodes = listener_nodes(&cluster, predicted_root(&cluster, group));
    let mut listeners = attach(&cluster, group, &nodes);
    let baseline = baseline(&cluster, group, 0, &mut listeners);

    // 200 messages, through all 12 nodes in turn, four in flight at a time.
    const MESSAGES: usize = 200;
    const IN_FLIGHT: usize = 4;
    let clients: Vec<Http> = (0..NODES).map(|i| cluster.http(i)).collect();
    let sent: Vec<Sent> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..IN_FLIGHT)
            .map(|worker| {
                let clients = &clients;
                scope.spawn(move || {
                    (worker..MESSAGES)
                        .step_by(IN_FLIGHT)
                        .map(|index| {
                            let node = index % NODES;
                            send(&clients[node], group, "chat", index, &format!("node-{node}"))
                        })
                        .collect::<Vec<Sent>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|worker| worker.join().expect("sender thread")).collect()
    });
    let refused: Vec<&Sent> = sent.iter().filter(|s| s.acked.is_none()).collect();
    assert!(
        refused.is_empty(),
        "{} of {MESSAGES} messages never acknowledged, e.g. {:?}",
        refused.len(),
        refused[0]
    );
    assert_delivered(&mut listeners, baseline, &sent);

    // The labels and timestamps are what the senders gave.
    let started_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis()
            as u64
            - 600_000;
    for message in listeners[0].messages.iter().filter(|m| m.seq > baseline) {
        assert_eq!(message.group, group);
        assert!(message.from.starts_with("node-"), "sender label {:?}", message.from);
        assert!(message.ts > started_ms, "ts {} is not a recent time in ms since the epoch", message.ts);
    }
}

#[test]
fn a_killed_forwarder_does_not_lose_or_reorder_messages() {
    let _turn = serial();
    let mut cluster = start_ring(NODES);

    // A group whose tree has a forwarder that is neither a member nor the root; the name decides
    // where the root is, so try a few.
    let mut found = None;
    // (Sixteen names all failing happened once in many runs: the trees depend on the peer ids.)
    for attempt in 0..48 {
        let group = format!("e2e-forward-{attempt}");
        let nodes = listener_nodes(&cluster, predicted_root(&cluster, &group));
        let listeners = attach(&cluster, &group, &nodes);
        let tree = settled_tree(&cluster, &group, &nodes);
        let root = tree.root.peer_id;
        let forwarders: Vec<(usize, usize)> = tree
            .nodes
            .iter()
            .filter(|n| n.role == "forwarder" && !n.member && n.node.peer_id != root)
            .filter_map(|n| Some((n.children.len(), index_of(&cluster, &n.node.peer_id)?)))
            .collect();
        eprintln!("{group}: root {root}, non-member forwarders (children, node) {forwarders:?}");
        if let Some(&(_, victim)) = forwarders.iter().max() {
            found = Some((group, nodes, listeners, victim));
            break;
        }
    }
    let Some((group, nodes, mut listeners, victim)) = found else {
        panic!("no group of 48 tried had a forwarder that is not a member and not the root");
    };
    assert!(!nodes.contains(&victim), "a forwarder that is not a member hosts no listener");
    let senders: Vec<usize> = (0..NODES).filter(|&i| i != victim).collect();
    let baseline = baseline(&cluster, &group, senders[0], &mut listeners);

    let sent = send_while(&mut cluster, &group, &senders, 150, 50, |cluster| {
        eprintln!("killing forwarder node {victim} (SIGKILL)");
        cluster.kill(victim);
    });
    let failures: Vec<&String> = sent.iter().flat_map(|s| &s.failures).collect();
    eprintln!("{} failed attempts around the crash, e.g. {:?}", failures.len(), failures.first());
    assert_delivered(&mut listeners, baseline, &sent);
}

#[test]
fn the_group_carries_on_when_the_roots_node_leaves() {
    let _turn = serial();
    let mut cluster = start_ring(NODES);

    // A group whose root is not on a listener's node (the lookup only predicts the root).
    let mut found = None;
    for attempt in 0..16 {
        let group = format!("e2e-root-{attempt}");
        let nodes = listener_nodes(&cluster, predicted_root(&cluster, &group));
        let listeners = attach(&cluster, &group, &nodes);
        let tree = settled_tree(&cluster, &group, &nodes);
        let root_peer = tree.root.peer_id;
        let root = index_of(&cluster, &root_peer).expect("the root is a running node");
        if !nodes.contains(&root) {
            found = Some((group, listeners, root, root_peer));
            break;
        }
        eprintln!("{group}: the root is on listener node {root}; trying another name");
    }
    let Some((group, mut listeners, root, root_peer)) = found else {
        panic!("no group of 16 tried had its root away from the listeners");
    };
    let senders: Vec<usize> = (0..NODES).filter(|&i| i != root).collect();
    let baseline = baseline(&cluster, &group, senders[0], &mut listeners);

    let sent = send_while(&mut cluster, &group, &senders, 150, 50, |cluster| {
        eprintln!("stopping the root, node {root} (SIGTERM)");
        let (took, status) = cluster.terminate(root, Duration::from_secs(30));
        assert!(status.success(), "a graceful leave exits 0, got {status}:\n{}", cluster.log(root));
        eprintln!("the root left in {took:?}");
    });
    assert_delivered(&mut listeners, baseline, &sent);

    let running = cluster.running();
    let new_root = poll("a new root for the group", ATTACH_DEADLINE, || {
        let tree = tree(&cluster, &group, &running)?;
        let peer = tree.root.peer_id;
        Ok((!peer.is_empty() && peer != root_peer).then_some(peer))
    });
    assert!(index_of(&cluster, &new_root).is_some(), "the new root {new_root} is a running node");
}

#[test]
fn bad_group_input_is_refused_and_nothing_crashes() {
    let cluster = start_ring(3);
    let http = cluster.http(1);

    let mut not_json = Vec::new();
    let mut expect_error = |method: &str, path: &str, body: &[u8], statuses: &[u16]| {
        let answer = match method {
            "GET" => http.get(path),
            _ => http.post(path, body),
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
        assert!(
            statuses.contains(&answer.status),
            "{method} {path} answered {} ({}), expected one of {statuses:?}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
        // Errors are `{"error": "..."}`, unknown routes included. Checked at the end, so that a
        // body in the wrong shape does not hide whether the node survived.
        let is_error_json = answer.json().is_ok_and(|json| json["error"].is_string());
        if !is_error_json {
            not_json.push(format!(
                "{method} {path} -> {} {:?}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ));
        }
    };

    let too_long = "a".repeat(129);
    let too_long_multibyte = format!("{}a", "é".repeat(64));
    let bad_names: Vec<String> = vec![
        encode_path_segment(&too_long),
        encode_path_segment(&too_long_multibyte),
        "x".repeat(4096),
        "bad%0Aname".to_string(),
        "%00".to_string(),
        "bell%07".to_string(),
        "esc%1B%5B2J".to_string(),
        "del%7F".to_string(),
        "tab%09".to_string(),
        "%FF%FE".to_string(), // not UTF-8
    ];
    for name in &bad_names {
        let base = format!("/v1/groups/{name}");
        expect_error("POST", &format!("{base}/join"), b"", &[400]);
        expect_error("POST", &format!("{base}/leave"), b"", &[400]);
        expect_error("POST", &format!("{base}/messages"), b"hello", &[400]);
        expect_error("GET", &format!("{base}/messages"), b"", &[400]);
        expect_error("GET", &format!("{base}/tree"), b"", &[400]);
    }
    // An empty name is no path segment at all: refused either as a bad name or an unknown route.
    expect_error("POST", "/v1/groups//join", b"", &[400, 404]);
    expect_error("POST", "/v1/groups//messages", b"hello", &[400, 404]);
    expect_error("GET", "/v1/groups/e2e-ok/nonsense", b"", &[404]);

    // The largest name is fine: 128 bytes, in ASCII and in two-byte characters.
    for name in ["b".repeat(128), "é".repeat(64)] {
        let answer = http.post(&group_path(&name, "/join"), b"").expect("join");
        assert_eq!(answer.status, 200, "a 128-byte name: {}", String::from_utf8_lossy(&answer.body));
        let joined: GroupSummary = answer.parse().expect("a group document");
        assert_eq!((joined.group.as_str(), joined.member), (name.as_str(), true));
        let answer = http.post(&group_path(&name, "/leave"), b"").expect("leave");
        assert_eq!(answer.status, 200);
        assert!(!answer.parse::<GroupLeft>().expect("a leave document").member);
    }

    let group = "e2e-bad-input";
    let messages = group_path(group, "/messages");
    expect_error("POST", &messages, &vec![b'x'; 64 * 1024 + 1], &[413]);
    expect_error("POST", &messages, &vec![b'x'; 1 << 20], &[413]);
    expect_error("POST", &messages, &[0xff, 0xfe, b'h', b'i'], &[400]);
    expect_error("POST", &messages, b"caf\xc3", &[400]); // a truncated character
    for from in ["notanumber", "-1", "1.5", "99999999999999999999999"] {
        expect_error("GET", &format!("{messages}?from={from}"), b"", &[400]);
    }

    // Every node still answers, and a valid group works end to end, including a 64 KiB message.
    for i in 0..3 {
        let status = cluster.http(i).status().unwrap_or_else(|e| panic!("node {i} after bad input: {e:#}"));
        assert!(status.member, "node {i} is still a ring member");
    }
    let mut listeners = attach(&cluster, group, &[2]);
    let baseline = baseline(&cluster, group, 0, &mut listeners);
    let largest = "y".repeat(64 * 1024);
    let answer = cluster.http(0).post(&messages, largest.as_bytes()).expect("send");
    assert_eq!(answer.status, 201, "a 64 KiB message: {}", String::from_utf8_lossy(&answer.body));
    let seq = answer.parse::<GroupReceipt>().expect("a receipt").seq;
    assert!(seq > baseline, "seq {seq} after the baseline {baseline}");
    listeners[0]
        .wait_until("the 64 KiB message", DELIVERY_DEADLINE, |l| l.messages.iter().any(|m| m.seq == seq));
    let received = listeners[0].messages.iter().find(|m| m.seq == seq).expect("just seen");
    assert_eq!(received.body, largest);

    assert!(
        not_json.is_empty(),
        "error answers without an {{\"error\": ...}} body:\n{}",
        not_json.join("\n")
    );
}

/// Listeners that ask to replay (`?from=`) on a node that is not yet a member, next to one that
/// does not: each gets exactly what it asked for — the replay from the root's history, then the
/// live messages — once each and in order, and the listener without `from` gets only what is new.
#[test]
fn listeners_replaying_from_history_get_their_own_range_once_in_order() {
    let _turn = serial();
    let cluster = start_ring(6);
    let group = "e2e-replay";
    // A member elsewhere keeps the group's tree (and the root's history) alive.
    poll("a member of the group", ATTACH_DEADLINE, || {
        let answer = cluster.http(0).post(&group_path(group, "/join"), b"")?;
        Ok((answer.status == 200).then_some(()))
    });
    let first: Vec<Sent> = (0..30).map(|i| send(&cluster.http(1 + i % 5), group, "old", i, "t")).collect();
    let acked_first: Vec<u64> = first.iter().filter_map(|s| s.acked.as_ref().map(|(seq, _)| *seq)).collect();
    assert_eq!(acked_first.len(), 30, "every early message acknowledged: {first:?}");
    let last_old = *acked_first.iter().max().expect("30 seqs");
    // Node 4 is not a member: its listeners' replays must come from the root.
    let mut from_start = poll("a replaying stream", ATTACH_DEADLINE, || {
        GroupListener::open(&cluster.nodes[4].http, group, Some(1)).map(Some)
    });
    let mut live_only = GroupListener::open(&cluster.nodes[4].http, group, None).expect("a live stream");
    let mut from_middle =
        GroupListener::open(&cluster.nodes[4].http, group, Some(last_old - 9)).expect("a second replay");
    let later: Vec<Sent> = (0..5).map(|i| send(&cluster.http(2), group, "new", i, "t")).collect();
    let acked_later: Vec<u64> = later.iter().filter_map(|s| s.acked.as_ref().map(|(seq, _)| *seq)).collect();
    assert_eq!(acked_later.len(), 5, "every later message acknowledged: {later:?}");
    let last = *acked_later.iter().max().expect("5 seqs");
    for (listener, first_seq) in [(&mut from_start, 1), (&mut from_middle, last_old - 9)] {
        listener.wait_until("the replay and the live messages", DELIVERY_DEADLINE, |l| {
            l.messages.last().is_some_and(|m| m.seq >= last)
        });
        let seqs: Vec<u64> = listener.messages.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            (first_seq..=last).collect::<Vec<_>>(),
            "from {first_seq}: every number once, in order"
        );
        assert!(listener.gaps.is_empty(), "nothing is missing from history: {:?}", listener.gaps);
    }
    live_only.wait_until("the live messages", DELIVERY_DEADLINE, |l| {
        l.messages.last().is_some_and(|m| m.seq >= last)
    });
    // Without `from`, a listener starts where its node's delivery starts. The node joined the tree
    // for the first replaying listener, just after the last early message was acknowledged; the
    // head its parent reported may lag by a message or two still on their way down, so those may
    // show up. What must not show up is the other listeners' replays: from 1 or from the middle.
    let seqs: Vec<u64> = live_only.messages.iter().map(|m| m.seq).collect();
    assert!(
        seqs.first().is_some_and(|&s| s > last_old - 9)
            && seqs.last() == Some(&last)
            && seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "a listener without from gets what its node delivers from when it attached, in order: {seqs:?}"
    );
}
