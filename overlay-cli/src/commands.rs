//! The one-shot client subcommands — put, get, delete, lookup, status, ring — and the choice
//! of which node they talk to.
//!
//! Each calls the node's API once and renders the answer: text for people by default, and
//! with `--json` the node's own JSON document unchanged (see `overlay_api::Document`). Only where the
//! node answers with something other than JSON (a raw value, an empty 204) does the CLI make
//! up a small object, using the node's field names.

use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use overlay_api::{Client, Condition, Consistency, NodeInfo, PutOutcome, RingMember};

use crate::cli::{GlobalArgs, PutArgs};
use crate::cluster;
use crate::output::{self, Table};
use crate::signing;

/// The node used when neither --node nor a local cluster says otherwise.
pub(crate) const DEFAULT_NODE_URL: &str = "http://127.0.0.1:7001";

/// Time-out of one client request; generous, because a quorum write may wait on a replica
/// that the node is about to declare dead.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest value `put` reads from a file or stdin. The node enforces its own (smaller) cap
/// with a clear 413; this only keeps the CLI from reading an endless pipe into memory.
const MAX_INPUT_BYTES: u64 = 64 << 20;

/// The node to talk to: `--node`/`OVERLAY_NODE`, else the first answering node of the local
/// cluster in `--dir`, else [`DEFAULT_NODE_URL`].
pub(crate) fn resolve_node_url(global: &GlobalArgs) -> String {
    if let Some(url) = &global.node {
        return url.clone();
    }
    cluster::first_answering_node(&global.dir).unwrap_or_else(|| DEFAULT_NODE_URL.to_owned())
}

/// A client of the node [`resolve_node_url`] picks, with the API token if one was given.
pub(crate) fn client(global: &GlobalArgs) -> Result<Client> {
    let token = global.api_token()?;
    Ok(Client::new(&resolve_node_url(global), REQUEST_TIMEOUT, 1)?.with_token(token.as_deref()))
}

pub(crate) fn put(global: &GlobalArgs, args: &PutArgs, out: &mut impl Write) -> Result<()> {
    let value = match (&args.value, &args.file) {
        (_, Some(path)) => read_value_file(path)?,
        (Some(dash), None) if dash == "-" => read_value_stdin()?,
        (Some(text), None) => text.clone().into_bytes(),
        // clap requires one of the two; this is only reachable if that rule is removed.
        (None, None) => bail!("give a value, `--file PATH`, or `-` for stdin"),
    };
    let condition = match (&args.if_version, args.if_absent) {
        (Some(version), _) => Some(Condition::Version(version.clone())),
        (None, true) => Some(Condition::Absent),
        (None, false) => None,
    };
    let client = client(global)?;
    let (outcome, receipt) = match (&args.sign, &condition) {
        (Some(file), _) => {
            let signing = signing::read_key(file)?;
            signing::write_signed(&signing, &args.key, Some(&value), |signature| {
                client.put_signed(&args.key, &value, signature, global.consistency)
            })?
        }
        (None, Some(condition)) => client.put_if(&args.key, &value, condition)?,
        (None, None) => client.put(&args.key, &value, global.consistency)?,
    };
    if global.json {
        let mut raw = receipt.raw;
        // Created-or-overwritten is only in the HTTP status, so it is added to the document.
        if let Some(object) = raw.as_object_mut() {
            object.entry("created").or_insert(serde_json::Value::Bool(outcome == PutOutcome::Created));
        }
        output::write_json(out, &raw)?;
    } else {
        let what = match outcome {
            PutOutcome::Created => "created",
            PutOutcome::Overwritten => "overwrote",
        };
        writeln!(
            out,
            "{what} {:?} ({}, version {}, {} replica{} acknowledged)",
            receipt.parsed.key,
            output::human_bytes(value.len() as u64),
            receipt.parsed.version,
            receipt.parsed.replicas_acked,
            if receipt.parsed.replicas_acked == 1 { "" } else { "s" },
        )?;
    }
    Ok(())
}

fn read_value_file(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    read_bounded(file).with_context(|| format!("reading {}", path.display()))
}

fn read_value_stdin() -> Result<Vec<u8>> {
    read_bounded(io::stdin().lock()).context("reading the value from stdin")
}

pub(crate) fn read_bounded(reader: impl Read) -> Result<Vec<u8>> {
    let mut value = Vec::new();
    reader.take(MAX_INPUT_BYTES + 1).read_to_end(&mut value)?;
    if value.len() as u64 > MAX_INPUT_BYTES {
        bail!("the value is larger than {}", output::human_bytes(MAX_INPUT_BYTES));
    }
    Ok(value)
}

pub(crate) fn get(global: &GlobalArgs, key: &str, local: bool, out: &mut impl Write) -> Result<()> {
    let client = client(global)?;
    let stored = if local { client.get_local(key)? } else { client.get(key, global.consistency)? };
    if global.json {
        let mut json = value_json(key, stored.version.as_deref(), &stored.value);
        if let (Some(signer), Some(object)) = (&stored.signer, json.as_object_mut()) {
            object.insert("signer".into(), serde_json::Value::String(signer.clone()));
        }
        output::write_json(out, &json)?;
    } else {
        // Only the value, byte for byte, so `overlay get k > file` and pipes get exactly it.
        out.write_all(&stored.value)?;
        out.flush()?;
    }
    Ok(())
}

