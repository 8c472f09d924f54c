//! Harness for end-to-end tests: starts real `overlay-node` processes on 127.0.0.1 with temporary
//! data directories and ports chosen by the OS, talks to them over HTTP, kills and restarts them,
//! and polls for conditions with deadlines (never sleep-then-assert).
//!
//! Everything it knows of the API is `overlay_api`'s: the client (typed, and raw for hostile
//! input), the documents, the event-stream reader and the ring check, so the tests call the
//! API the way the CLI does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use overlay_api::{ApiError, Client, GroupEvent, GroupMessage, GroupStream, Method, Status, StreamCloser};
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

/// A client of one node: raw requests by path for tests that send bad input on purpose, and the
/// typed [`Client`] for everything else.
#[derive(Clone, Debug)]
pub struct Http {
    client: Client,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

/// An HTTP answer: status and body.
pub use overlay_api::RawResponse as Answer;

/// Time-out of one request, generous for a busy 2-core machine.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Kept-alive connections per client: as many as the tests' worker threads.
const IDLE_CONNECTIONS: usize = 8;

impl Http {
    /// A client of `host:port`.
    pub fn new(addr: &str) -> Self {
        Http::with_token(addr, None)
    }

    /// A client of `host:port` that sends `token` as its bearer token.
    pub fn with_token(addr: &str, token: Option<&str>) -> Self {
        let client = Client::new(addr, REQUEST_TIMEOUT, IDLE_CONNECTIONS)
            .expect("a node's HTTP address is host:port")
            .with_token(token);
        Http { base: client.base_url().to_owned(), client }
    }

    /// The typed client.
    pub fn api(&self) -> &Client {
        &self.client
    }

    /// GET a path.
    pub fn get(&self, path: &str) -> anyhow::Result<Answer> {
        Ok(self.client.raw(&Method::GET, path, b"")?)
    }

    /// PUT bytes to a path.
    pub fn put(&self, path: &str, body: &[u8]) -> anyhow::Result<Answer> {
        Ok(self.client.raw(&Method::PUT, path, body)?)
    }

    /// POST bytes to a path.
    pub fn post(&self, path: &str, body: &[u8]) -> anyhow::Result<Answer> {
        Ok(self.client.raw(&Method::POST, path, body)?)
    }

    /// DELETE a path.
    pub fn delete(&self, path: &str) -> anyhow::Result<Answer> {
        Ok(self.client.raw(&Method::DELETE, path, b"")?)
    }

    /// `/v1/status`.
    pub fn status(&self) -> anyhow::Result<Status> {
        Ok(self.client.status()?.parsed)
    }

    /// A metric's value from `/metrics`: the sum of every sample that `selector` matches, as
    /// PromQL's `sum(selector)` would. A selector is a sample name with optional labels
    /// (`overlay_rejected_inputs_total{kind="invalid"}`); a sample matches when its name is the
    /// same and it carries each of those labels, whatever others it has (the node counts what
    /// each core and the driver reject as separate series, told apart by a `source` label).
    pub fn metric(&self, selector: &str) -> anyhow::Result<f64> {
        let text = String::from_utf8(self.get(overlay_api::path::METRICS)?.body)?;
        let (name, wanted) = split_labels(selector);
        let mut found = None;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').context("sample line")?;
            let (sample, labels) = split_labels(series);
            // Comma-delimited, a wanted `key="value"` cannot match part of another label.
            let labels = format!(",{labels},");
            if sample == name
                && wanted.split(',').filter(|l| !l.is_empty()).all(|l| labels.contains(&format!(",{l},")))
            {
                *found.get_or_insert(0.0) += value.parse::<f64>()?;
            }
        }
        found.with_context(|| format!("metric {selector} missing"))
    }
}

/// `name{labels}` into `name` and `labels` (empty without braces).
fn split_labels(series: &str) -> (&str, &str) {
    match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}').unwrap_or(rest)),
        None => (series, ""),
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
    /// The `--http` address every node binds (`127.0.0.1:0` unless the test says otherwise).
    http_bind: String,
    /// Flags for one node only, by index.
    node_args: BTreeMap<usize, Vec<String>>,
    binary: NodeBinary,
}

impl Cluster {
    /// Starts `n` nodes of `binary`: the first creates the ring, the others join through it.
    pub fn start(binary: NodeBinary, n: usize, extra_args: &[&str]) -> Cluster {
        Cluster::start_with(binary, n, extra_args, &[])
    }

