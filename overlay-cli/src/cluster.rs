//! Local clusters: `overlay cluster up|status|kill|start|down` and the cluster file.
//!
//! Owns `DIR/cluster.json`, the record of which overlay-node processes a cluster has, their
//! ports, pids, data directories and logs. Invariants it keeps:
//! - a node's ports and data directory never change after `up`, so `start` brings the same
//!   identity back at the same addresses;
//! - a pid is recorded only while we believe the process runs, and is cleared when we stop it;
//! - the file is replaced atomically (write, then rename), so a crash never leaves half a file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::Signal;
use overlay_api::{Client, Status};
use serde::{Deserialize, Serialize};

use crate::output::{self, Progress, Table};
use crate::process::{self, NodeLaunch};

/// File name of the cluster record inside the cluster directory.
const CLUSTER_FILE: &str = "cluster.json";
/// Version of the cluster file's layout, for a future change to detect old files.
const CLUSTER_FILE_FORMAT: u32 = 1;
/// How long `up` and `start` wait for a correct ring.
pub(crate) const RING_DEADLINE: Duration = Duration::from_secs(60);
/// How long `down` lets each node leave gracefully before SIGKILL (the node promises 10 s).
const GRACEFUL_STOP_DEADLINE: Duration = Duration::from_secs(15);
/// How long a SIGKILLed process may take to disappear.
const KILL_DEADLINE: Duration = Duration::from_secs(5);
/// Time-out of one status probe while waiting; short, because the wait retries anyway.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between two rounds of probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// The cluster file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ClusterFile {
    pub(crate) format: u32,
    /// The overlay-node executable the cluster was started with.
    pub(crate) node_binary: PathBuf,
    pub(crate) nodes: Vec<ClusterNode>,
}

/// One node of the cluster file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ClusterNode {
    /// Base URL of its HTTP API, e.g. `http://127.0.0.1:41234`.
    pub(crate) http: String,
    /// Its libp2p listen address, e.g. `/ip4/127.0.0.1/tcp/41235`.
    pub(crate) p2p: String,
    /// Process id while running; `null` once stopped.
    pub(crate) pid: Option<u32>,
    pub(crate) data_dir: PathBuf,
    pub(crate) log: PathBuf,
    /// Learnt from the node's status once it answered; stable across restarts because the
    /// identity lives in the data directory.
    #[serde(default)]
    pub(crate) peer_id: Option<String>,
}

impl ClusterNode {
    pub(crate) fn is_running(&self) -> bool {
        self.pid.is_some_and(|pid| process::is_running(pid, &self.data_dir))
    }

    /// `host:port` of the HTTP API, as overlay-node's `--http` wants it.
    fn http_listen(&self) -> &str {
        self.http.strip_prefix("http://").unwrap_or(&self.http)
    }

    pub(crate) fn client(&self, timeout: Duration) -> Result<Client> {
        Ok(Client::new(&self.http, timeout, 1)?)
    }
}

impl ClusterFile {
    pub(crate) fn path(dir: &Path) -> PathBuf {
        dir.join(CLUSTER_FILE)
    }

    /// The cluster file in `dir`, or `None` when there is none.
    pub(crate) fn load(dir: &Path) -> Result<Option<Self>> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let file: ClusterFile =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if file.format != CLUSTER_FILE_FORMAT {
            bail!(
                "{} has format {} but this overlay understands {CLUSTER_FILE_FORMAT}",
                path.display(),
                file.format
            );
        }
        Ok(Some(file))
    }

    /// Like [`load`](Self::load), but a missing file is an error that says how to make one.
    pub(crate) fn load_existing(dir: &Path) -> Result<Self> {
        Self::load(dir)?.with_context(|| {
            format!(
                "no cluster in {} (start one with `overlay cluster up -n 3 --dir {}`)",
                dir.display(),
                dir.display()
            )
        })
    }

    pub(crate) fn save(&self, dir: &Path) -> Result<()> {
        let path = Self::path(dir);
        let temporary = dir.join(format!("{CLUSTER_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self).context("serialising the cluster file")?;
        std::fs::write(&temporary, text + "\n")
            .with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, &path).with_context(|| format!("replacing {}", path.display()))
    }

    pub(crate) fn node(&self, index: usize) -> Result<&ClusterNode> {
        self.nodes.get(index).with_context(|| {
            format!(
                "the cluster has nodes 0 to {}; there is no node {index}",
                self.nodes.len().saturating_sub(1)
            )
        })
    }

    /// Indices of the nodes whose processes run.
    pub(crate) fn running(&self) -> Vec<usize> {
        self.nodes.iter().enumerate().filter(|(_, node)| node.is_running()).map(|(index, _)| index).collect()
    }

    /// The cluster's `--json` shape, shared by `status`, `up` and `start`.
    pub(crate) fn status_json(&self) -> serde_json::Value {
        let nodes: Vec<serde_json::Value> = self
            .nodes
            .iter()
            .map(|node| {
                serde_json::json!({
                    "http": node.http,
                    "p2p": node.p2p,
                    "pid": node.pid,
                    "alive": node.is_running(),
                })
            })
            .collect();
        serde_json::json!({ "nodes": nodes })
    }
}