/// `get --json`: JSON cannot hold arbitrary bytes, so the value is a UTF-8 string when it is
/// valid UTF-8 and lowercase hex otherwise, and `encoding` says which.
fn value_json(key: &str, version: Option<&str>, value: &[u8]) -> serde_json::Value {
    let (encoding, text) = match std::str::from_utf8(value) {
        Ok(text) => ("utf8", text.to_owned()),
        Err(_) => ("hex", value.iter().map(|byte| format!("{byte:02x}")).collect()),
    };
    serde_json::json!({
        "key": key,
        "version": version,
        "size": value.len(),
        "encoding": encoding,
        "value": text,
    })
}

pub(crate) fn delete(
    global: &GlobalArgs,
    key: &str,
    if_version: Option<&str>,
    sign: Option<&Path>,
    out: &mut impl Write,
) -> Result<()> {
    let client = client(global)?;
    match (sign, if_version) {
        (Some(file), _) => {
            let signing = signing::read_key(file)?;
            signing::write_signed(&signing, key, None, |signature| {
                client.delete_signed(key, signature, global.consistency)
            })?
        }
        (None, Some(version)) => client.delete_if(key, &Condition::Version(version.to_owned()))?,
        (None, None) => client.delete(key, global.consistency)?,
    }
    if global.json {
        output::write_json(out, &serde_json::json!({ "key": key, "deleted": true }))?;
    } else {
        writeln!(out, "deleted {key:?}")?;
    }
    Ok(())
}

pub(crate) fn lookup(global: &GlobalArgs, key: &str, out: &mut impl Write) -> Result<()> {
    let lookup = client(global)?.lookup(key)?;
    if global.json {
        return Ok(output::write_json(out, &lookup.raw)?);
    }
    let lookup = lookup.parsed;
    writeln!(out, "key     {}", lookup.key)?;
    writeln!(out, "key id  {}", lookup.key_id)?;
    writeln!(out, "hops    {}", lookup.hops)?;
    writeln!(out)?;
    let mut table = Table::new(["role", "ring id", "peer id", "addr"]);
    // The node sends no owner only when the lookup found no replica at all.
    if let Some(owner) = &lookup.owner {
        table.row(node_cells("owner", owner));
    }
    for replica in lookup.replicas.iter().filter(|replica| Some(*replica) != lookup.owner.as_ref()) {
        table.row(node_cells("replica", replica));
    }
    table.write(out)?;
    writeln!(out)?;
    write_lookup_path(&lookup, out)
}

/// The nodes that answered the lookup, one row per hop in the order they answered (the node
/// asked over HTTP asked each of them itself); the last is the owner.
fn write_lookup_path(lookup: &overlay_api::Lookup, out: &mut impl Write) -> Result<()> {
    if lookup.path.is_empty() && lookup.hops == 0 {
        writeln!(out, "path    none: the node asked owns the key")?;
        return Ok(());
    }
    writeln!(out, "path    the nodes that answered, in order:")?;
    let mut table = Table::new(["hop", "ring id", "peer id", "addr"]);
    for (hop, node) in lookup.path.iter().enumerate() {
        let owner = lookup.owner.as_ref() == Some(node);
        let label = if owner { format!("{} (owner)", hop + 1) } else { (hop + 1).to_string() };
        table.row(node_cells(&label, node));
    }
    table.write(out)?;
    let unlisted = usize::try_from(lookup.hops).unwrap_or(usize::MAX).saturating_sub(lookup.path.len());
    if unlisted > 0 {
        writeln!(
            out,
            "({unlisted} further hops not listed; the node lists the first {})",
            lookup.path.len()
        )?;
    }
    Ok(())
}

fn node_cells(label: &str, node: &NodeInfo) -> [String; 4] {
    [
        label.to_owned(),
        output::short_ring_id(&node.ring_id),
        output::short_peer_id(&node.peer_id),
        node.addr.clone(),
    ]
}

pub(crate) fn status(global: &GlobalArgs, out: &mut impl Write) -> Result<()> {
    let status = client(global)?.status()?;
    if global.json {
        return Ok(output::write_json(out, &status.raw)?);
    }
    let status = status.parsed;
    let mut facts = Table::new(["node", &status.peer_id]);
    facts.row(["ring id", &status.ring_id]);
    facts.row(["http", &status.http]);
    for (position, address) in status.addresses.iter().enumerate() {
        facts.row([if position == 0 { "addresses" } else { "" }, address.as_str()]);
    }
    facts.row(["member", if status.member { "yes" } else { "no (joining)" }]);
    facts.row(["keys".to_owned(), format!("{} ({})", status.keys, output::human_bytes(status.bytes))]);
    facts.row(["uptime".to_owned(), output::human_duration(status.uptime_s)]);
    facts.row(["version", &status.version]);
    facts.write(out)?;

    writeln!(out)?;
    let mut neighbours = Table::new(["neighbour", "ring id", "peer id", "addr"]);
    match &status.predecessor {
        Some(predecessor) => neighbours.row(node_cells("predecessor", predecessor)),
        None => neighbours.row(["predecessor", "none"]),
    }
    for (position, successor) in status.successors.iter().enumerate() {
        neighbours.row(node_cells(&format!("successor {}", position + 1), successor));
    }
    neighbours.write(out)?;

    writeln!(out)?;
    let mut fingers = Table::new(["finger", "ring id", "peer id", "addr"]);
    for finger in &status.fingers {
        fingers.row(node_cells(&finger.index.to_string(), &finger.node));
    }
    Ok(fingers.write(out)?)
}

