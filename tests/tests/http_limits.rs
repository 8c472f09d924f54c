//! The HTTP server's limits, end to end, with a real node process: 2,000 connections that never
//! finish their headers leave `/v1/status` answering and are closed after the header time-out,
//! as is a kept-alive connection left idle; past `--max-listeners` group streams a new listener
//! gets 503 with the API's error body, and one that leaves frees its slot.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use overlay_api::{ErrorBody, path};
use overlay_tests::{Cluster, GroupListener, poll};

const NODE: &str = env!("CARGO_BIN_EXE_overlay-node-e2e");

const SLOW_CONNECTIONS: usize = 2_000;
/// Short, so that the test sees the node close what it holds; long enough that all 2,000 are
/// still open while `/v1/status` is asked on a busy 2-core machine.
const HEADER_TIMEOUT: Duration = Duration::from_secs(8);
const DEADLINE: Duration = Duration::from_secs(30);

/// Raises this process's soft limit on open files (the node inherits it) to hold the slow
/// connections on both ends, with room for everything else.
fn raise_fd_limit(needed: u64) {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < needed {
        assert!(hard >= needed, "the hard limit on open files ({hard}) is below {needed}");
        setrlimit(Resource::RLIMIT_NOFILE, needed, hard).expect("setrlimit");
    }
}

/// Waits until `stream` is closed by the node (end of stream or reset) and returns what it sent
/// before closing; fails if it is still open after `within`.
fn closed_by_node(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(within)).expect("a read time-out");
    let mut received = Vec::new();
    match stream.read_to_end(&mut received) {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {}
        Err(e) => panic!("the node did not close the connection within {within:?}: {e}"),
    }
    received
}

#[test]
fn slow_headers_do_not_stop_status_and_are_closed_after_the_timeout() {
    raise_fd_limit(3 * SLOW_CONNECTIONS as u64);
    let timeout_ms = HEADER_TIMEOUT.as_millis().to_string();
    let cluster = Cluster::start(NODE, 1, &["--http-header-timeout-ms", &timeout_ms]);
    let http = cluster.http(0);
    let addr = cluster.nodes[0].http.clone();
    poll("the node answers", DEADLINE, || Ok(http.status().ok()));

    let opened = Instant::now();
    let mut slow: Vec<TcpStream> = (0..SLOW_CONNECTIONS)
        .map(|i| {
            let mut stream = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connection {i}: {e}"));
            // A request line and one header, and never the blank line that ends the head.
            write!(stream, "GET /v1/status HTTP/1.1\r\nHost: {addr}\r\n").expect("sent");
            stream
        })
        .collect();
    let opening = opened.elapsed();

    // The node holds every one of them and still answers.
    let open = poll("/v1/status answers with the slow connections open", DEADLINE, || {
        http.status()?;
        let open = http.metric("overlay_http_connections_open")?;
        Ok((open >= SLOW_CONNECTIONS as f64).then_some(open))
    });
    assert!(
        opened.elapsed() < HEADER_TIMEOUT,
        "the check must finish before the first slow connection times out (opening took {opening:?}, \
         {open} open)"
    );

    // Each is closed once its time-out passes, with nothing served.
    for (i, stream) in slow.iter_mut().enumerate() {
        let left = (opened + HEADER_TIMEOUT + DEADLINE).saturating_duration_since(Instant::now());
        let received = closed_by_node(stream, left.max(Duration::from_millis(1)));
        assert!(
            !String::from_utf8_lossy(&received).starts_with("HTTP/1.1 200"),
            "connection {i} was answered without finishing its request"
        );
    }
    assert!(
        opened.elapsed() >= HEADER_TIMEOUT,
        "connections closed before the header time-out ({:?})",
        opened.elapsed()
    );
    drop(slow);
    poll("the closed connections are released", DEADLINE, || {
        // A new client each time: a kept-alive one may have been closed as idle meanwhile.
        Ok((cluster.http(0).metric("overlay_http_connections_open")? < 10.0).then_some(()))
    });

    // A kept-alive connection gets its answer, then is closed once idle for the same time-out.
    let mut idle = TcpStream::connect(&addr).expect("connects");
    write!(idle, "GET {} HTTP/1.1\r\nHost: {addr}\r\n\r\n", path::STATUS).expect("sent");
    let started = Instant::now();
    let received = closed_by_node(&mut idle, HEADER_TIMEOUT + DEADLINE);
    assert!(String::from_utf8_lossy(&received).starts_with("HTTP/1.1 200"), "the request was answered");
    assert!(started.elapsed() >= HEADER_TIMEOUT, "the idle connection was closed early");
    cluster.http(0).status().expect("the node still answers");
}

/// The status of `GET` on `group`'s message stream, and the error body if it is not 200; the
/// connection is closed on return, so an accepted stream is left again at once.
fn open_listener(addr: &str, group: &str) -> anyhow::Result<(u16, Option<ErrorBody>)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        stream,
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
        path::group_listen(group, None)
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        anyhow::ensure!(stream.read(&mut byte)? == 1, "closed before the head ended");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head)?;
    let status: u16 = head.split(' ').nth(1).unwrap_or_default().parse()?;
    if status == 200 {
        return Ok((status, None));
    }
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    // `Connection: close`: the body runs to the end of the stream, possibly chunked; the JSON
    // object is the part between the outer braces.
    let json = &body[body.find('{').unwrap_or(0)..=body.rfind('}').unwrap_or(0)];
    Ok((status, Some(serde_json::from_str(json)?)))
}

#[test]
fn a_listener_past_the_cap_gets_503_until_one_leaves() {
    let cluster = Cluster::start(NODE, 1, &["--max-listeners", "2"]);
    let http = cluster.http(0);
    let addr = cluster.nodes[0].http.clone();
    let group = "capped";
    let first = poll("a first listener", DEADLINE, || Ok(GroupListener::open(&addr, group, None).ok()));
    let _second = GroupListener::open(&addr, group, None).expect("a second listener fits");

    let (status, body) = open_listener(&addr, group).expect("an answer");
    assert_eq!(status, 503, "a third listener is refused");
    let error = body.expect("an error body").error;
    assert!(error.contains("2 group listeners"), "the error says why: {error}");
    assert!(http.metric("overlay_http_listeners_refused_total").expect("metric") >= 1.0);
    assert_eq!(http.metric("overlay_http_listeners_open").expect("metric"), 2.0);

    // Its slot is freed when its stream closes.
    drop(first);
    poll("a listener fits again", DEADLINE, || Ok((open_listener(&addr, group)?.0 == 200).then_some(())));
}