/// HTTP base URLs of the cluster in `dir` whose processes run and which answer their status,
/// in cluster order. Empty when there is no cluster.
pub(crate) fn answering_nodes(dir: &Path) -> Vec<String> {
    let Ok(Some(cluster)) = ClusterFile::load(dir) else { return Vec::new() };
    cluster
        .nodes
        .iter()
        .filter(|node| node.is_running())
        .filter(|node| node.client(PROBE_TIMEOUT).and_then(|client| Ok(client.status()?)).is_ok())
        .map(|node| node.http.clone())
        .collect()
}

/// The first running node of the cluster in `dir` that answers, if any.
pub(crate) fn first_answering_node(dir: &Path) -> Option<String> {
    let cluster = ClusterFile::load(dir).ok()??;
    cluster
        .nodes
        .iter()
        .filter(|node| node.is_running())
        .find(|node| node.client(PROBE_TIMEOUT).and_then(|client| Ok(client.status()?)).is_ok())
        .map(|node| node.http.clone())
}

/// `overlay cluster up`: starts `count` nodes in `dir`, waits for a correct ring, and returns
/// the cluster. On failure every node it started is stopped again.
pub(crate) fn up(dir: &Path, count: usize, fresh: bool, node_binary: Option<&Path>) -> Result<ClusterFile> {
    let binary = process::find_node_binary(node_binary)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
    if let Some(existing) = ClusterFile::load(&dir)? {
        let running = existing.running();
        if !running.is_empty() {
            bail!(
                "a cluster is already running in {} (nodes {}); stop it with `overlay cluster down --dir {}`",
                dir.display(),
                join_indices(&running),
                dir.display()
            );
        }
    }
    if fresh {
        remove_node_directories(&dir)?;
    }

    let ports = process::free_loopback_ports(count * 2).context("picking free loopback ports")?;
    let nodes = ports
        .chunks_exact(2)
        .enumerate()
        .map(|(index, pair)| {
            let data_dir = dir.join(format!("node-{index}"));
            ClusterNode {
                http: format!("http://127.0.0.1:{}", pair[1]),
                p2p: format!("/ip4/127.0.0.1/tcp/{}", pair[0]),
                pid: None,
                log: data_dir.join("node.log"),
                data_dir,
                peer_id: None,
            }
        })
        .collect();
    let mut cluster = ClusterFile { format: CLUSTER_FILE_FORMAT, node_binary: binary, nodes };

    let started = Instant::now();
    let deadline = started + RING_DEADLINE;
    let outcome = start_all(&dir, &mut cluster, deadline).and_then(|()| {
        let all: Vec<usize> = (0..cluster.nodes.len()).collect();
        wait_for_ring(&mut cluster, &all, started, deadline)
    });
    if let Err(error) = outcome {
        // A half-formed cluster is of no use and would block the next `up`; logs stay.
        stop_nodes(&mut cluster);
        // Best effort: the stop already happened, the file only records it.
        let _ = cluster.save(&dir);
        // The log hint goes last: it is advice, the cause comes first.
        return Err(anyhow!("{error:#}; logs are in {}/node-*/node.log", dir.display()));
    }
    cluster.save(&dir)?;
    Ok(cluster)
}

/// Starts node 0 (a new ring), waits until it answers, then starts the rest bootstrapping from
/// it. The cluster file is saved as soon as pids exist, so an interrupted `up` can still be
/// stopped with `cluster down`.
fn start_all(dir: &Path, cluster: &mut ClusterFile, deadline: Instant) -> Result<()> {
    let binary = cluster.node_binary.clone();
    launch(&binary, &mut cluster.nodes[0], None)?;
    cluster.save(dir)?;
    // Joining nodes dial node 0 at once; starting them before it listens would only make
    // them retry.
    wait_until_answering(&cluster.nodes[0], 0, deadline)?;
    let bootstrap = cluster.nodes[0].p2p.clone();
    for node in cluster.nodes.iter_mut().skip(1) {
        launch(&binary, node, Some(&bootstrap))?;
    }
    cluster.save(dir)
}

fn launch(binary: &Path, node: &mut ClusterNode, bootstrap: Option<&str>) -> Result<()> {
    let pid = process::spawn_detached(&NodeLaunch {
        binary,
        listen: &node.p2p,
        http: node.http_listen(),
        data_dir: &node.data_dir,
        bootstrap,
        log: &node.log,
    })?;
    node.pid = Some(pid);
    Ok(())
}

