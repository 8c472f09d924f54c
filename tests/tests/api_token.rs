//! The HTTP API's bearer token, end to end, with real node processes and the real CLI.
//!
//! A node whose API binds every interface (`0.0.0.0`: not loopback, yet reachable from the test
//! on 127.0.0.1) generates a token on first start, keeps it in `<data-dir>/api-token` with mode
//! 0600, prints it once and refuses every request outside the open paths without it, whether it
//! comes from the API client or the CLI; a restart reuses the file. A node on loopback that is
//! given a token enforces it too, counts what it refuses in `/metrics`, and writes no file.
//! Neither ever logs the token.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use overlay_api::auth::{OPEN_PATHS, TOKEN_ENV, TOKEN_FILE_NAME};
use overlay_api::{ApiError, ErrorBody, path};
use overlay_tests::{Cluster, Http, poll};

const NODE: &str = env!("CARGO_BIN_EXE_overlay-node-e2e");
const CLI: &str = env!("CARGO_BIN_EXE_overlay-cli-e2e");

const UP_DEADLINE: Duration = Duration::from_secs(30);

/// Runs the CLI against `node` with `args`, with neither the developer's token nor cluster
/// directory in its environment unless `token_env` sets one.
fn cli(node: &str, token_env: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(CLI);
    command
        .args(["--node", node])
        .args(args)
        .env_remove(TOKEN_ENV)
        .env_remove(overlay_api::auth::TOKEN_FILE_ENV)
        .env_remove("OVERLAY_NODE")
        .env("OVERLAY_CLUSTER_DIR", "/nonexistent-overlay-cluster")
        .stdin(Stdio::null());
    if let Some(token) = token_env {
        command.env(TOKEN_ENV, token);
    }
    command.output().expect("the CLI runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The head of a raw answer to `GET path`, as the bytes on the wire say (the API client does not
/// show headers).
fn raw_head(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("the API accepts a connection");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("a time-out");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("sent");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("an answer");
    answer.split("\r\n\r\n").next().unwrap_or_default().to_ascii_lowercase()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("the token file exists").permissions().mode() & 0o777
}

/// Every protected request is refused with 401 and a JSON error; the open ones are answered.
fn assert_protected(http: &Http, what: &str) {
    for protected in [path::RING.to_owned(), path::kv("k", None), path::lookup("k"), path::GROUPS.to_owned()]
    {
        let answer = http.get(&protected).expect("an answer");
        assert_eq!(answer.status, 401, "{what}: GET {protected}");
        let body: ErrorBody = answer.parse().expect("a JSON error body");
        assert!(!body.error.is_empty());
    }
    let put = http.put(&path::kv("k", None), b"v").expect("an answer");
    assert_eq!(put.status, 401, "{what}: PUT");
    assert!(matches!(http.api().ring(), Err(ApiError::Unauthorized { .. })), "{what}: typed client");
    for open in OPEN_PATHS {
        assert_eq!(http.get(open).expect("an answer").status, 200, "{what}: GET {open} stays open");
    }
}

#[test]
fn an_api_on_every_interface_needs_the_token_it_generated() {
    let mut cluster = Cluster::start_bound(NODE, 1, "0.0.0.0:0", &[], &[]);
    let addr = cluster.nodes[0].http.clone();
    let token_file = cluster.nodes[0].data_dir.join(TOKEN_FILE_NAME);
    let anonymous = Http::new(&addr);
    poll("the node answers its status without a token", UP_DEADLINE, || {
        Ok(anonymous.status()?.member.then_some(()))
    });

    let token = std::fs::read_to_string(&token_file).expect("a token file").trim().to_owned();
    assert_eq!(token.len(), 64, "32 random bytes in hex");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(mode(&token_file), 0o600, "only the node's user may read the token");

    // Without a token, and with a wrong one: 401 with a bearer challenge.
    assert_protected(&anonymous, "no token");
    assert_protected(&Http::with_token(&addr, Some("not-the-token")), "a wrong token");
    let head = raw_head(&addr, &path::kv("k", None));
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");

    // With it: the API client.
    let http = Http::with_token(&addr, Some(&token));
    http.api().put("api-key", b"from the client", None).expect("a put with the token");
    assert_eq!(http.api().get("api-key", None).expect("a get").value, b"from the client");
    assert_eq!(http.api().ring().expect("the ring").parsed.nodes.len(), 1);

    // The CLI: refused without the token (saying how to give it), served with --api-token,
    // OVERLAY_API_TOKEN and --api-token-file; `status` is open.
    let url = format!("http://{addr}");
    let refused = cli(&url, None, &["get", "api-key"]);
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("--api-token"), "{}", text(&refused.stderr));
    let wrong = cli(&url, Some("wrong"), &["get", "api-key"]);
    assert_eq!(wrong.status.code(), Some(3), "{}", text(&wrong.stderr));
    let by_flag = cli(&url, None, &["get", "api-key", "--api-token", &token]);
    assert!(by_flag.status.success(), "{}", text(&by_flag.stderr));
    assert_eq!(by_flag.stdout, b"from the client");
    let by_env = cli(&url, Some(&token), &["put", "cli-key", "from the CLI"]);
    assert!(by_env.status.success(), "{}", text(&by_env.stderr));
    let file = token_file.to_str().expect("a UTF-8 path");
    let by_file = cli(&url, None, &["--api-token-file", file, "get", "cli-key"]);
    assert!(by_file.status.success(), "{}", text(&by_file.stderr));
    assert_eq!(by_file.stdout, b"from the CLI");
    let status = cli(&url, None, &["status", "--json"]);
    assert!(status.status.success(), "{}", text(&status.stderr));

    // A restart reuses the file: same token, same mode, and it is not printed again.
    cluster.kill(0);
    cluster.restart(0);
    let addr = cluster.nodes[0].http.clone();
    let http = Http::with_token(&addr, Some(&token));
    poll("the restarted node answers with the old token", UP_DEADLINE, || {
        Ok(http.api().ring().is_ok().then_some(()))
    });
    assert_eq!(std::fs::read_to_string(&token_file).expect("the token file").trim(), token);
    assert_eq!(mode(&token_file), 0o600);
    assert_protected(&Http::new(&addr), "no token, after the restart");
    let log = cluster.log(0);
    assert_eq!(log.matches(&token).count(), 1, "printed once, at the first start, and never logged:\n{log}");
}

#[test]
fn a_loopback_api_enforces_a_token_it_is_given() {
    const GIVEN: &str = "given-token-for-the-loopback-test";
    let cluster = Cluster::start(NODE, 1, &["--api-token", GIVEN]);
    let addr = cluster.nodes[0].http.clone();
    let anonymous = Http::new(&addr);
    poll("the node answers its status without a token", UP_DEADLINE, || {
        Ok(anonymous.status()?.member.then_some(()))
    });
    assert_protected(&anonymous, "no token");
    assert_protected(&Http::with_token(&addr, Some("wrong")), "a wrong token");
    // Each protected request of each round was refused and counted (6 a round); the open ones not.
    let refused = |reason: &str| {
        anonymous
            .metric(&format!("overlay_api_requests_refused_total{{reason=\"{reason}\"}}"))
            .expect("the metric")
    };
    assert_eq!((refused("missing"), refused("wrong"), refused("malformed")), (6.0, 6.0, 0.0));
    let http = Http::with_token(&addr, Some(GIVEN));
    http.api().put("k", b"v", None).expect("a put with the token");
    assert_eq!(http.api().get("k", None).expect("a get").value, b"v");
    assert!(!cluster.nodes[0].data_dir.join(TOKEN_FILE_NAME).exists(), "a given token is not written down");
    let log = cluster.log(0);
    assert!(!log.contains(GIVEN), "the token is never logged:\n{log}");
}
