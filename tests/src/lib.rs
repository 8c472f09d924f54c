//! Harness for end-to-end tests: starts real `overlay-node` processes on 127.0.0.1 with temporary
//! data directories and ports chosen by the OS, talks to them over HTTP, kills and restarts them,
//! and polls for conditions with deadlines (never sleep-then-assert).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// The node binary the tests run: each test file passes `env!("CARGO_BIN_EXE_overlay-node-e2e")`,
/// which cargo builds from the node's `main.rs` before running the tests.
pub type NodeBinary = &'static str;

/// Polls `check` every 100 ms until it returns `Ok(Some(value))` or `timeout` passes; the last
/// `Err` or `Ok(None)` explains a failure.
pub fn poll<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> anyhow::Result<Option<T>>) -> T {
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        match check() {
            Ok(Some(value)) => return value,
            Ok(None) => last = "condition not met yet".into(),
            Err(error) => last = format!("{error:#}"),
        }
        assert!(Instant::now() < deadline, "{what}: not reached within {timeout:?} ({last})");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A blocking HTTP client of one node.
#[derive(Clone, Debug)]
pub struct Http {
    agent: ureq::Agent,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

/// An HTTP answer: status and body.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body).context("body is not JSON")
    }
}

impl Http {
    /// A client of `host:port`.
    pub fn new(addr: &str) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(20)))
            .http_status_as_error(false)
            .build();
        Http { agent: ureq::Agent::new_with_config(config), base: format!("http://{addr}") }
    }

    fn finish(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> anyhow::Result<Answer> {
        let mut response = response.context("HTTP request failed")?;
        let status = response.status().as_u16();
        let body = response.body_mut().with_config().limit(64 * 1024 * 1024).read_to_vec()?;
        Ok(Answer { status, body })
    }

    /// GET a path.
    pub fn get(&self, path: &str) -> anyhow::Result<Answer> {
        Self::finish(self.agent.get(format!("{}{path}", self.base)).call())
    }

    /// PUT bytes to a path.
    pub fn put(&self, path: &str, body: &[u8]) -> anyhow::Result<Answer> {
        Self::finish(self.agent.put(format!("{}{path}", self.base)).send(body))
    }

    /// DELETE a path.
    pub fn delete(&self, path: &str) -> anyhow::Result<Answer> {
        Self::finish(self.agent.delete(format!("{}{path}", self.base)).call())
    }

    /// `/v1/status` as JSON.
    pub fn status(&self) -> anyhow::Result<Value> {
        let answer = self.get("/v1/status")?;
        if answer.status != 200 {
            bail!("status answered {}", answer.status);
        }
        answer.json()
    }

    /// One metric's value from `/metrics` (the first sample line starting with `name`).
    pub fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = String::from_utf8(self.get("/metrics")?.body)?;
        let line = text
            .lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .with_context(|| format!("metric {name} missing"))?;
        Ok(line.rsplit_once(' ').context("sample line")?.1.parse()?)
    }
}

/// One node process and where it can be reached.
#[derive(Debug)]
pub struct NodeProcess {
    child: Option<Child>,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// HTTP `host:port`.
    pub http: String,
    /// Its p2p multiaddr.
    pub p2p: String,
    /// Its peer id.
    pub peer_id: String,
    /// Where its logs go.
    pub log: PathBuf,
}

impl NodeProcess {
    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A set of nodes started by a test; killed when dropped.
#[derive(Debug)]
pub struct Cluster {
    dir: tempfile::TempDir,
    /// The nodes, in start order.
    pub nodes: Vec<NodeProcess>,
    extra_args: Vec<String>,
    binary: NodeBinary,
}

impl Cluster {
    /// Starts `n` nodes of `binary`: the first creates the ring, the others join through it.
    pub fn start(binary: NodeBinary, n: usize, extra_args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut cluster = Cluster {
            dir,
            nodes: Vec::new(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            binary,
        };
        for i in 0..n {
            let bootstrap = if i == 0 { None } else { Some(cluster.nodes[0].p2p.clone()) };
            cluster.spawn(i, bootstrap);
        }
        cluster
    }

    /// Starts node `i` (new or restarted on its data dir), joining through `bootstrap`.
    fn spawn(&mut self, i: usize, bootstrap: Option<String>) {
        let data_dir = self.dir.path().join(format!("node-{i}"));
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let node_file = data_dir.join("node.json");
        let _ = std::fs::remove_file(&node_file);
        let log = self.dir.path().join(format!("node-{i}.log"));
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let mut command = Command::new(self.binary);
        command
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--http", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .args(&self.extra_args)
            .env("RUST_LOG", "info,overlay_node=debug,dht=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        if let Some(bootstrap) = bootstrap {
            command.args(["--bootstrap", &bootstrap]);
        }
        let child = command.spawn().expect("overlay-node starts");
        let info: Value = poll(&format!("node {i} writes node.json"), Duration::from_secs(20), || {
            Ok(std::fs::read(&node_file).ok().and_then(|b| serde_json::from_slice(&b).ok()))
        });
        let process = NodeProcess {
            child: Some(child),
            data_dir,
            http: info["http"].as_str().expect("http").to_string(),
            p2p: info["p2p"].as_str().expect("p2p").to_string(),
            peer_id: info["peer_id"].as_str().expect("peer_id").to_string(),
            log,
        };
        if i < self.nodes.len() {
            self.nodes[i] = process;
        } else {
            self.nodes.push(process);
        }
    }

    /// A client of node `i`.
    pub fn http(&self, i: usize) -> Http {
        Http::new(&self.nodes[i].http)
    }

    /// Indexes of running nodes.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].is_running()).collect()
    }

