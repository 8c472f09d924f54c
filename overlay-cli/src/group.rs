//! `overlay group ...`: join, leave, send, listen, tree and list, over the node's
//! `/v1/groups` API.
//!
//! Like the key/value commands, each renders the node's answer as text, or with `--json` prints
//! the node's own JSON unchanged. `listen` is the one long-running command: it prints one line
//! per message as it arrives and flushes after each, so it can feed a pipe; when the node ends
//! the stream it fails with the reason, because a listener that stops silently looks like a
//! quiet group.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, IsTerminal, Write};

use anyhow::{Context, Result, bail};
use overlay_api::{ApiError, GroupEvent, GroupTree, TreeNode};

use crate::cli::{GlobalArgs, GroupCommand, GroupListenArgs, GroupSendArgs};
use crate::commands;
use crate::output::{self, Table};

pub(crate) fn run(global: &GlobalArgs, command: &GroupCommand, out: &mut impl Write) -> Result<()> {
    match command {
        GroupCommand::Join { group } => join(global, group, out),
        GroupCommand::Leave { group } => leave(global, group, out),
        GroupCommand::Send(args) => send(global, args, out),
        GroupCommand::Listen(args) => listen(global, args, out),
        GroupCommand::Tree { group } => tree(global, group, out),
        GroupCommand::List => list(global, out),
    }
}

fn join(global: &GlobalArgs, group: &str, out: &mut impl Write) -> Result<()> {
    let answer = commands::client(global)?.join_group(group)?;
    if global.json {
        return Ok(output::write_json(out, &answer.raw)?);
    }
    let role = &answer.parsed.role;
    writeln!(out, "joined group {} (role: {role})", printable(&answer.parsed.group))?;
    Ok(())
}

fn leave(global: &GlobalArgs, group: &str, out: &mut impl Write) -> Result<()> {
    let answer = commands::client(global)?.leave_group(group)?;
    if global.json {
        return Ok(output::write_json(out, &answer.raw)?);
    }
    let group = printable(&answer.parsed.group);
    if answer.parsed.member {
        // The node still counts itself a member: a `group listen` keeps it one.
        writeln!(out, "left group {group}, but the node is still a member (a listener is attached)")?;
    } else {
        writeln!(out, "left group {group}")?;
    }
    Ok(())
}

fn send(global: &GlobalArgs, args: &GroupSendArgs, out: &mut impl Write) -> Result<()> {
    let message = if args.message == "-" {
        let mut message =
            commands::read_bounded(io::stdin().lock()).context("reading the message from stdin")?;
        strip_one_line_ending(&mut message);
        message
    } else {
        args.message.clone().into_bytes()
    };
    let receipt = commands::client(global)?.send_to_group(&args.group, &message, args.from.as_deref())?;
    if global.json {
        return Ok(output::write_json(out, &receipt.raw)?);
    }
    writeln!(out, "sent seq {} to {}", receipt.parsed.seq, printable(&receipt.parsed.group))?;
    Ok(())
}

/// `echo hi | overlay group send g -` sends `hi`, not `hi\n`: the shell's line ending is not
/// part of a chat message. Only one is removed, so deliberate blank lines survive.
fn strip_one_line_ending(message: &mut Vec<u8>) {
    if message.ends_with(b"\r\n") {
        message.truncate(message.len() - 2);
    } else if message.ends_with(b"\n") {
        message.truncate(message.len() - 1);
    }
}

fn listen(global: &GlobalArgs, args: &GroupListenArgs, out: &mut impl Write) -> Result<()> {
    let client = commands::client(global)?;
    let mut stream = client.group_messages(&args.group, args.from, None)?;
    if io::stderr().is_terminal() {
        eprintln!("listening to group {} via {} (Ctrl-C to stop)", printable(&args.group), client.base_url());
    }
    print_events(&args.group, || stream.next_event(), global.json, out, &mut io::stderr().lock())
}