    /// [`Cluster::start`], with flags for some nodes only (`(index, flags)`); a restarted node gets
    /// its flags again.
    pub fn start_with(
        binary: NodeBinary,
        n: usize,
        extra_args: &[&str],
        node_args: &[(usize, &[&str])],
    ) -> Cluster {
        Cluster::start_bound(binary, n, "127.0.0.1:0", extra_args, node_args)
    }

    /// [`Cluster::start_with`], with every node's HTTP API bound to `http_bind` (such as
    /// `0.0.0.0:0`: all interfaces, a port chosen by the OS) instead of `127.0.0.1:0`. Clients
    /// still reach the nodes on 127.0.0.1.
    pub fn start_bound(
        binary: NodeBinary,
        n: usize,
        http_bind: &str,
        extra_args: &[&str],
        node_args: &[(usize, &[&str])],
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut cluster = Cluster {
            dir,
            nodes: Vec::new(),
            http_bind: http_bind.to_owned(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            node_args: node_args
                .iter()
                .map(|(i, a)| (*i, a.iter().map(|s| s.to_string()).collect()))
                .collect(),
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
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--http", &self.http_bind, "--data-dir"])
            .arg(&data_dir)
            .args(&self.extra_args)
            .args(self.node_args.get(&i).into_iter().flatten())
            .env("RUST_LOG", "info,overlay_node=debug,dht=debug")
            // A token in the developer's environment must not change what a test runs.
            .env_remove(overlay_api::auth::TOKEN_ENV)
            .env_remove(overlay_api::auth::TOKEN_FILE_ENV)
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
        let bound: std::net::SocketAddr = info["http"].as_str().expect("http").parse().expect("host:port");
        // A node bound to every interface is reached on loopback, as its own CLI would.
        let http = if bound.ip().is_unspecified() {
            std::net::SocketAddr::from(([127, 0, 0, 1], bound.port())).to_string()
        } else {
            bound.to_string()
        };
        let process = NodeProcess {
            child: Some(child),
            data_dir,
            http,
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
    pub fn statuses(&self) -> anyhow::Result<BTreeMap<usize, Status>> {
        self.running().into_iter().map(|i| Ok((i, self.http(i).status()?))).collect()
    }

    /// Whether every running node is a member whose successor and predecessor are the right ones
    /// by ring id.
    pub fn ring_is_correct(&self) -> anyhow::Result<bool> {
        let statuses = self.statuses()?;
        Ok(overlay_api::check_statuses(statuses.len(), statuses.values()).is_correct())
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
        let replicas = self.http(via).api().lookup(key)?.parsed.replicas;
        let mut holding = 0;
        for replica in &replicas {
            let Some(http) = self.http_of_peer(&replica.peer_id) else { continue };
            match http.api().get_local(key) {
                Ok(stored) if stored.value == value => holding += 1,
                Ok(_) | Err(ApiError::KeyNotFound { .. } | ApiError::Rejected { .. }) => {}
                Err(error) => return Err(error.into()),
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

/// What a listener's reader thread passes on.
#[derive(Debug)]
enum StreamItem {
    Message(GroupMessage),
    Gap {
        from: u64,
        to: u64,
    },
    /// The stream ended or broke, or carried something that does not follow the contract.
    Ended(String),
}

/// Most items a listener's thread queues for the test; a test that does not drain just pushes back
/// on the node through TCP.
const LISTENER_QUEUE: usize = 16_384;

/// Time-out of opening a stream (connecting and the response's head); the stream itself has none.
const LISTENER_OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A subscriber to `GET /v1/groups/{g}/messages` (server-sent events) on one node: a thread reads
/// the stream with the API client and hands messages and gaps to the test, which collects them
/// with [`GroupListener::drain`]. Dropping the listener closes the stream (so the node stops
/// counting it at once) and ends the thread.
#[derive(Debug)]
pub struct GroupListener {
    /// The node's HTTP `host:port`.
    pub addr: String,
    /// The group.
    pub group: String,
    /// Every message received so far (after [`GroupListener::drain`]), in arrival order.
    pub messages: Vec<GroupMessage>,
    /// Every gap reported so far, as `(from, to)`.
    pub gaps: Vec<(u64, u64)>,
    /// Why the stream ended, once it has.
    pub ended: Option<String>,
    items: mpsc::Receiver<StreamItem>,
    closer: StreamCloser,
    reader: Option<JoinHandle<()>>,
}

impl GroupListener {
    /// Opens the stream of `group` on the node at `addr` (`host:port`), replaying from `from` if
    /// given. Fails unless the node answers 200 (e.g. 503 while the group's root is unreachable).
    pub fn open(addr: &str, group: &str, from: Option<u64>) -> anyhow::Result<GroupListener> {
        let client = Client::new(addr, LISTENER_OPEN_TIMEOUT, 1)?;
        let stream = client
            .group_messages(group, from, None)
            .with_context(|| format!("opening the stream of {group:?} at {addr}"))?;
        let closer = stream.closer();
        let (sender, items) = mpsc::sync_channel(LISTENER_QUEUE);
        let reader = std::thread::Builder::new()
            .name(format!("listener {addr} {group}"))
            .spawn(move || read_events(stream, &sender))
            .context("spawning the listener thread")?;
        Ok(GroupListener {
            addr: addr.to_string(),
            group: group.to_string(),
            messages: Vec::new(),
            gaps: Vec::new(),
            ended: None,
            items,
            closer,
            reader: Some(reader),
        })
    }

    /// Moves everything the stream delivered since the last call into `messages`, `gaps` and
    /// `ended`; returns how many messages were added.
    pub fn drain(&mut self) -> usize {
        let before = self.messages.len();
        while let Ok(item) = self.items.try_recv() {
            match item {
                StreamItem::Message(message) => self.messages.push(message),
                StreamItem::Gap { from, to } => self.gaps.push((from, to)),
                StreamItem::Ended(reason) => self.ended = Some(reason),
            }
        }
        self.messages.len() - before
    }

    /// Whether a message with this sequence number has arrived (drains first).
    pub fn has_seq(&mut self, seq: u64) -> bool {
        self.drain();
        self.messages.iter().any(|message| message.seq == seq)
    }

    /// The highest sequence number received so far (drains first).
    pub fn last_seq(&mut self) -> Option<u64> {
        self.drain();
        self.messages.iter().map(|message| message.seq).max()
    }

    /// Waits until `done` holds for this listener, draining as it goes; panics after `timeout`,
    /// or at once if the stream ended first.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&GroupListener) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            self.drain();
            if done(self) {
                return;
            }
            if let Some(reason) = &self.ended {
                panic!("{what}: the stream of {} at {} ended first: {reason}", self.group, self.addr);
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not reached within {timeout:?} at {} ({} messages, last seq {:?})",
                self.addr,
                self.messages.len(),
                self.messages.last().map(|message| message.seq)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for GroupListener {
    fn drop(&mut self) {
        // Closing the stream wakes the reader's blocked read; draining lets a reader blocked on a
        // full queue finish, so the join below cannot hang.
        self.closer.close();
        while self.items.recv().is_ok() {}
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// The listener thread: reads the stream and sends on the messages and gaps, then why it stopped.
fn read_events(mut stream: GroupStream, sender: &mpsc::SyncSender<StreamItem>) {
    let reason = loop {
        let item = match stream.next_event() {
            Ok(Some(GroupEvent::Message(message))) => StreamItem::Message(message.parsed),
            Ok(Some(GroupEvent::Gap(gap))) => StreamItem::Gap { from: gap.parsed.from, to: gap.parsed.to },
            Ok(Some(GroupEvent::Error(reason))) => break format!("the node gave up on the stream: {reason}"),
            Ok(Some(GroupEvent::Unreadable { event, reason })) => {
                break format!("an {event:?} event that does not follow the contract: {reason}");
            }
            Ok(None) => break "the node ended the stream".to_string(),
            Err(error) => break format!("{error:#}"),
        };
        if sender.send(item).is_err() {
            return; // the listener was dropped
        }
    };
    let _ = sender.send(StreamItem::Ended(reason));
}

/// A libp2p request/response codec that sends whatever bytes it is given and reads whatever
/// comes back (at most 4 MiB): a hostile peer's, for tests that send what the node's own codecs
/// would never encode.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

impl libp2p::request_response::Codec for RawCodec {
    type Protocol = libp2p::StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &libp2p::StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        use futures::AsyncReadExt;
        let mut buf = Vec::new();
        io.take(4 << 20).read_to_end(&mut buf).await?;
        Ok(buf)
    }
    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        protocol: &libp2p::StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        self.read_request(protocol, io).await
    }
    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &libp2p::StreamProtocol,
        io: &mut T,
        request: Vec<u8>,
    ) -> std::io::Result<()> {
        use futures::AsyncWriteExt;
        io.write_all(&request).await?;
        io.close().await
    }
    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        protocol: &libp2p::StreamProtocol,
        io: &mut T,
        response: Vec<u8>,
    ) -> std::io::Result<()> {
        self.write_request(protocol, io, response).await
    }
}
