//! Harness for end-to-end tests: starts real `overlay-node` processes on 127.0.0.1 with temporary
//! data directories and ports chosen by the OS, talks to them over HTTP, kills and restarts them,
//! and polls for conditions with deadlines (never sleep-then-assert).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
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

    /// POST bytes to a path.
    pub fn post(&self, path: &str, body: &[u8]) -> anyhow::Result<Answer> {
        Self::finish(self.agent.post(format!("{}{path}", self.base)).send(body))
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

/// Percent-encodes `segment` as one URL path segment (or query value): every byte except RFC 3986
/// unreserved characters is encoded.
pub fn encode_segment(segment: &str) -> String {
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// One message a [`GroupListener`] received (`event: message`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// The group it was sent to.
    pub group: String,
    /// Its sequence number.
    pub seq: u64,
    /// The sender label.
    pub from: String,
    /// The message.
    pub body: String,
    /// When it was sent, in ms since the Unix epoch.
    pub ts: u64,
}

/// What a listener's reader thread passes on.
#[derive(Debug)]
enum StreamItem {
    Message(Delivered),
    Gap {
        from: u64,
        to: u64,
    },
    /// The stream ended or broke, or carried something that does not follow the contract.
    Ended(String),
}

/// Longest silence a listener accepts before it calls its stream dead: the node sends a
/// keep-alive comment every 15 s.
const STREAM_SILENCE_LIMIT: Duration = Duration::from_secs(60);

/// Most items a listener's thread queues for the test; a test that does not drain just pushes back
/// on the node through TCP.
const LISTENER_QUEUE: usize = 16_384;

/// A subscriber to `GET /v1/groups/{g}/messages` (server-sent events) on one node: a thread reads
/// the stream over plain `std::net` (so dropping the listener can close the socket and end the
/// thread) and hands messages and gaps to the test, which collects them with [`GroupListener::drain`].
#[derive(Debug)]
pub struct GroupListener {
    /// The node's HTTP `host:port`.
    pub addr: String,
    /// The group.
    pub group: String,
    /// Every message received so far (after [`GroupListener::drain`]), in arrival order.
    pub messages: Vec<Delivered>,
    /// Every gap reported so far, as `(from, to)`.
    pub gaps: Vec<(u64, u64)>,
    /// Why the stream ended, once it has.
    pub ended: Option<String>,
    items: mpsc::Receiver<StreamItem>,
    socket: TcpStream,
    reader: Option<JoinHandle<()>>,
}

impl GroupListener {
    /// Opens the stream of `group` on the node at `addr` (`host:port`), replaying from `from` if
    /// given. Fails unless the node answers 200 (e.g. 503 while the group's root is unreachable).
    pub fn open(addr: &str, group: &str, from: Option<u64>) -> anyhow::Result<GroupListener> {
        let target = addr.to_socket_addrs()?.next().context("no address")?;
        let socket = TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        socket.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut path = format!("/v1/groups/{}/messages", encode_segment(group));
        if let Some(from) = from {
            path.push_str(&format!("?from={from}"));
        }
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
        );
        (&socket).write_all(request.as_bytes())?;
        let mut reader = BufReader::new(socket.try_clone()?);
        let head = read_head(&mut reader).with_context(|| format!("the head of GET {path}"))?;
        let mut body = Body::new(reader, &head);
        if head.status != 200 {
            let mut text = Vec::new();
            while let Some(chunk) = body.next_chunk()? {
                text.extend(chunk);
                if text.len() > 64 * 1024 {
                    break;
                }
            }
            bail!("GET {path} answered {}: {}", head.status, String::from_utf8_lossy(&text));
        }
        socket.set_read_timeout(Some(STREAM_SILENCE_LIMIT))?;
        let (sender, items) = mpsc::sync_channel(LISTENER_QUEUE);
        let reader = std::thread::Builder::new()
            .name(format!("listener {addr} {group}"))
            .spawn(move || read_events(body, &sender))
            .context("spawning the listener thread")?;
        Ok(GroupListener {
            addr: addr.to_string(),
            group: group.to_string(),
            messages: Vec::new(),
            gaps: Vec::new(),
            ended: None,
            items,
            socket,
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
        // Closing the socket wakes the reader's blocked read; draining lets a reader blocked on a
        // full queue finish, so the join below cannot hang.
        let _ = self.socket.shutdown(Shutdown::Both);
        while self.items.recv().is_ok() {}
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Status and the headers that matter for reading the body.
struct Head {
    status: u16,
    chunked: bool,
    content_length: Option<u64>,
}

fn read_head(reader: &mut impl BufRead) -> anyhow::Result<Head> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("status line {line:?}"))?;
    let (mut chunked, mut content_length) = (false, None);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("the connection closed inside the head");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            } else if name == "content-length" {
                content_length = value.parse().ok();
            }
        }
    }
    Ok(Head { status, chunked, content_length })
}