/// Prints every event `next` yields until it fails or the stream ends (which is an error too:
/// the node never ends a stream on its own while it runs). Messages go to `out`; in human form,
/// gaps and unreadable events go to `err`.
fn print_events(
    group: &str,
    mut next: impl FnMut() -> Result<Option<GroupEvent>, ApiError>,
    json: bool,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<()> {
    let mut received = 0u64;
    let mut last_seq = None;
    loop {
        let event = next().with_context(|| {
            format!("listening to group {} ({})", printable(group), summary(received, last_seq))
        })?;
        match event {
            None => bail!(
                "the node ended the stream of group {} ({})",
                printable(group),
                summary(received, last_seq)
            ),
            Some(GroupEvent::Message(message)) => {
                received += 1;
                let renumbered = last_seq.is_some_and(|last| message.parsed.seq <= last);
                last_seq = Some(message.parsed.seq);
                if renumbered && !json {
                    // A partition healed and this node had followed the other side's numbering:
                    // what follows is new here, though its numbers were seen (JSON lines carry
                    // the epoch instead).
                    out.flush()?;
                    writeln!(
                        err,
                        "-- after a partition healed, the group is numbered anew from {}: what follows was published on the other side --",
                        message.parsed.seq
                    )?;
                }
                if json {
                    output::write_json(out, &message.raw)?;
                } else {
                    let message = message.parsed;
                    writeln!(
                        out,
                        "[{}] {}: {}",
                        message.seq,
                        printable(&message.from),
                        printable(&message.body)
                    )?;
                }
                out.flush()?;
            }
            Some(GroupEvent::Error(reason)) => bail!(
                "the node ended the stream of group {}: {} ({})",
                printable(group),
                printable(&reason),
                summary(received, last_seq)
            ),
            Some(GroupEvent::Gap(gap)) => {
                let gap = gap.parsed;
                if json {
                    let line = serde_json::json!({
                        "group": gap.group,
                        "gap": { "from": gap.from, "to": gap.to },
                    });
                    output::write_json(out, &line)?;
                    out.flush()?;
                } else {
                    // Where a message line would be, so the missing range is seen in context.
                    out.flush()?;
                    writeln!(err, "-- messages {}..{} are no longer available --", gap.from, gap.to)?;
                }
            }
            Some(GroupEvent::Unreadable { event, reason }) => {
                // One malformed event should not end a listener that may run for days.
                writeln!(err, "overlay: skipped an unreadable {event:?} event: {reason}")?;
            }
        }
    }
}

fn summary(received: u64, last_seq: Option<u64>) -> String {
    let plural = if received == 1 { "" } else { "s" };
    match last_seq {
        Some(seq) => format!("{received} message{plural} received, the last seq {seq}"),
        None => format!("{received} message{plural} received"),
    }
}

/// Text from other nodes with control characters escaped (`\n`, `\u{1b}`): one message stays
/// one line, and a sender cannot drive the reader's terminal. `--json` has the exact text.
fn printable(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            shown.extend(c.escape_debug());
        } else {
            shown.push(c);
        }
    }
    shown
}

fn tree(global: &GlobalArgs, group: &str, out: &mut impl Write) -> Result<()> {
    let tree = commands::client(global)?.group_tree(group)?;
    if global.json {
        return Ok(output::write_json(out, &tree.raw)?);
    }
    Ok(write_tree(&tree.parsed, out)?)
}

/// What a node is in the tree: `root`, `forwarder`, `member`, or a combination
/// (`member+forwarder` is a member with children; `root+member` a root with a listener).
fn role_label(node: &TreeNode) -> String {
    match node.role.as_str() {
        "root" if node.member => "root+member".to_owned(),
        "forwarder" if node.member => "member+forwarder".to_owned(),
        "member" if !node.children.is_empty() => "member+forwarder".to_owned(),
        "member" | "forwarder" | "root" => node.role.clone(),
        other => printable(other),
    }
}

fn describe(node: &TreeNode) -> String {
    format!(
        "{} {}  {}  depth {}",
        output::short_ring_id(&node.node.ring_id),
        output::short_peer_id(&node.node.peer_id),
        role_label(node),
        node.depth
    )
}