fn wait_until_answering(node: &ClusterNode, index: usize, deadline: Instant) -> Result<()> {
    let client = node.client(PROBE_TIMEOUT)?;
    loop {
        ensure_still_running(node, index)?;
        if client.status().is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("node {index} did not answer on {} in time", node.http);
        }
        thread::sleep(PROBE_INTERVAL);
    }
}

fn ensure_still_running(node: &ClusterNode, index: usize) -> Result<()> {
    if node.is_running() {
        return Ok(());
    }
    let tail = process::log_tail(&node.log, 3);
    bail!("node {index} has exited (end of its log {}: {tail})", node.log.display())
}

/// Polls the statuses of the nodes at `members` until they form a correct ring, showing
/// progress on stderr. Records each node's peer id as it learns it.
pub(crate) fn wait_for_ring(
    cluster: &mut ClusterFile,
    members: &[usize],
    started: Instant,
    deadline: Instant,
) -> Result<()> {
    let mut progress = Progress::new();
    loop {
        for &index in members {
            ensure_still_running(&cluster.nodes[index], index)?;
        }
        let statuses = probe_statuses(cluster, members);
        for (&index, status) in members.iter().zip(&statuses) {
            if let Some(status) = status {
                cluster.nodes[index].peer_id = Some(status.peer_id.clone());
            }
        }
        let check = overlay_api::check_statuses(members.len(), statuses.iter().flatten());
        progress.update(&format!("waiting for the ring: {}", check.summary()), started.elapsed());
        if check.is_correct() {
            progress.finish();
            return Ok(());
        }
        if Instant::now() >= deadline {
            progress.finish();
            let first_problem = check.problems.first().map_or("", String::as_str);
            bail!(
                "the ring was not correct after {:.0} s: {}; first problem: {first_problem}",
                started.elapsed().as_secs_f64(),
                check.summary()
            );
        }
        thread::sleep(PROBE_INTERVAL);
    }
}

fn probe_statuses(cluster: &ClusterFile, members: &[usize]) -> Vec<Option<Status>> {
    members
        .iter()
        .map(|&index| {
            let client = cluster.nodes[index].client(PROBE_TIMEOUT).ok()?;
            client.status().ok().map(|document| document.parsed)
        })
        .collect()
}

/// `overlay cluster kill I`: SIGKILL, as a crash would.
pub(crate) fn kill(dir: &Path, index: usize) -> Result<()> {
    let mut cluster = ClusterFile::load_existing(dir)?;
    let node = cluster.node(index)?;
    let pid = match node.pid {
        Some(pid) if node.is_running() => pid,
        _ => bail!("node {index} is not running"),
    };
    process::send_signal(pid, Signal::SIGKILL)?;
    if !process::wait_until_stopped(pid, &node.data_dir, Instant::now() + KILL_DEADLINE) {
        bail!("node {index} (pid {pid}) still runs {KILL_DEADLINE:?} after SIGKILL");
    }
    cluster.nodes[index].pid = None;
    cluster.save(dir)
}

/// `overlay cluster start I`: restarts a stopped node on its data directory and ports,
/// joining through the first running node, and waits until the running nodes form a correct
/// ring with it.
pub(crate) fn start(dir: &Path, index: usize, node_binary: Option<&Path>) -> Result<ClusterFile> {
    let mut cluster = ClusterFile::load_existing(dir)?;
    if cluster.node(index)?.is_running() {
        bail!("node {index} is already running");
    }
    let binary = match node_binary {
        Some(path) => process::find_node_binary(Some(path))?,
        None if process::find_node_binary(Some(&cluster.node_binary)).is_ok() => cluster.node_binary.clone(),
        None => process::find_node_binary(None)?,
    };
    let running = cluster.running();
    // With no other node alive the restarted node can only start a new ring of its own.
    let bootstrap = running.first().map(|&other| cluster.nodes[other].p2p.clone());
    launch(&binary, &mut cluster.nodes[index], bootstrap.as_deref())?;
    cluster.save(dir)?;

    let mut members = running;
    members.push(index);
    members.sort_unstable();
    let started = Instant::now();
    let waited = wait_for_ring(&mut cluster, &members, started, started + RING_DEADLINE);
    // The pid is recorded either way: a node that runs but has not converged yet is still ours.
    cluster.save(dir)?;
    waited.with_context(|| {
        format!(
            "node {index} started but the ring did not settle (its log: {})",
            cluster.nodes[index].log.display()
        )
    })?;
    Ok(cluster)
}

