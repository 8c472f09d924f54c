//! The node's web page in a real browser: headless Chromium loads `GET /` from a node of a
//! five-node ring, and the test reads the DOM the page's script built. It checks every node is
//! drawn with its ids and with the key count that node's own status reports, that `/?key=`
//! highlights the owner and replicas the lookup API names and lists the path the lookup API
//! reports (two hops: the nodes keep successor lists of two, shorter than the ring), that
//! `/?group=` draws the tree the tree API walks, that a killed node is marked, and that the page
//! raised no JavaScript error. Screenshots are kept in `target/tmp/page/`.
//!
//! The browser is driven with its command line only (`--dump-dom`, `--screenshot`), no
//! DevTools-protocol client: each look is a fresh Chromium that loads the page, lets its
//! scripts run for a few seconds of virtual time (the clock stops while a request is out, so
//! slow answers are waited for) and prints the DOM. Checks re-look until they hold or a deadline
//! passes. The looks share one profile directory, so the page's memory of the nodes it has seen
//! (local storage) carries from one look to the next, as it does across reloads for a person.
//!
//! Chromium is Debian's `chromium` (`.ci/run` installs it); `OVERLAY_CHROMIUM` names another
//! binary. Without one the test fails and says how to install it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use overlay_api::path;
use overlay_tests::{Cluster, poll};

const NODE: &str = env!("CARGO_BIN_EXE_overlay-node-e2e");

const NODES: usize = 5;
/// The node whose page the test opens, and the one it kills (never the same).
const PAGE_NODE: usize = 0;
const VICTIM: usize = 3;
/// A node other than the page's, whose key count the page only knows from the ring walk.
const OTHER_NODE: usize = 1;
/// Successor lists shorter than the ring, so that a lookup for a key past the serving node's list
/// routes through another node: its path has two hops, the node that pointed on and the owner.
const SUCCESSORS: &str = "2";
/// Candidates for the key the page shows (`page/key-0`, ...): the first whose lookup takes two hops
/// is used. With lists of two in a ring of five, two keys in five do; none of 32 with odds of
/// 0.6^32.
const KEY_CANDIDATES: usize = 32;
/// More keys, so that every node stores some and their counts differ.
const MORE_KEYS: usize = 12;
const GROUP: &str = "page-room";
/// The group's members.
const MEMBERS: [usize; 2] = [2, 4];

const RING_DEADLINE: Duration = Duration::from_secs(60);
/// Each check re-looks at the page until it holds, for at most this long.
const PAGE_DEADLINE: Duration = Duration::from_secs(60);
/// Virtual time the page's script gets before the DOM is read: its loops ask once a second, and
/// the first picture needs the status, then the ring walk.
const SCRIPT_BUDGET_MS: u32 = 4_000;
/// Wall-clock limit of one Chromium run.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// Headless Chromium with the test's profile and artifact directories.
struct Browser {
    binary: String,
    profile: PathBuf,
    artifacts: PathBuf,
    looks: usize,
}

/// What one look at the page saw.
struct Look {
    dom: String,
    /// Console lines that are errors: uncaught exceptions, refused loads, failed requests.
    console_errors: Vec<String>,
}