/// Draws the tree from the root down with box-drawing branches, children in the order the node
/// listed them. Walks with an explicit stack (no recursion), visits each node once, and lists
/// what the walk did not reach (nodes whose parent does not list them, mid-repair) at the end.
pub(crate) fn write_tree(tree: &GroupTree, out: &mut impl Write) -> io::Result<()> {
    let by_peer: BTreeMap<&str, &TreeNode> =
        tree.nodes.iter().map(|node| (node.node.peer_id.as_str(), node)).collect();
    let short_group_id: String = tree.group_id.chars().take(10).collect();
    writeln!(
        out,
        "group {} (id {short_group_id}…), root {}",
        printable(&tree.group),
        output::short_ring_id(&tree.root.ring_id)
    )?;

    let mut shown: BTreeSet<&str> = BTreeSet::new();
    // (peer id, what precedes its line, what precedes its children's lines)
    let mut stack: Vec<(&str, String, String)> =
        vec![(tree.root.peer_id.as_str(), String::new(), String::new())];
    while let Some((peer, line_prefix, child_prefix)) = stack.pop() {
        let Some(node) = by_peer.get(peer) else {
            let ring = if peer == tree.root.peer_id {
                output::short_ring_id(&tree.root.ring_id)
            } else {
                "?".repeat(10)
            };
            writeln!(out, "{line_prefix}{ring} {}  (did not answer)", output::short_peer_id(peer))?;
            continue;
        };
        if !shown.insert(peer) {
            writeln!(out, "{line_prefix}{} (shown above: a loop in the tree)", output::short_peer_id(peer))?;
            continue;
        }
        writeln!(out, "{line_prefix}{}", describe(node))?;
        let children: Vec<&str> = node.children.iter().map(String::as_str).collect();
        for (position, child) in children.iter().enumerate().rev() {
            let last = position + 1 == children.len();
            let branch = if last { "└─ " } else { "├─ " };
            let continuation = if last { "   " } else { "│  " };
            stack.push((child, format!("{child_prefix}{branch}"), format!("{child_prefix}{continuation}")));
        }
    }

    let detached: Vec<&TreeNode> =
        tree.nodes.iter().filter(|node| !shown.contains(node.node.peer_id.as_str())).collect();
    if !detached.is_empty() {
        writeln!(out, "not reached from the root:")?;
        for node in &detached {
            let parent = node.parent.as_deref().map_or_else(|| "none".to_owned(), output::short_peer_id);
            writeln!(out, "  {}  (parent {parent})", describe(node))?;
        }
    }

    let count = tree.nodes.len();
    let max_depth = tree.nodes.iter().map(|node| node.depth).max().unwrap_or(0);
    let members = tree.nodes.iter().filter(|node| node.member).count();
    writeln!(
        out,
        "{count} node{}, max depth {max_depth}, {members} member{}",
        if count == 1 { "" } else { "s" },
        if members == 1 { "" } else { "s" }
    )?;
    if !tree.complete {
        writeln!(out, "(incomplete: some nodes did not answer)")?;
    }
    Ok(())
}