/// `overlay cluster down`: SIGTERM every running node, give each up to 15 s to leave the
/// ring, SIGKILL the rest. Returns how many were stopped and how many needed SIGKILL.
pub(crate) fn down(dir: &Path) -> Result<(usize, usize)> {
    let mut cluster = ClusterFile::load_existing(dir)?;
    let outcome = stop_nodes(&mut cluster);
    cluster.save(dir)?;
    Ok(outcome)
}

/// Stops every running node of `cluster` and clears all pids. Signals all nodes first and then
/// waits, so stopping N nodes takes about as long as stopping one.
fn stop_nodes(cluster: &mut ClusterFile) -> (usize, usize) {
    let running: Vec<usize> = cluster.running();
    for &index in &running {
        if let Some(pid) = cluster.nodes[index].pid {
            // A node that vanished in between is what we want anyway.
            let _ = process::send_signal(pid, Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + GRACEFUL_STOP_DEADLINE;
    let mut killed = 0;
    for &index in &running {
        let node = &cluster.nodes[index];
        let Some(pid) = node.pid else { continue };
        if !process::wait_until_stopped(pid, &node.data_dir, deadline) {
            killed += 1;
            let _ = process::send_signal(pid, Signal::SIGKILL);
            process::wait_until_stopped(pid, &node.data_dir, Instant::now() + KILL_DEADLINE);
        }
    }
    for node in &mut cluster.nodes {
        node.pid = None;
    }
    (running.len(), killed)
}

/// Removes `node-*` directories of an earlier cluster (for `up --fresh`).
fn remove_node_directories(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name();
        let is_node_dir = name.to_str().is_some_and(|n| {
            n.strip_prefix("node-").is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
        });
        if is_node_dir && entry.path().is_dir() {
            std::fs::remove_dir_all(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn join_indices(indices: &[usize]) -> String {
    indices.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
}

/// Human table of the cluster: one row per node, with what its status says if it answers.
pub(crate) fn write_table(cluster: &ClusterFile, out: &mut impl Write) -> std::io::Result<()> {
    let mut table = Table::new(["#", "state", "pid", "http", "p2p", "peer", "ring id", "keys"]);
    for (index, node) in cluster.nodes.iter().enumerate() {
        let running = node.is_running();
        let status = if running {
            node.client(PROBE_TIMEOUT).ok().and_then(|client| client.status().ok()).map(|d| d.parsed)
        } else {
            None
        };
        let state = match (running, &status) {
            (false, _) => "stopped",
            (true, None) => "no answer",
            (true, Some(status)) if !status.member => "joining",
            (true, Some(_)) => "running",
        };
        let peer = status.as_ref().map(|s| s.peer_id.as_str()).or(node.peer_id.as_deref()).unwrap_or("");
        table.row([
            index.to_string(),
            state.to_owned(),
            node.pid.filter(|_| running).map(|pid| pid.to_string()).unwrap_or_default(),
            node.http.clone(),
            node.p2p.clone(),
            output::short_peer_id(peer),
            status.as_ref().map(|s| output::short_ring_id(&s.ring_id)).unwrap_or_default(),
            status.as_ref().map(|s| s.keys.to_string()).unwrap_or_default(),
        ]);
    }
    table.write(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClusterFile {
        ClusterFile {
            format: CLUSTER_FILE_FORMAT,
            node_binary: PathBuf::from("/bin/overlay-node"),
            nodes: vec![ClusterNode {
                http: "http://127.0.0.1:7001".to_owned(),
                p2p: "/ip4/127.0.0.1/tcp/4001".to_owned(),
                pid: None,
                data_dir: PathBuf::from("/nonexistent/node-0"),
                log: PathBuf::from("/nonexistent/node-0/node.log"),
                peer_id: None,
            }],
        }
    }

    #[test]
    fn cluster_files_round_trip_and_a_missing_one_is_none() {
        let dir = std::env::temp_dir().join(format!("overlay-cli-cluster-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        assert!(ClusterFile::load(&dir).expect("no file is not an error").is_none());
        sample().save(&dir).expect("save");
        let loaded = ClusterFile::load(&dir).expect("load").expect("file exists");
        assert_eq!(loaded.nodes[0].http, "http://127.0.0.1:7001");
        assert_eq!(loaded.nodes[0].http_listen(), "127.0.0.1:7001");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn status_json_has_the_documented_fields_in_cluster_order() {
        let json = sample().status_json();
        assert_eq!(
            json,
            serde_json::json!({"nodes": [{
                "http": "http://127.0.0.1:7001", "p2p": "/ip4/127.0.0.1/tcp/4001", "pid": null, "alive": false
            }]})
        );
    }

    #[test]
    fn unknown_node_indices_are_refused_with_the_valid_range() {
        let cluster = sample();
        let error = cluster.node(3).expect_err("there is no node 3");
        assert!(error.to_string().contains("nodes 0 to 0"));
    }
}