/// An HTTP/1.1 response body: chunked, of a known length, or up to the end of the connection.
struct Body {
    reader: BufReader<TcpStream>,
    chunked: bool,
    remaining: Option<u64>,
    done: bool,
}

impl Body {
    fn new(reader: BufReader<TcpStream>, head: &Head) -> Body {
        Body { reader, chunked: head.chunked, remaining: head.content_length, done: false }
    }

    /// The next bytes of the body; `None` at its end.
    fn next_chunk(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        if self.chunked {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("the connection closed inside a chunked body");
            }
            let size = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size, 16).with_context(|| format!("chunk size {line:?}"))?;
            if size == 0 {
                self.done = true;
                return Ok(None);
            }
            let mut chunk = vec![0; size];
            self.reader.read_exact(&mut chunk)?;
            let mut crlf = [0; 2];
            self.reader.read_exact(&mut crlf)?;
            return Ok(Some(chunk));
        }
        let mut chunk = vec![0; 16 * 1024];
        let want = self.remaining.map_or(chunk.len(), |left| chunk.len().min(left as usize));
        if want == 0 {
            self.done = true;
            return Ok(None);
        }
        let read = self.reader.read(&mut chunk[..want])?;
        if read == 0 {
            self.done = true;
            return Ok(None);
        }
        if let Some(left) = &mut self.remaining {
            *left -= read as u64;
        }
        chunk.truncate(read);
        Ok(Some(chunk))
    }
}

/// The listener thread: reads the body, splits it into server-sent events and sends on the
/// messages and gaps, then why it stopped.
fn read_events(mut body: Body, sender: &mpsc::SyncSender<StreamItem>) {
    let mut line = Vec::new();
    let (mut event, mut data) = (String::new(), String::new());
    let reason = loop {
        let chunk = match body.next_chunk() {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break "the node ended the stream".to_string(),
            Err(error) => break format!("the stream broke: {error:#}"),
        };
        for byte in chunk {
            if byte != b'\n' {
                line.push(byte);
                continue;
            }
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            line.clear();
            if text.is_empty() {
                if !data.is_empty() {
                    data.pop();
                    let item = parse_event(&event, &data);
                    if sender.send(item).is_err() {
                        return;
                    }
                }
                event.clear();
                data.clear();
            } else if text.starts_with(':') {
                // keep-alive comment
            } else {
                let (field, value) = text.split_once(':').unwrap_or((&text, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => event = value.to_string(),
                    "data" => {
                        data.push_str(value);
                        data.push('\n');
                    }
                    _ => {}
                }
            }
        }
    };
    let _ = sender.send(StreamItem::Ended(reason));
}

fn parse_event(event: &str, data: &str) -> StreamItem {
    let parsed: Result<Value, _> = serde_json::from_str(data);
    let Ok(json) = parsed else {
        return StreamItem::Ended(format!("event {event:?} carries no JSON: {data:?}"));
    };
    let number = |field: &str| json[field].as_u64();
    let text = |field: &str| json[field].as_str().map(str::to_string);
    match event {
        "message" | "" => match (text("group"), number("seq"), text("from"), text("body"), number("ts")) {
            (Some(group), Some(seq), Some(from), Some(body), Some(ts)) => {
                StreamItem::Message(Delivered { group, seq, from, body, ts })
            }
            _ => StreamItem::Ended(format!("a message event without group, seq, from, body and ts: {data}")),
        },
        "gap" => match (number("from"), number("to")) {
            (Some(from), Some(to)) => StreamItem::Gap { from, to },
            _ => StreamItem::Ended(format!("a gap event without from and to: {data}")),
        },
        other => StreamItem::Ended(format!("an event of unknown kind {other:?}: {data}")),
    }
}