pub(crate) fn ring(global: &GlobalArgs, out: &mut impl Write) -> Result<()> {
    let ring = client(global)?.ring()?;
    if global.json {
        return Ok(output::write_json(out, &ring.raw)?);
    }
    write_ring_table(&ring.parsed.nodes, out)?;
    if !ring.parsed.complete {
        writeln!(out, "(incomplete: the walk around the ring did not get back to the start)")?;
    }
    Ok(())
}

/// `position  ring id  peer id  keys  addr`, one row per member in ring order; `keys` is what
/// each node reported to the walk (`-` when it did not).
pub(crate) fn write_ring_table(nodes: &[RingMember], out: &mut impl Write) -> io::Result<()> {
    let mut table = Table::new(["position", "ring id", "peer id", "keys", "addr"]);
    for (position, member) in nodes.iter().enumerate() {
        let [position, ring_id, peer_id, addr] = node_cells(&position.to_string(), &member.node);
        let keys = member.keys.map_or_else(|| "-".to_owned(), |k| k.to_string());
        table.row([position, ring_id, peer_id, keys, addr]);
    }
    table.write(out)
}

/// Names the consistency level requests will use, for the progress lines of bench and demo.
pub(crate) fn consistency_label(consistency: Option<Consistency>) -> &'static str {
    match consistency {
        None => "the node's default consistency",
        Some(Consistency::One) => "consistency one",
        Some(Consistency::Quorum) => "consistency quorum",
        Some(Consistency::All) => "consistency all",
        Some(Consistency::Linearizable) => "consistency linearizable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_are_text_when_utf8_and_hex_otherwise() {
        let text = value_json("k", Some("v1"), "héllo".as_bytes());
        assert_eq!(text["encoding"], "utf8");
        assert_eq!(text["value"], "héllo");
        assert_eq!(text["size"], 6);
        assert_eq!(text["version"], "v1");
        let binary = value_json("k", None, &[0xff, 0x00, 0x10]);
        assert_eq!(binary["encoding"], "hex");
        assert_eq!(binary["value"], "ff0010");
        assert!(binary["version"].is_null());
    }

    #[test]
    fn a_lookups_path_is_printed_hop_by_hop_ending_at_the_owner() {
        let node = |peer: &str, ring: char| NodeInfo {
            addr: format!("/ip4/127.0.0.1/tcp/{}", 4000 + peer.len()),
            peer_id: peer.to_owned(),
            ring_id: ring.to_string().repeat(40),
        };
        let (hop, owner) = (node("12D3KooWHop", 'a'), node("12D3KooWOwner", 'b'));
        let mut lookup = overlay_api::Lookup {
            hops: 2,
            key: "k".into(),
            key_id: "c".repeat(40),
            owner: Some(owner.clone()),
            path: vec![hop, owner],
            replicas: vec![],
        };
        let mut out = Vec::new();
        write_lookup_path(&lookup, &mut out).expect("writes");
        let text = String::from_utf8(out).expect("utf-8");
        let rows: Vec<&str> = text.lines().skip(2).collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert!(rows[0].starts_with("1 ") && rows[0].contains("aaaa"), "{text}");
        assert!(rows[1].starts_with("2 (owner)") && rows[1].contains("bbbb"), "{text}");

        lookup.hops = 0;
        lookup.path.clear();
        let mut out = Vec::new();
        write_lookup_path(&lookup, &mut out).expect("writes");
        assert_eq!(String::from_utf8(out).expect("utf-8"), "path    none: the node asked owns the key\n");
    }

    #[test]
    fn bounded_reads_refuse_oversized_input() {
        assert_eq!(read_bounded(&b"abc"[..]).expect("small input"), b"abc");
        let endless = io::repeat(b'x');
        assert!(read_bounded(endless).is_err());
    }

    #[test]
    fn an_explicit_node_wins_over_the_cluster() {
        let global = GlobalArgs {
            node: Some("http://127.0.0.1:9".to_owned()),
            api_token: None,
            api_token_file: None,
            consistency: None,
            json: false,
            dir: "/nonexistent".into(),
        };
        assert_eq!(resolve_node_url(&global), "http://127.0.0.1:9");
        let global = GlobalArgs { node: None, ..global };
        assert_eq!(resolve_node_url(&global), DEFAULT_NODE_URL);
    }
}