fn list(global: &GlobalArgs, out: &mut impl Write) -> Result<()> {
    let list = commands::client(global)?.groups()?;
    if global.json {
        return Ok(output::write_json(out, &list.raw)?);
    }
    if list.parsed.groups.is_empty() {
        writeln!(out, "this node takes part in no group")?;
        return Ok(());
    }
    let mut table =
        Table::new(["group", "group id", "role", "member", "listeners", "head", "parent", "children"]);
    for group in &list.parsed.groups {
        table.row([
            printable(&group.group),
            output::short_ring_id(&group.group_id),
            printable(&group.role),
            if group.member { "yes" } else { "no" }.to_owned(),
            group.listeners.to_string(),
            group.head_seq.to_string(),
            group.parent.as_ref().map_or_else(
                || "-".to_owned(),
                |parent| {
                    format!(
                        "{} {}",
                        output::short_ring_id(&parent.ring_id),
                        output::short_peer_id(&parent.peer_id)
                    )
                },
            ),
            group.children.len().to_string(),
        ]);
    }
    Ok(table.write(out)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use overlay_api::{Document, GroupGap, GroupMessage};

    fn render(tree: &serde_json::Value) -> String {
        let tree: GroupTree = serde_json::from_value(tree.clone()).expect("a tree document");
        let mut out = Vec::new();
        write_tree(&tree, &mut out).expect("writing to a Vec cannot fail");
        String::from_utf8(out).expect("UTF-8")
    }

    fn node(ring: &str, peer: &str) -> serde_json::Value {
        serde_json::json!({ "peer_id": peer, "ring_id": ring, "addr": "/ip4/127.0.0.1/tcp/1" })
    }

    /// A root with two children, one of which forwards to a member two levels down.
    fn chat_tree() -> serde_json::Value {
        let root = node("87d275828f0000000000000000000000000000aa", "12D3KooWrootrootsy6rDbth");
        let fwd = node("20f0f011d60000000000000000000000000000bb", "12D3KooWfwdfwdfSAagUjzw");
        let deep = node("228ad608800000000000000000000000000000cc", "12D3KooWdeepdeepej9LXdET");
        let both = node("2ee4ca1b0e0000000000000000000000000000dd", "12D3KooWbothboth1LT7sYXa");
        let leaf = node("3000000000000000000000000000000000000eee", "12D3KooWleafleafLEAFleaf");
        serde_json::json!({
            "group": "chat",
            "group_id": "1f3a000000000000000000000000000000000000",
            "root": root,
            "complete": true,
            "nodes": [
                { "node": root, "parent": null, "depth": 0, "role": "root", "member": false,
                  "children": ["12D3KooWfwdfwdfSAagUjzw", "12D3KooWbothboth1LT7sYXa"] },
                { "node": fwd, "parent": "12D3KooWrootrootsy6rDbth", "depth": 1, "role": "forwarder",
                  "member": false, "children": ["12D3KooWdeepdeepej9LXdET"] },
                { "node": both, "parent": "12D3KooWrootrootsy6rDbth", "depth": 1, "role": "forwarder",
                  "member": true, "children": ["12D3KooWleafleafLEAFleaf"] },
                { "node": deep, "parent": "12D3KooWfwdfwdfSAagUjzw", "depth": 2, "role": "member",
                  "member": true, "children": [] },
                { "node": leaf, "parent": "12D3KooWbothboth1LT7sYXa", "depth": 2, "role": "member",
                  "member": true, "children": [] },
            ],
        })
    }

    #[test]
    fn a_tree_is_drawn_from_the_root_with_branches() {
        assert_eq!(
            render(&chat_tree()),
            "\
group chat (id 1f3a000000…), root 87d275828f
87d275828f …sy6rDbth  root  depth 0
├─ 20f0f011d6 …SAagUjzw  forwarder  depth 1
│  └─ 228ad60880 …ej9LXdET  member  depth 2
└─ 2ee4ca1b0e …1LT7sYXa  member+forwarder  depth 1
   └─ 3000000000 …LEAFleaf  member  depth 2
5 nodes, max depth 2, 3 members
"
        );
    }

    #[test]
    fn silent_nodes_loops_and_unreached_nodes_are_shown_not_hidden() {
        let mut tree = chat_tree();
        tree["complete"] = false.into();
        let nodes = tree["nodes"].as_array_mut().expect("nodes");
        // The deep member lists the root as its child (a loop), the forwarder names a child
        // that did not answer, and the leaf's parent no longer lists it.
        nodes[3]["children"] = serde_json::json!(["12D3KooWrootrootsy6rDbth"]);
        nodes[1]["children"] = serde_json::json!(["12D3KooWdeepdeepej9LXdET", "12D3KooWgonegonegoneGONE"]);
        nodes[2]["children"] = serde_json::json!([]);
        nodes[2]["member"] = true.into();
        nodes[2]["role"] = "member".into();
        assert_eq!(
            render(&tree),
            "\
group chat (id 1f3a000000…), root 87d275828f
87d275828f …sy6rDbth  root  depth 0
├─ 20f0f011d6 …SAagUjzw  forwarder  depth 1
│  ├─ 228ad60880 …ej9LXdET  member+forwarder  depth 2
│  │  └─ …sy6rDbth (shown above: a loop in the tree)
│  └─ ?????????? …goneGONE  (did not answer)
└─ 2ee4ca1b0e …1LT7sYXa  member  depth 1
not reached from the root:
  3000000000 …LEAFleaf  member  depth 2  (parent …1LT7sYXa)
5 nodes, max depth 2, 3 members
(incomplete: some nodes did not answer)
"
        );
    }

    #[test]
    fn a_root_that_is_also_a_member_says_so() {
        let mut tree = chat_tree();
        tree["nodes"][0]["member"] = true.into();
        assert!(render(&tree).lines().nth(1).expect("root line").ends_with("root+member  depth 0"));
    }

    fn message(seq: u64, from: &str, body: &str) -> GroupEvent {
        let raw = serde_json::json!({ "group": "chat", "seq": seq, "from": from, "body": body, "ts": 1_763_877_600_123u64 });
        let parsed: GroupMessage = serde_json::from_value(raw.clone()).expect("message");
        GroupEvent::Message(Document { parsed, raw })
    }

    fn gap(from: u64, to: u64) -> GroupEvent {
        let raw = serde_json::json!({ "from": from, "group": "chat", "to": to });
        let parsed: GroupGap = serde_json::from_value(raw.clone()).expect("gap");
        GroupEvent::Gap(Document { parsed, raw })
    }

    /// Runs `print_events` over `events` followed by the end of the stream.
    fn listen_to(events: Vec<GroupEvent>, json: bool) -> (String, String, String) {
        let mut events = events.into_iter();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let result = print_events("chat", || Ok(events.next()), json, &mut out, &mut err);
        let error = format!("{:#}", result.expect_err("the end of the stream is an error"));
        (String::from_utf8(out).expect("UTF-8"), String::from_utf8(err).expect("UTF-8"), error)
    }

    #[test]
    fn listening_prints_one_line_per_message_and_gaps_on_stderr() {
        let events = vec![
            gap(3, 9),
            message(10, "alice", "hello"),
            message(11, "bob", "two\nlines \u{1b}[2J"),
            GroupEvent::Unreadable { event: "message".to_owned(), reason: "missing field `seq`".to_owned() },
        ];
        let (out, err, error) = listen_to(events, false);
        assert_eq!(out, "[10] alice: hello\n[11] bob: two\\nlines \\u{1b}[2J\n");
        assert!(err.starts_with("-- messages 3..9 are no longer available --\n"), "{err}");
        assert!(err.contains("unreadable \"message\" event: missing field `seq`"), "{err}");
        assert_eq!(error, "the node ended the stream of group chat (2 messages received, the last seq 11)");
    }

    #[test]
    fn messages_numbered_anew_after_a_heal_are_printed_under_a_notice() {
        let events = vec![
            message(5, "alice", "ours"),
            message(6, "alice", "ours too"),
            message(5, "bob", "theirs"),
            message(7, "bob", "next"),
        ];
        let (out, err, _) = listen_to(events, false);
        assert_eq!(out, "[5] alice: ours\n[6] alice: ours too\n[5] bob: theirs\n[7] bob: next\n");
        assert_eq!(
            err,
            "-- after a partition healed, the group is numbered anew from 5: what follows was published on \
             the other side --\n"
        );
    }

    #[test]
    fn listening_with_json_prints_the_nodes_objects_and_gap_objects() {
        let (out, err, _) = listen_to(vec![message(1, "alice", "hi"), gap(2, 4)], true);
        let lines: Vec<serde_json::Value> =
            out.lines().map(|line| serde_json::from_str(line).expect("one JSON object per line")).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["seq"], 1);
        assert_eq!(lines[0]["body"], "hi");
        assert_eq!(lines[0]["from"], "alice");
        assert_eq!(lines[0]["group"], "chat");
        assert_eq!(lines[0]["ts"], 1_763_877_600_123u64);
        assert_eq!(lines[1]["gap"], serde_json::json!({ "from": 2, "to": 4 }));
        assert_eq!(lines[1]["group"], "chat");
        assert!(err.is_empty());
    }

    #[test]
    fn an_error_event_ends_listening_with_the_nodes_reason() {
        let (out, _, error) = listen_to(
            vec![
                message(7, "a", "x"),
                GroupEvent::Error("this listener fell 9 messages behind; reconnect with ?from=8".to_owned()),
            ],
            false,
        );
        assert_eq!(out, "[7] a: x\n");
        assert_eq!(
            error,
            "the node ended the stream of group chat: this listener fell 9 messages behind; \
             reconnect with ?from=8 (1 message received, the last seq 7)"
        );
    }

    #[test]
    fn a_broken_stream_fails_with_what_was_received() {
        let mut events = vec![
            Ok(Some(message(5, "a", "x"))),
            Err(ApiError::Protocol { url: "u".to_owned(), reason: "the stream broke: reset".to_owned() }),
        ]
        .into_iter();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let result =
            print_events("chat", || events.next().expect("enough events"), false, &mut out, &mut err);
        let error = format!("{:#}", result.expect_err("a broken stream is an error"));
        assert!(
            error.starts_with("listening to group chat (1 message received, the last seq 5): "),
            "{error}"
        );
        assert!(error.ends_with("the stream broke: reset"), "{error}");
    }

    #[test]
    fn one_line_ending_is_removed_from_stdin_messages() {
        for (input, expected) in
            [(&b"hi\n"[..], &b"hi"[..]), (b"hi\r\n", b"hi"), (b"hi\n\n", b"hi\n"), (b"hi", b"hi"), (b"", b"")]
        {
            let mut message = input.to_vec();
            strip_one_line_ending(&mut message);
            assert_eq!(message, expected);
        }
    }
}