    /// Kills node `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM to node `i` and waits (at most `timeout`) for it to exit; returns how long it
    /// took and its exit status.
    pub fn terminate(&mut self, i: usize, timeout: Duration) -> (Duration, std::process::ExitStatus) {
        let mut child = self.nodes[i].child.take().expect("node is running");
        let started = Instant::now();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM delivered");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (started.elapsed(), status);
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                panic!("node {i} did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Restarts node `i` on its data directory, joining through a running node.
    pub fn restart(&mut self, i: usize) {
        assert!(!self.nodes[i].is_running(), "node {i} is still running");
        let via = self.running().into_iter().next().map(|j| self.nodes[j].p2p.clone());
        self.spawn(i, via);
    }

    /// Statuses of the running nodes, keyed by index.
    pub fn statuses(&self) -> anyhow::Result<BTreeMap<usize, Value>> {
        self.running().into_iter().map(|i| Ok((i, self.http(i).status()?))).collect()
    }

    /// Whether every running node's successor and predecessor are the right ones by ring id.
    pub fn ring_is_correct(&self) -> anyhow::Result<bool> {
        let statuses = self.statuses()?;
        let mut ring: Vec<(String, String)> = statuses
            .values()
            .map(|s| {
                (
                    s["ring_id"].as_str().unwrap_or("").to_string(),
                    s["peer_id"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        ring.sort();
        let n = ring.len();
        for status in statuses.values() {
            let me = status["ring_id"].as_str().unwrap_or("");
            let k = ring.iter().position(|(id, _)| id == me).context("own id")?;
            let successor = status["successors"][0]["ring_id"].as_str().unwrap_or(me);
            let predecessor = status["predecessor"]["ring_id"].as_str().unwrap_or("");
            if !status["member"].as_bool().unwrap_or(false)
                || successor != ring[(k + 1) % n].0
                || (n > 1 && predecessor != ring[(k + n - 1) % n].0)
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Waits until the ring of running nodes is correct; returns how long that took.
    pub fn wait_for_correct_ring(&self, timeout: Duration) -> Duration {
        let started = Instant::now();
        poll("a correct ring", timeout, || Ok(self.ring_is_correct()?.then_some(())));
        started.elapsed()
    }

    /// The HTTP address of the running node with this peer id.
    pub fn http_of_peer(&self, peer_id: &str) -> Option<Http> {
        self.running().into_iter().find(|&i| self.nodes[i].peer_id == peer_id).map(|i| self.http(i))
    }

    /// How many of `key`'s current replicas (by a lookup from node `via`) hold `value` locally.
    pub fn replicas_holding(&self, via: usize, key: &str, value: &[u8]) -> anyhow::Result<(usize, usize)> {
        let located = self.http(via).get(&format!("/v1/lookup/{key}"))?.json()?;
        let replicas = located["replicas"].as_array().context("replicas")?;
        let mut holding = 0;
        for replica in replicas {
            let peer = replica["peer_id"].as_str().context("peer id")?;
            let Some(http) = self.http_of_peer(peer) else { continue };
            let answer = http.get(&format!("/v1/kv/{key}?local=true"))?;
            if answer.status == 200 && answer.body == value {
                holding += 1;
            }
        }
        Ok((holding, replicas.len()))
    }

    /// The log of node `i`, for failure messages.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            // Keep the logs of a failed test where a developer can read them.
            let kept = self.dir.path().to_path_buf();
            eprintln!("node logs of the failed test: {}", kept.display());
            let _ = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir")).keep();
        }
    }
}

/// Runs `f` over `items` on `threads` threads; returns the failures.
pub fn parallel<T: Sync, E: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> Result<(), E> + Sync,
) -> Vec<E> {
    let chunk = items.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().filter_map(|item| f(item).err()).collect::<Vec<E>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("worker thread")).collect()
    })
}