impl Browser {
    fn new(artifacts: &Path) -> Browser {
        let binary = std::env::var("OVERLAY_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let found =
            Command::new(&binary).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
        assert!(
            found.is_ok_and(|s| s.success()),
            "the page test needs headless Chromium: `apt-get install chromium` (Debian), or set \
             OVERLAY_CHROMIUM to a Chromium binary"
        );
        let _ = std::fs::remove_dir_all(artifacts);
        std::fs::create_dir_all(artifacts).expect("artifact directory");
        Browser { binary, profile: artifacts.join("profile"), artifacts: artifacts.to_path_buf(), looks: 0 }
    }

    /// Runs Chromium on `url` with `mode` (`--dump-dom` or `--screenshot=...`); returns stdout
    /// and stderr.
    fn run(&mut self, url: &str, mode: &str) -> anyhow::Result<(String, String)> {
        self.looks += 1;
        let stdout_path = self.artifacts.join(format!("look-{}.html", self.looks));
        let stderr_path = self.artifacts.join(format!("look-{}.log", self.looks));
        let mut child = Command::new(&self.binary)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"])
            .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
            .args(["--enable-logging=stderr", "--v=0", "--window-size=1400,1000"])
            .arg(format!("--user-data-dir={}", self.profile.display()))
            .arg(format!("--virtual-time-budget={SCRIPT_BUDGET_MS}"))
            .arg(mode)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path)?)
            .stderr(std::fs::File::create(&stderr_path)?)
            .spawn()
            .context("starting chromium")?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                let stdout = std::fs::read_to_string(&stdout_path)?;
                let stderr = std::fs::read_to_string(&stderr_path)?;
                if !status.success() {
                    bail!("chromium exited with {status}: {}", tail(&stderr));
                }
                return Ok((stdout, stderr));
            }
            if started.elapsed() > BROWSER_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                bail!("chromium did not finish {url} within {BROWSER_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Loads `url`, lets the page's script run, and reads the DOM.
    fn look(&mut self, url: &str) -> anyhow::Result<Look> {
        let (dom, stderr) = self.run(url, "--dump-dom")?;
        Ok(Look { dom, console_errors: console_errors(&stderr) })
    }

    /// Saves a screenshot of `url` as `name` in the artifact directory.
    fn screenshot(&mut self, url: &str, name: &str) -> PathBuf {
        let file = self.artifacts.join(name);
        let (_, stderr) = self.run(url, &format!("--screenshot={}", file.display())).expect("screenshot");
        assert!(file.exists(), "no screenshot written: {}", tail(&stderr));
        let errors = console_errors(&stderr);
        assert!(errors.is_empty(), "JavaScript errors while taking {name}: {errors:#?}");
        file
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Console lines Chromium logs (`...:CONSOLE(line)] "text", source: ...`) that report errors.
fn console_errors(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .filter(|l| {
            [
                "Uncaught",
                "Refused to",
                "Failed to load resource",
                "TypeError",
                "ReferenceError",
                "SyntaxError",
            ]
            .iter()
            .any(|marker| l.contains(marker))
        })
        .map(str::to_owned)
        .collect()
}

/// The attributes of every start tag in `dom` that has `attribute`, in document order. Chromium
/// serialises attributes as `name="value"` with `"` escaped, which is all this reads.
fn tags_with(dom: &str, attribute: &str) -> Vec<BTreeMap<String, String>> {
    let needle = format!(" {attribute}=");
    let mut tags = Vec::new();
    let mut rest = dom;
    while let Some(start) = rest.find('<') {
        let Some(end) = rest[start..].find('>') else { break };
        let tag = &rest[start + 1..start + end];
        rest = &rest[start + end + 1..];
        if tag.contains(&needle) {
            tags.push(attributes(tag));
        }
    }
    tags
}

fn attributes(tag: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut rest = tag.split_once(' ').map_or("", |(_, r)| r).trim_start();
    while !rest.is_empty() {
        let name_end = rest.find(['=', ' ']).unwrap_or(rest.len());
        let name = rest[..name_end].to_owned();
        rest = &rest[name_end..];
        if let Some(after) = rest.strip_prefix("=\"") {
            let close = after.find('"').unwrap_or(after.len());
            map.insert(name, after[..close].replace("&quot;", "\"").replace("&amp;", "&"));
            rest = after.get(close + 1..).unwrap_or("").trim_start();
        } else {
            map.insert(name, String::new());
            rest = rest.trim_start();
        }
    }
    map
}

/// The `<body>` tag's attributes.
fn body_of(dom: &str) -> BTreeMap<String, String> {
    tags_with(dom, "data-page").into_iter().next().unwrap_or_default()
}

/// The page's drawn nodes: `#nodes` rows, by peer id.
fn drawn_nodes(dom: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    tags_with(dom, "data-peer-id").into_iter().map(|a| (a["data-peer-id"].clone(), a)).collect()
}

/// Fails the test at once if the page recorded a JavaScript error or the console logged one.
fn assert_no_errors(look: &Look) {
    assert!(look.console_errors.is_empty(), "console errors: {:#?}", look.console_errors);
    let body = body_of(&look.dom);
    assert_eq!(
        body.get("data-js-errors").map(String::as_str),
        Some("0"),
        "the page's script recorded errors (or never ran): {}",
        look.dom.split("<pre id=\"js-errors\"").nth(1).unwrap_or("").chars().take(2000).collect::<String>()
    );
}

#[test]
fn the_page_shows_the_ring_a_key_a_group_and_a_dead_node() {
    let test_started = Instant::now();
    let mut cluster = Cluster::start(NODE, NODES, &["--successors", SUCCESSORS]);
    cluster.wait_for_correct_ring(RING_DEADLINE);
    let api = cluster.http(PAGE_NODE);
    let page_peer = cluster.nodes[PAGE_NODE].peer_id.clone();
    let key = (0..KEY_CANDIDATES)
        .map(|i| format!("page/key-{i}"))
        .find(|k| api.api().lookup(k).is_ok_and(|l| l.parsed.hops >= 2))
        .expect("a key whose lookup from the serving node takes two hops");
    let key = key.as_str();
    api.api().put(key, b"bonjour", None).expect("put the key");
    for i in 0..MORE_KEYS {
        api.api().put(&format!("page/more-{i}"), b"x", None).expect("put a key");
    }
    for &member in &MEMBERS {
        cluster.http(member).api().join_group(GROUP).expect("join the group");
    }
    let base = api.base.clone();
    let peers: BTreeSet<String> = cluster.nodes.iter().map(|n| n.peer_id.clone()).collect();
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("page");
    let mut browser = Browser::new(&artifacts);

    // The ring: one drawn node per member, this node marked, all alive.
    let page = format!("{base}{}", path::page(None, None));
    let took = Instant::now();
    poll("the page draws the whole ring", PAGE_DEADLINE, || {
        let look = browser.look(&page)?;
        assert_no_errors(&look);
        let nodes = drawn_nodes(&look.dom);
        let body = body_of(&look.dom);
        if body.get("data-page").map(String::as_str) != Some("ready") || nodes.len() != NODES {
            bail!("{} nodes drawn, page {:?}", nodes.len(), body.get("data-page"));
        }
        assert_eq!(nodes.keys().cloned().collect::<BTreeSet<_>>(), peers, "the drawn nodes are the ring's");
        for (i, node) in cluster.nodes.iter().enumerate() {
            let ring_id = cluster.http(i).status()?.ring_id;
            assert_eq!(nodes[&node.peer_id]["data-ring-id"], ring_id, "data-ring-id of {}", node.peer_id);
        }
        let alive = nodes.values().filter(|a| a["data-state"] == "alive").count();
        let selves: Vec<&String> =
            nodes.iter().filter(|(_, a)| a.contains_key("data-self")).map(|(p, _)| p).collect();
        assert_eq!(
            selves,
            [&cluster.nodes[PAGE_NODE].peer_id],
            "exactly the serving node is marked as this node"
        );
        Ok((alive == NODES).then_some(()))
    });
    eprintln!("the page drew {NODES} nodes {:?} after the ring formed", took.elapsed());

    // Every node's key count, as each reported it to the ring walk, is the one its own status
    // gives (the serving node's comes from its status directly; the others' only from the walk).
    poll("the page shows every node's stored keys", PAGE_DEADLINE, || {
        let look = browser.look(&page)?;
        assert_no_errors(&look);
        let nodes = drawn_nodes(&look.dom);
        let mut differ = Vec::new();
        for (i, node) in cluster.nodes.iter().enumerate() {
            let shown = nodes.get(&node.peer_id).and_then(|a| a.get("data-keys")).cloned();
            let own = cluster.http(i).status()?.keys;
            if shown.as_deref() != Some(own.to_string().as_str()) {
                differ.push(format!("node {i}: page {shown:?}, its status {own}"));
            }
        }
        if differ.is_empty() {
            let other = cluster.http(OTHER_NODE).status()?.keys;
            // 13 keys, 3 replicas each, 5 nodes: a node stores none with odds of 0.4^13.
            assert!(other > 0, "node {OTHER_NODE} stores none of {} keys", MORE_KEYS + 1);
            Ok(Some(()))
        } else {
            bail!("key counts differ: {differ:?}")
        }
    });

    // A key: the owner and replicas the page marks are the ones the lookup API names, and the path
    // it lists is the one the lookup API reports: this node, then the nodes that answered.
    let key_page = format!("{base}{}", path::page(Some(key), None));
    poll("the page marks the key's owner and replicas and lists its path", PAGE_DEADLINE, || {
        let look = browser.look(&key_page)?;
        assert_no_errors(&look);
        let lookup = api.api().lookup(key)?.parsed;
        let api_path: Vec<String> =
            std::iter::once(page_peer.clone()).chain(lookup.path.iter().map(|n| n.peer_id.clone())).collect();
        assert_eq!(lookup.path.len(), lookup.hops as usize, "the API lists every hop of a short lookup");
        let owner = lookup.owner.context("the lookup names an owner")?.peer_id;
        let replicas: BTreeSet<String> =
            lookup.replicas.iter().map(|r| r.peer_id.clone()).filter(|p| *p != owner).collect();
        let nodes = drawn_nodes(&look.dom);
        let marked = |role: &str| -> BTreeSet<String> {
            nodes
                .iter()
                .filter(|(_, a)| a.get("data-role").is_some_and(|r| r == role))
                .map(|(p, _)| p.clone())
                .collect()
        };
        let hops = tags_with(&look.dom, "data-hop-peer");
        let page_path: Vec<String> = hops.iter().map(|h| h["data-hop-peer"].clone()).collect();
        let numbered = hops.iter().enumerate().all(|(i, h)| h["data-hop"] == i.to_string());
        if marked("owner") == BTreeSet::from([owner.clone()])
            && marked("replica") == replicas
            && page_path == api_path
        {
            assert!(numbered, "hops are numbered from 0 in order: {hops:?}");
            assert_eq!(page_path.last(), Some(&owner), "the path ends at the owner");
            Ok(Some(()))
        } else {
            bail!(
                "marked owner {:?} replicas {:?} path {page_path:?}; the API says owner {owner} \
                 replicas {replicas:?} path {api_path:?}",
                marked("owner"),
                marked("replica"),
            )
        }
    });

    // A group: the page's tree is the tree API's, node for node, parent for parent.
    let group_page = format!("{base}{}", path::page(None, Some(GROUP)));
    poll("the page draws the group's tree", PAGE_DEADLINE, || {
        let look = browser.look(&group_page)?;
        assert_no_errors(&look);
        let tree = api.api().group_tree(GROUP)?.parsed;
        let wanted: BTreeSet<(String, String, Option<String>)> =
            tree.nodes.iter().map(|n| (n.node.peer_id.clone(), n.role.clone(), n.parent.clone())).collect();
        let drawn: BTreeSet<(String, String, Option<String>)> = tags_with(&look.dom, "data-tree-node")
            .into_iter()
            .map(|a| {
                (a["data-tree-node"].clone(), a["data-tree-role"].clone(), a.get("data-tree-parent").cloned())
            })
            .collect();
        for &member in &MEMBERS {
            let peer = &cluster.nodes[member].peer_id;
            anyhow::ensure!(
                tree.nodes.iter().any(|n| &n.node.peer_id == peer && n.member),
                "{peer} not yet in the tree"
            );
        }
        if tree.complete && drawn == wanted { Ok(Some(())) } else { bail!("drawn {drawn:?}, API {wanted:?}") }
    });
    let both = format!("{base}{}", path::page(Some(key), Some(GROUP)));
    let shot = browser.screenshot(&both, "ring-key-group.png");
    eprintln!("screenshot: {}", shot.display());

    // A killed node is marked, and still drawn.
    let victim = cluster.nodes[VICTIM].peer_id.clone();
    cluster.kill(VICTIM);
    let killed = Instant::now();
    poll("the page marks the killed node", PAGE_DEADLINE, || {
        let look = browser.look(&page)?;
        assert_no_errors(&look);
        let nodes = drawn_nodes(&look.dom);
        let state = nodes.get(&victim).map(|a| a["data-state"].clone());
        let others_alive = nodes.iter().filter(|(p, a)| **p != victim && a["data-state"] == "alive").count();
        let marked = matches!(state.as_deref(), Some("dead" | "unreachable"));
        if nodes.len() == NODES && marked && others_alive == NODES - 1 {
            Ok(Some(()))
        } else {
            bail!("{} drawn, the killed node is {state:?}, {others_alive} others alive", nodes.len())
        }
    });
    eprintln!("the page marked the killed node {:?} after the kill", killed.elapsed());
    let shot = browser.screenshot(&both, "ring-after-kill.png");
    eprintln!("screenshot: {}", shot.display());
    eprintln!("{} browser runs; the test took {:?}", browser.looks, test_started.elapsed());
}

/// A node whose API needs a token (one given on loopback, which it enforces): the page still loads
/// and shows the node's status (open), asks for the token in its form (not `window.prompt`, which
/// would block the page), and sends nothing else that needs the token until it has one: the one
/// refused request that found out is the only error on the console.
#[test]
fn the_page_of_a_node_that_needs_a_token_asks_for_it() {
    let cluster = Cluster::start(NODE, 1, &["--api-token", "page-test-token"]);
    let api = cluster.http(0);
    poll("the node is a member", RING_DEADLINE, || Ok(api.status()?.member.then_some(())));
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("page-token");
    let mut browser = Browser::new(&artifacts);
    let page = format!("{}{}", api.base, path::page(None, None));
    poll("the page asks for the token", PAGE_DEADLINE, || {
        let look = browser.look(&page)?;
        let unexpected: Vec<&String> = look.console_errors.iter().filter(|l| !l.contains("401")).collect();
        assert!(unexpected.is_empty(), "console errors: {unexpected:#?}");
        assert!(look.console_errors.len() <= 1, "refused more than once: {:#?}", look.console_errors);
        let body = body_of(&look.dom);
        assert_eq!(body.get("data-js-errors").map(String::as_str), Some("0"), "the page's script failed");
        let form = tags_with(&look.dom, "id")
            .into_iter()
            .find(|a| a.get("id").map(String::as_str) == Some("token-form"))
            .expect("the token form");
        let asking =
            body.get("data-auth").map(String::as_str) == Some("needed") && !form.contains_key("hidden");
        if !asking {
            bail!("data-auth {:?}, form hidden: {}", body.get("data-auth"), form.contains_key("hidden"));
        }
        assert!(!look.dom.contains("connecting…"), "the status line shows the node: its status is open");
        Ok(Some(()))
    });
    browser.screenshot(&page, "token-form.png");
}

#[test]
fn the_dom_reader_finds_tags_and_attributes() {
    let dom = r#"<body data-page="ready" data-js-errors="0"><table><tr data-peer-id="A" data-ring-id="0a" data-state="alive" data-self=""><td>x</td></tr><tr data-peer-id="B" data-ring-id="f0" data-state="dead" data-role="owner"></tr></table></body>"#;
    let nodes = drawn_nodes(dom);
    assert_eq!(nodes.len(), 2);
    assert!(nodes["A"].contains_key("data-self"));
    assert_eq!(nodes["B"]["data-role"], "owner");
    assert_eq!(body_of(dom)["data-js-errors"], "0");
    let log = "[1:1:INFO:CONSOLE(3)] \"Uncaught TypeError: x is undefined\", source: http://127.0.0.1/page.js (3)\n\
               [1:1:INFO:CONSOLE(9)] \"fine\", source: x (9)";
    assert_eq!(console_errors(log).len(), 1);
}
