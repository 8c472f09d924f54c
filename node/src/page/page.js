// The overlay node's page: the ring, a key, a group's tree and this node's load, live.
//
// Everything comes from the JSON API of the node that served the page (same origin, no
// libraries, nothing from the internet). Each kind of request runs in its own loop, at most once
// a second and never two of a kind at once; a hidden tab asks nothing.
//
// The ring is drawn on one canvas, whatever its size: a canvas redraw is O(nodes) pixels-only
// work, where an SVG element per node would cost layout and memory per node at 1,000 nodes.
// Beyond DENSE_RING nodes the plain members are aggregated into a density band, and only the
// nodes that matter (this node, its successors and fingers, a key's replicas and route, a group's
// tree, dead nodes) are drawn one by one. Beside the canvas, a table holds one row per drawn
// node; it is rebuilt only when the set of nodes or their states change, and it carries the DOM
// hooks tests and scripts read:
//
//   #nodes tr[data-peer-id][data-ring-id]  one per drawn node (exactly one element per node
//                                           carries data-peer-id), with
//     data-state="alive|dead|unreachable|unverified"
//                                           dead: seen by this browser, missing from the latest
//                                           complete walk of the ring; unreachable: the node the
//                                           walk stopped at; unverified: not reached by an
//                                           incomplete walk
//     data-self                             on this node
//     data-role="owner|replica"             the shown key's owner and its other replicas
//   #key-path li[data-hop][data-hop-peer]   the key's lookup path as /v1/lookup reports it: hop 0
//                                           is this node, hop i the i-th node that answered; the
//                                           last is the owner
//   #nodes tr[data-keys]                    the live keys the node stores, as it reported them to
//                                           the ring walk (absent when it did not say)
//   #group-tree li[data-tree-node=PEER_ID]  one per node of the group's tree, nested under its
//     data-tree-role="root|forwarder|member" parent, with data-depth and (but at the root)
//     data-tree-parent=PEER_ID
//   body[data-page="ready"]                 once the first ring is drawn
//   body[data-ring-nodes], [data-ring-complete], [data-key-state], [data-group-state],
//     [data-draw-ms] (the last redraw's time)
//   body[data-js-errors], #js-errors        uncaught errors of this page, counted and listed
//   body[data-auth="needed|refused|given"]  the API answered 401: the token form #token-form is
//                                           shown (needed; refused: the token given was wrong)
//                                           until a token is given

"use strict";

(() => {
  const RING = 1n << 160n;
  /// Most nodes drawn one by one; beyond, plain members become a density band.
  const DENSE_RING = 360;
  /// Nodes this browser remembers per serving node (to mark the ones that vanish as dead).
  const MAX_REMEMBERED = 4096;
  /// A node unseen for this long is forgotten rather than drawn as dead.
  const FORGET_MS = 10 * 60 * 1000;
  /// Samples per load chart (one a second).
  const CHART_SAMPLES = 120;
  /// Longest a request may take before the loop gives up on it and tries again.
  const REQUEST_TIMEOUT_MS = 10000;
  /// Longest path drawn; Chord needs about log2(N), so this is never reached on a sane ring.
  const MAX_ROUTE_HOPS = 64;

  const $ = (id) => document.getElementById(id);
  const body = document.body;

  // ----- uncaught errors, counted where a test (or a person) can see them ---------------------
  let jsErrors = 0;
  body.dataset.jsErrors = "0";
  function recordError(text) {
    jsErrors += 1;
    body.dataset.jsErrors = String(jsErrors);
    let list = $("js-errors");
    if (!list) {
      list = document.createElement("pre");
      list.id = "js-errors";
      list.className = "banner";
      document.querySelector("header").append(list);
    }
    list.textContent += `${text}\n`;
  }
  window.addEventListener("error", (e) => recordError(`error: ${e.message} (${e.filename}:${e.lineno})`));
  window.addEventListener("unhandledrejection", (e) => recordError(`unhandled rejection: ${e.reason}`));

  // ----- ids on the ring ---------------------------------------------------------------------
  const toId = (hex) => BigInt(`0x${hex}`);
  /// A ring id as the API writes it: 40 lowercase hex digits.
  const RING_ID = /^[0-9a-f]{40}$/;
  const ringDistance = (from, to) => (((to - from) % RING) + RING) % RING;
  /// Whether x lies in the open ring interval (a, b); (a, a) is the whole ring but a.
  function between(x, a, b) {
    const d = ringDistance(a, x);
    const w = ringDistance(a, b);
    return d > 0n && (w === 0n || d < w);
  }
  /// Radians from the top, clockwise: the top 32 bits are plenty for a picture.
  const angleOf = (id) => (Number(id >> 128n) / 4294967296) * 2 * Math.PI;
  const short = (peer) => (peer ? `…${peer.slice(-8)}` : "?");

  // ----- state -------------------------------------------------------------------------------
  const params = new URLSearchParams(location.search);
  const state = {
    status: null, // GET /v1/status of this node
    walk: null, // GET /v1/ring
    walkMs: 0,
    members: [], // drawn nodes, in ring order: {peer, ringId, id, addr, state, share, keys}
    byPeer: new Map(),
    remembered: null, // peer id -> {ring_id, addr, seen}
    key: params.get("key") || null,
    lookup: null,
    route: [],
    group: params.get("group") || null,
    tree: null,
    metrics: [], // {t, values}
    hover: null,
    picked: null,
    tableSignature: "",
  };

  // ----- the API token -----------------------------------------------------------------------
  // A node whose API is not on loopback answers 401 to everything but this page, /v1/status and
  // /metrics. The page then asks for the token once, in a form (window.prompt would block the
  // page's loops and hangs headless browsers), keeps it in sessionStorage (this tab only, gone
  // when it closes; never in a URL, which history and access logs keep) and sends it as a bearer
  // header with every request. Until a token is given, no request that needs one is sent.
  const TOKEN_STORAGE = "overlay-page/api-token";
  /// Paths the node serves without a token (overlay_api::auth::OPEN_PATHS).
  const OPEN_PATHS = new Set(["/", "/page.js", "/page.css", "/metrics", "/v1/status"]);
  let apiToken = "";
  try {
    apiToken = sessionStorage.getItem(TOKEN_STORAGE) || "";
  } catch (_) {
    // Storage disabled: the token lasts as long as the page.
  }
  let tokenNeeded = false;
  function askForToken(refused) {
    tokenNeeded = true;
    body.dataset.auth = refused ? "refused" : "needed";
    $("token-note").textContent = refused
      ? "that token was refused; this node's API needs its token"
      : "this node's API needs its token";
    if ($("token-form").hidden) {
      $("token-form").hidden = false;
      $("token-input").focus();
    }
  }
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (!token) return;
    apiToken = token;
    try {
      sessionStorage.setItem(TOKEN_STORAGE, token);
    } catch (_) {
      // Kept for this page only.
    }
    $("token-input").value = "";
    $("token-form").hidden = true;
    tokenNeeded = false;
    body.dataset.auth = "given";
  });

  // ----- requests ----------------------------------------------------------------------------
  class ApiFailure extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }
  async function request(path, kind) {
    const open = OPEN_PATHS.has(path.split("?")[0]);
    if (!open && tokenNeeded && !apiToken) throw new ApiFailure(401, "waiting for the API token");
    const sent = open ? "" : apiToken;
    const headers = sent ? { Authorization: `Bearer ${sent}` } : {};
    let answer;
    try {
      answer = await fetch(path, { cache: "no-store", headers, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
    } catch (e) {
      throw new ApiFailure(0, `no answer (${e.name})`);
    }
    if (answer.status === 401 && !open) {
      // Forget a refused token, unless another was given while this request was out.
      if (sent && sent === apiToken) {
        apiToken = "";
        try {
          sessionStorage.removeItem(TOKEN_STORAGE);
        } catch (_) {
          // Nothing kept.
        }
      }
      if (!apiToken) askForToken(Boolean(sent));
    }
    if (kind === "text") {
      if (!answer.ok) throw new ApiFailure(answer.status, answer.statusText);
      return answer.text();
    }
    const json = await answer.json().catch(() => null);
    if (!answer.ok) throw new ApiFailure(answer.status, (json && json.error) || answer.statusText);
    return json;
  }
  const segment = (text) => encodeURIComponent(text);

  /// Runs `task` again and again: never two at once, and each run at least `interval()` ms after
  /// the previous one started. A hidden tab skips its runs.
  function every(interval, task) {
    const run = async () => {
      const started = performance.now();
      if (!document.hidden) {
        try {
          await task();
        } catch (e) {
          recordError(`${task.name}: ${e && e.stack ? e.stack : e}`);
        }
      }
      const wait = Math.max(interval() - (performance.now() - started), 100);
      setTimeout(run, wait);
    };
    run();
  }

  function showBanner(text) {
    const banner = $("banner");
    banner.hidden = !text;
    banner.textContent = text || "";
  }

  // ----- this node ---------------------------------------------------------------------------
  async function pollStatus() {
    try {
      state.status = await request("/v1/status");
    } catch (e) {
      showBanner(`this node does not answer (${e.message}); showing the last picture`);
      return;
    }
    showBanner("");
    const s = state.status;
    if (!state.remembered) loadRemembered(s.peer_id);
    $("me").textContent = `node ${short(s.peer_id)} · ring id ${s.ring_id.slice(0, 8)}… · ${
      s.member ? "member" : "joining"
    } · ${s.keys} keys · up ${Math.round(s.uptime_s)} s`;
    document.title = `overlay · ${short(s.peer_id)}`;
    redraw();
  }

  // ----- the ring ----------------------------------------------------------------------------
  function storageName(peer) {
    return `overlay-page/v1/${peer}`;
  }
  function loadRemembered(peer) {
    try {
      state.remembered = JSON.parse(localStorage.getItem(storageName(peer)) || "{}") || {};
    } catch (_) {
      state.remembered = {}; // storage disabled or damaged: remember for this visit only
    }
  }
  function saveRemembered() {
    const now = Date.now();
    const entries = Object.entries(state.remembered)
      .filter(([, n]) => now - n.seen < FORGET_MS)
      .sort((a, b) => b[1].seen - a[1].seen)
      .slice(0, MAX_REMEMBERED);
    state.remembered = Object.fromEntries(entries);
    try {
      localStorage.setItem(storageName(state.status.peer_id), JSON.stringify(state.remembered));
    } catch (_) {
      // Storage full or disabled: the memory still lasts as long as the page.
    }
  }

  async function pollRing() {
    if (!state.status) return; // the walk's memory is kept per serving node
    const started = performance.now();
    let walk;
    try {
      walk = await request("/v1/ring");
    } catch (_) {
      return; // the status loop says the node does not answer
    }
    state.walkMs = performance.now() - started;
    state.walk = walk;
    const now = Date.now();
    const inWalk = new Map();
    walk.nodes.forEach((n, i) => inWalk.set(n.peer_id, i));
    // Each walked node's key count, as it reported it; anything but a count is "not reported".
    const reported = new Map();
    for (const n of walk.nodes) {
      if (typeof n.keys === "number" && Number.isFinite(n.keys) && n.keys >= 0) reported.set(n.peer_id, n.keys);
    }
    for (const n of walk.nodes) state.remembered[n.peer_id] = { ring_id: n.ring_id, addr: n.addr, seen: now };
    saveRemembered();
    // The walk stops at the node that did not answer it (or after the longest walk, rarely).
    const stoppedAt = !walk.complete && walk.nodes.length > 1 ? walk.nodes[walk.nodes.length - 1].peer_id : null;
    const members = Object.entries(state.remembered).map(([peer, n]) => {
      let nodeState;
      if (peer === stoppedAt) nodeState = "unreachable";
      else if (inWalk.has(peer)) nodeState = "alive";
      else nodeState = walk.complete ? "dead" : "unverified";
      const keys = reported.has(peer) ? reported.get(peer) : null;
      return { peer, ringId: n.ring_id, id: toId(n.ring_id), addr: n.addr, state: nodeState, share: null, keys };
    });
    members.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    // Each live node owns the key space from the previous live node (exclusive) to itself.
    const live = members.filter((m) => m.state !== "dead");
    live.forEach((m, i) => {
      const previous = live[(i + live.length - 1) % live.length];
      const span = live.length === 1 ? RING : ringDistance(previous.id, m.id);
      m.share = Number((span * 100000n) / RING) / 1000;
    });
    state.members = members;
    state.byPeer = new Map(members.map((m) => [m.peer, m]));
    const dead = members.filter((m) => m.state === "dead" || m.state === "unreachable").length;
    $("ring-summary").textContent =
      `${walk.nodes.length} nodes in the walk${walk.complete ? "" : " (incomplete)"}` +
      `${dead ? `, ${dead} dead or unreachable` : ""} · walked in ${Math.round(state.walkMs)} ms · ` +
      `${new Date().toLocaleTimeString()}`;
    body.dataset.ringNodes = String(members.length);
    body.dataset.ringComplete = String(walk.complete);
    updateRoute();
    redraw();
    body.dataset.page = "ready";
  }

  /// One walk is one request to every member, in turn: on a big ring, pause four walks' time
  /// between walks (a walk starts at most every five walks' time), so that an open page keeps
  /// the serving node walking at most a fifth of the time.
  const ringInterval = () => Math.max(1000, 5 * state.walkMs);

  // ----- a key -------------------------------------------------------------------------------
  async function pollKey() {
    if (!state.key) return;
    const key = state.key;
    try {
      const lookup = await request(`/v1/lookup/${segment(key)}`);
      if (key !== state.key) return;
      state.lookup = lookup;
      body.dataset.keyState = "ready";
    } catch (e) {
      if (key !== state.key) return;
      state.lookup = null;
      body.dataset.keyState = "error";
      $("key-summary").textContent = `lookup failed: ${e.message}`;
    }
    updateRoute();
    redraw();
  }

  /// The path the lookup really took, from `/v1/lookup`'s `path`: this node (hop 0, the asker),
  /// then every node that answered it, in order, ending with the owner, which confirmed. Lookups
  /// are iterative (this node asks each hop itself); the path is drawn as a chain in the order
  /// the nodes answered. Entries that are not well-formed are skipped, and at most
  /// MAX_ROUTE_HOPS are kept (the node lists at most 64).
  function updateRoute() {
    state.route = [];
    const s = state.status;
    const lookup = state.lookup;
    if (!s || !lookup || !lookup.owner) return;
    const route = [{ peer: s.peer_id, id: toId(s.ring_id) }];
    const path = Array.isArray(lookup.path) ? lookup.path : [];
    for (const n of path.slice(0, MAX_ROUTE_HOPS)) {
      if (n && typeof n.peer_id === "string" && RING_ID.test(n.ring_id)) {
        route.push({ peer: n.peer_id, id: toId(n.ring_id) });
      }
    }
    state.route = route;
  }

  function renderKey() {
    const panel = $("key-panel");
    panel.hidden = !state.key;
    if (!state.key) return;
    $("key-name").textContent = state.key;
    const lookup = state.lookup;
    const path = $("key-path");
    if (!lookup) {
      path.replaceChildren();
      return;
    }
    const replicas = lookup.replicas.map((r) => short(r.peer_id)).join(", ");
    const hops = `${lookup.hops} hop${lookup.hops === 1 ? "" : "s"}`;
    $("key-summary").textContent =
      `SHA-1 ${lookup.key_id.slice(0, 12)}… · owner ${short(lookup.owner && lookup.owner.peer_id)} · ` +
      `replicas ${replicas} · this node's lookup took ${hops}` +
      `${lookup.hops === 0 ? " (it owns the key)" : "; the nodes that answered, in order:"}`;
    const key = toId(lookup.key_id);
    const me = state.route[0];
    const items = state.route.map((node, i) => {
      const li = document.createElement("li");
      li.dataset.hop = String(i);
      li.dataset.hopPeer = node.peer;
      let role;
      if (i === 0) role = "this node, asks";
      else if (lookup.owner && node.peer === lookup.owner.peer_id) role = "owner, confirmed";
      else if (between(node.id, me.id, key)) role = "answered with closer nodes";
      else role = "answered: not the owner, pointed back";
      li.textContent = `${short(node.peer)} ${node.id.toString(16).padStart(40, "0").slice(0, 8)}… ${role}`;
      return li;
    });
    // The node lists the first 64 hops; say so if a lookup ever took more.
    const unlisted = lookup.hops - (state.route.length - 1);
    if (unlisted > 0) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = `… ${unlisted} more hop${unlisted === 1 ? "" : "s"}, not listed`;
      items.push(li);
    }
    path.replaceChildren(...items);
  }

  // ----- a group -----------------------------------------------------------------------------
  async function pollGroup() {
    if (!state.group) return;
    const group = state.group;
    try {
      const tree = await request(`/v1/groups/${segment(group)}/tree`);
      if (group !== state.group) return;
      state.tree = tree;
      body.dataset.groupState = tree.complete ? "ready" : "incomplete";
      $("group-summary").textContent =
        `id ${tree.group_id.slice(0, 12)}… · root ${short(tree.root.peer_id)} · ${tree.nodes.length} nodes` +
        `${tree.complete ? "" : " (the walk of the tree did not reach every node)"}`;
    } catch (e) {
      if (group !== state.group) return;
      state.tree = null;
      body.dataset.groupState = e.status === 404 ? "none" : "error";
      $("group-summary").textContent =
        e.status === 404 ? "no tree: no node has joined this group" : `tree unavailable: ${e.message}`;
    }
    renderGroup();
    redraw();
  }

  function renderGroup() {
    const panel = $("group-panel");
    panel.hidden = !state.group;
    if (!state.group) return;
    $("group-name").textContent = state.group;
    const top = $("group-tree");
    if (!state.tree) {
      top.replaceChildren();
      return;
    }
    // The nodes come breadth-first from the root, so a parent is always placed before its children.
    const items = new Map();
    const roots = [];
    for (const n of state.tree.nodes) {
      const li = document.createElement("li");
      li.dataset.treeNode = n.node.peer_id;
      li.dataset.treeRole = n.role;
      li.dataset.depth = String(n.depth);
      if (n.parent) li.dataset.treeParent = n.parent;
      const label = document.createElement("span");
      label.textContent = `${short(n.node.peer_id)} ${n.node.ring_id.slice(0, 8)}…`;
      li.append(label, tag(n.role, n.role));
      if (n.member && n.role !== "member") li.append(tag("member", "member"));
      const drawn = state.byPeer.get(n.node.peer_id);
      if (drawn && drawn.state !== "alive") li.append(tag("gone", drawn.state));
      items.set(n.node.peer_id, li);
      const parent = n.parent && items.get(n.parent);
      if (parent) {
        let list = parent.querySelector(":scope > ul");
        if (!list) {
          list = document.createElement("ul");
          parent.append(list);
        }
        list.append(li);
      } else {
        roots.push(li);
      }
    }
    top.replaceChildren(...roots);
  }

  function tag(kind, text) {
    const span = document.createElement("span");
    span.className = `tag ${kind}`;
    span.textContent = text;
    return span;
  }

  // ----- load --------------------------------------------------------------------------------
  /// Sums every sample of each metric name (over all label sets).
  function parseMetrics(text) {
    const sums = new Map();
    for (const line of text.split("\n")) {
      if (line === "" || line.startsWith("#")) continue;
      const space = line.lastIndexOf(" ");
      const series = line.slice(0, space);
      const value = Number(line.slice(space + 1));
      const brace = series.indexOf("{");
      const name = brace < 0 ? series : series.slice(0, brace);
      if (Number.isFinite(value)) sums.set(name, (sums.get(name) || 0) + value);
    }
    return sums;
  }

  const CHARTS = [
    { id: "requests", unit: "/s" },
    { id: "lookups", unit: "/s" },
    { id: "hops", unit: "" },
    { id: "keys", unit: "" },
  ];

  async function pollMetrics() {
    let text;
    try {
      text = await request("/metrics", "text");
    } catch (_) {
      return;
    }
    const m = parseMetrics(text);
    const get = (name) => m.get(name) || 0;
    const sample = {
      t: performance.now(),
      received:
        get("overlay_ring_messages_received_total") +
        get("overlay_kv_requests_received_total") +
        get("overlay_group_messages_received_total"),
      lookups: get("overlay_lookup_hops_count") + get("overlay_lookups_failed_total"),
      hopsSum: get("overlay_lookup_hops_sum"),
      hopsCount: get("overlay_lookup_hops_count"),
      keys: get("overlay_stored_keys"),
    };
    const previous = state.metrics[state.metrics.length - 1];
    if (previous) {
      const seconds = Math.max((sample.t - previous.t) / 1000, 0.001);
      sample.requests = Math.max(sample.received - previous.received, 0) / seconds;
      sample.lookupRate = Math.max(sample.lookups - previous.lookups, 0) / seconds;
      const done = sample.hopsCount - previous.hopsCount;
      sample.hops = done > 0 ? (sample.hopsSum - previous.hopsSum) / done : null;
    }
    state.metrics.push(sample);
    if (state.metrics.length > CHART_SAMPLES + 1) state.metrics.shift();
    const series = {
      requests: state.metrics.slice(1).map((s) => s.requests),
      lookups: state.metrics.slice(1).map((s) => s.lookupRate),
      hops: state.metrics.slice(1).map((s) => s.hops),
      keys: state.metrics.map((s) => s.keys),
    };
    for (const chart of CHARTS) {
      const values = series[chart.id];
      const last = values.length ? values[values.length - 1] : null;
      $(`now-${chart.id}`).textContent = last == null ? "–" : `${formatNumber(last)}${chart.unit}`;
      drawSparkline($(`chart-${chart.id}`), values);
    }
  }

  const formatNumber = (x) => (x >= 100 || Number.isInteger(x) ? String(Math.round(x)) : x.toFixed(1));

  function drawSparkline(canvas, values) {
    const ctx = sizeCanvas(canvas);
    const { width, height } = canvas.getBoundingClientRect();
    ctx.clearRect(0, 0, width, height);
    const max = Math.max(1, ...values.filter((v) => v != null)) * 1.15;
    const step = width / (CHART_SAMPLES - 1);
    const x0 = width - (values.length - 1) * step;
    const y = (v) => height - 2 - (v / max) * (height - 4);
    ctx.strokeStyle = css("--alive");
    ctx.fillStyle = `${css("--alive")}22`;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let open = false;
    values.forEach((v, i) => {
      if (v == null) {
        open = false;
        return;
      }
      const x = x0 + i * step;
      if (open) ctx.lineTo(x, y(v));
      else ctx.moveTo(x, y(v));
      open = true;
    });
    ctx.stroke();
    ctx.fillStyle = css("--muted");
    ctx.font = "10px system-ui, sans-serif";
    ctx.fillText(formatNumber(max / 1.15), 2, 10);
  }

  // ----- drawing -----------------------------------------------------------------------------
  const cssCache = new Map();
  function css(name) {
    if (!cssCache.has(name)) cssCache.set(name, getComputedStyle(body).getPropertyValue(name).trim());
    return cssCache.get(name);
  }

  /// Sizes a canvas's backing store to its CSS size times the device pixel ratio; returns its
  /// context, scaled so that drawing is in CSS pixels.
  function sizeCanvas(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const { width, height } = canvas.getBoundingClientRect();
    const w = Math.max(1, Math.round(width * ratio));
    const h = Math.max(1, Math.round(height * ratio));
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    return ctx;
  }

  function geometry() {
    const { width, height } = $("ring").getBoundingClientRect();
    const cx = width / 2;
    const cy = height / 2;
    // The margin leaves room for the labels outside the circle.
    return { cx, cy, r: Math.min(cx, cy) - 90 };
  }
  function pointAt(angle, radius) {
    const { cx, cy } = geometry();
    return [cx + radius * Math.sin(angle), cy - radius * Math.cos(angle)];
  }

  /// Each node's roles, as the tooltip and the table name them.
  function rolesOf(peer) {
    const roles = [];
    const s = state.status;
    if (s) {
      if (peer === s.peer_id) roles.push("this node");
      if (s.predecessor && s.predecessor.peer_id === peer) roles.push("predecessor");
      s.successors.forEach((n, i) => n.peer_id === peer && roles.push(`successor ${i + 1}`));
      const fingers = s.fingers.filter((f) => f.node.peer_id === peer).map((f) => f.index);
      if (fingers.length) roles.push(`finger ${fingers.join(",")}`);
    }
    const role = keyRole(peer);
    if (role) roles.push(role);
    const treeNode = state.tree && state.tree.nodes.find((n) => n.node.peer_id === peer);
    if (treeNode) roles.push(`group ${treeNode.role}${treeNode.member && treeNode.role !== "member" ? "+member" : ""}`);
    return roles;
  }
  /// A drawn node's stored keys: this node's from its status (asked every second), the others'
  /// from what each reported to the latest ring walk; null when unknown.
  function keysOf(m) {
    const s = state.status;
    if (s && m.peer === s.peer_id) return s.keys;
    return m.keys;
  }
  function keyRole(peer) {
    const lookup = state.lookup;
    if (!lookup || !lookup.owner) return null;
    if (lookup.owner.peer_id === peer) return "owner";
    return lookup.replicas.some((r) => r.peer_id === peer) ? "replica" : null;
  }

  function redraw() {
    const started = performance.now();
    drawRing();
    renderTable();
    renderKey();
    renderGroup();
    renderTip();
    // How long a picture takes, for anyone checking the page stays fast on a big ring.
    body.dataset.drawMs = (performance.now() - started).toFixed(1);
  }

  function drawRing() {
    const canvas = $("ring");
    const ctx = sizeCanvas(canvas);
    const { width, height } = canvas.getBoundingClientRect();
    const { cx, cy, r } = geometry();
    ctx.clearRect(0, 0, width, height);
    ctx.lineWidth = 1;
    ctx.strokeStyle = css("--rule");
    ctx.beginPath();
    ctx.arc(cx, cy, r, 0, 2 * Math.PI);
    ctx.stroke();
    const s = state.status;
    const members = state.members;
    if (!s) return;
    const self = { peer: s.peer_id, id: toId(s.ring_id) };
    const at = (node) => pointAt(angleOf(node.id), r);

    // Chords first, nodes on top.
    const chord = (from, to, color, dash, width) => {
      const [x1, y1] = at(from);
      const [x2, y2] = at(to);
      const mx = (x1 + x2) / 2;
      const my = (y1 + y2) / 2;
      ctx.strokeStyle = color;
      ctx.lineWidth = width;
      ctx.setLineDash(dash);
      ctx.beginPath();
      ctx.moveTo(x1, y1);
      ctx.quadraticCurveTo(cx + (mx - cx) * 0.35, cy + (my - cy) * 0.35, x2, y2);
      ctx.stroke();
      ctx.setLineDash([]);
    };
    const asNode = (info) => ({ peer: info.peer_id, id: toId(info.ring_id) });
    for (const f of s.fingers) chord(self, asNode(f.node), css("--finger"), [4, 3], 1);
    for (const n of s.successors) chord(self, asNode(n), css("--succ"), [], 1.5);
    if (state.tree) {
      const byPeer = new Map(state.tree.nodes.map((n) => [n.node.peer_id, n.node]));
      for (const n of state.tree.nodes) {
        const parent = n.parent && byPeer.get(n.parent);
        if (parent) chord(asNode(parent), asNode(n.node), css("--tree"), [], 2);
      }
    }
    for (let i = 1; i < state.route.length; i += 1) {
      chord(state.route[i - 1], state.route[i], css("--path"), [], 2.5);
      const [x, y] = at(state.route[i]);
      ctx.fillStyle = css("--path");
      ctx.font = "bold 11px system-ui, sans-serif";
      ctx.fillText(String(i), x + 6, y - 6);
    }

    // Which nodes get drawn one by one.
    const notable = new Set([s.peer_id]);
    s.successors.forEach((n) => notable.add(n.peer_id));
    s.fingers.forEach((f) => notable.add(f.node.peer_id));
    if (state.lookup) state.lookup.replicas.forEach((n) => notable.add(n.peer_id));
    state.route.forEach((n) => notable.add(n.peer));
    if (state.tree) state.tree.nodes.forEach((n) => notable.add(n.node.peer_id));
    const dense = members.length > DENSE_RING;
    if (dense) {
      // Density band: nodes per degree, as radial ticks outside the circle.
      const bins = new Array(360).fill(0);
      for (const m of members) if (m.state !== "dead") bins[Math.floor((angleOf(m.id) / (2 * Math.PI)) * 360) % 360] += 1;
      const top = Math.max(...bins);
      ctx.strokeStyle = css("--alive");
      ctx.lineWidth = 2;
      bins.forEach((count, degree) => {
        if (count === 0) return;
        const a = ((degree + 0.5) / 360) * 2 * Math.PI;
        const [x1, y1] = pointAt(a, r + 3);
        const [x2, y2] = pointAt(a, r + 3 + (count / top) * 20);
        ctx.beginPath();
        ctx.moveTo(x1, y1);
        ctx.lineTo(x2, y2);
        ctx.stroke();
      });
    }
    const dot = dense ? 3 : Math.max(3, Math.min(7, 900 / Math.max(members.length, 1)));
    let lastLabel = null;
    for (const m of members) {
      const mine = m.peer === s.peer_id;
      if (dense && !notable.has(m.peer) && m.state === "alive") continue;
      const [x, y] = at(m);
      const role = keyRole(m.peer);
      const gone = m.state === "dead" || m.state === "unreachable";
      const size = mine || role ? dot + 3 : dot;
      ctx.beginPath();
      ctx.arc(x, y, size, 0, 2 * Math.PI);
      ctx.fillStyle = gone ? css("--dead") : mine ? css("--self") : css("--alive");
      if (m.state === "unverified") ctx.globalAlpha = 0.4;
      ctx.fill();
      ctx.globalAlpha = 1;
      if (role) {
        ctx.lineWidth = 3;
        ctx.strokeStyle = role === "owner" ? css("--owner") : css("--replica");
        ctx.beginPath();
        ctx.arc(x, y, size + 3, 0, 2 * Math.PI);
        ctx.stroke();
      }
      if (gone) {
        ctx.strokeStyle = css("--dead");
        ctx.lineWidth = 2;
        const d = size + 4;
        ctx.beginPath();
        ctx.moveTo(x - d, y - d);
        ctx.lineTo(x + d, y + d);
        ctx.moveTo(x + d, y - d);
        ctx.lineTo(x - d, y + d);
        ctx.stroke();
      }
      if (m.peer === (state.picked || state.hover)) {
        ctx.strokeStyle = css("--fg");
        ctx.lineWidth = 1;
        ctx.beginPath();
        ctx.arc(x, y, size + 7, 0, 2 * Math.PI);
        ctx.stroke();
      }
      if (members.length <= 32 || mine) {
        const a = angleOf(m.id);
        // Labels of neighbours closer than ~60 px take turns at two distances from the circle.
        const crowded = lastLabel !== null && (a - lastLabel.angle) * r < 60 && !lastLabel.outer;
        lastLabel = { angle: a, outer: crowded };
        // Labels run away from the circle: rightward on the right, leftward on the left.
        const side = Math.sin(a);
        const [lx, ly] = pointAt(a, r + (crowded ? 30 : 14) + (Math.abs(side) < 0.4 ? 6 : 0));
        ctx.fillStyle = gone ? css("--dead") : css("--fg");
        ctx.font = `${mine ? "bold " : ""}11px ui-monospace, monospace`;
        ctx.textAlign = side > 0.4 ? "start" : side < -0.4 ? "end" : "center";
        ctx.textBaseline = "middle";
        ctx.fillText(short(m.peer), lx, ly);
        ctx.textAlign = "start";
        ctx.textBaseline = "alphabetic";
      }
    }

    // The key: a diamond just inside the circle at SHA-1(key).
    const markers = [];
    if (state.lookup) markers.push([toId(state.lookup.key_id), css("--owner"), `key ${state.key}`]);
    if (state.tree) markers.push([toId(state.tree.group_id), css("--tree"), `group ${state.group}`]);
    for (const [id, color, label] of markers) {
      const a = angleOf(id);
      const [x, y] = pointAt(a, r - 14);
      ctx.fillStyle = color;
      ctx.beginPath();
      ctx.moveTo(x, y - 6);
      ctx.lineTo(x + 6, y);
      ctx.lineTo(x, y + 6);
      ctx.lineTo(x - 6, y);
      ctx.closePath();
      ctx.fill();
      // Inside the circle, the label runs toward the centre so it never crosses the nodes.
      const [lx, ly] = pointAt(a, r - 26);
      ctx.font = "12px system-ui, sans-serif";
      ctx.textAlign = Math.sin(a) > 0 ? "end" : "start";
      ctx.textBaseline = "middle";
      ctx.fillText(label, lx, ly);
      ctx.textBaseline = "alphabetic";
      ctx.textAlign = "start";
    }

    ctx.fillStyle = css("--muted");
    ctx.font = "12px system-ui, sans-serif";
    ctx.textAlign = "center";
    const live = members.filter((m) => m.state === "alive").length;
    ctx.fillText(`${live} live of ${members.length} nodes`, cx, cy);
    if (dense) ctx.fillText("plain members shown as density", cx, cy + 16);
    ctx.textAlign = "start";
  }

  function renderTable() {
    const s = state.status;
    const members = state.members;
    const signature = members
      .map((m) => `${m.peer}:${m.state}:${keyRole(m.peer) || ""}:${m.share}:${m.keys}:${rolesOf(m.peer).join("/")}`)
      .join(" ") + (s ? s.keys : "");
    $("node-count").textContent = members.length ? `(${members.length})` : "";
    if (signature === state.tableSignature) return;
    state.tableSignature = signature;
    const rows = members.map((m) => {
      const tr = document.createElement("tr");
      tr.dataset.peerId = m.peer;
      tr.dataset.ringId = m.ringId;
      tr.dataset.state = m.state;
      if (s && m.peer === s.peer_id) tr.dataset.self = "";
      const role = keyRole(m.peer);
      if (role) tr.dataset.role = role;
      if (m.peer === state.picked) tr.className = "picked";
      const count = keysOf(m);
      if (count != null) tr.dataset.keys = String(count);
      const keys = count == null ? "–" : String(count);
      const share = m.share == null ? "–" : `${m.share.toFixed(1)} %`;
      const roles = rolesOf(m.peer);
      if (m.state !== "alive") roles.unshift(m.state);
      for (const text of [`${m.ringId.slice(0, 10)}…`, short(m.peer), share, keys, roles.join(", ")]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      tr.title = `${m.peer}\n${m.addr}`;
      tr.addEventListener("click", () => pick(m.peer));
      return tr;
    });
    $("nodes").replaceChildren(...rows);
  }

  // ----- hover and click ---------------------------------------------------------------------
  function nodeNear(event) {
    const canvas = $("ring");
    const box = canvas.getBoundingClientRect();
    const x = event.clientX - box.left;
    const y = event.clientY - box.top;
    const { cx, cy, r } = geometry();
    const distance = Math.hypot(x - cx, y - cy);
    if (Math.abs(distance - r) > 24) return null;
    const angle = (Math.atan2(x - cx, cy - y) + 2 * Math.PI) % (2 * Math.PI);
    let best = null;
    let bestGap = Infinity;
    for (const m of state.members) {
      const gap = Math.abs(angleOf(m.id) - angle);
      const around = Math.min(gap, 2 * Math.PI - gap);
      if (around < bestGap) {
        bestGap = around;
        best = m;
      }
    }
    // Within 12 px along the circle.
    return best && bestGap * r <= 12 ? best.peer : null;
  }

  function renderTip() {
    const tip = $("tip");
    const peer = state.hover || state.picked;
    const m = peer && state.byPeer.get(peer);
    if (!m) {
      tip.hidden = true;
      return;
    }
    const count = keysOf(m);
    const keys = count == null ? "keys stored: not reported" : `${count} keys stored`;
    const roles = rolesOf(m.peer);
    tip.replaceChildren();
    const lines = [
      ["b", m.peer],
      ["div", `ring id ${m.ringId}`],
      ["div", m.addr],
      ["div", `${m.state} · ${keys} · ${m.share == null ? "–" : `${m.share.toFixed(2)} %`} of the key space`],
      ["div", roles.length ? roles.join(", ") : "member"],
    ];
    for (const [element, text] of lines) {
      const line = document.createElement(element);
      line.textContent = text;
      tip.append(line, element === "b" ? document.createElement("br") : "");
    }
    const [x, y] = pointAt(angleOf(m.id), geometry().r);
    const box = $("ring").getBoundingClientRect();
    const scale = box.width / $("ring").clientWidth || 1;
    tip.style.left = `${Math.min(x / scale + 20, box.width - 200)}px`;
    tip.style.top = `${y / scale + 20}px`;
    tip.hidden = false;
  }

  function pick(peer) {
    state.picked = state.picked === peer ? null : peer;
    state.tableSignature = ""; // the picked row changes
    redraw();
    const row = document.querySelector(`#nodes tr[data-peer-id="${CSS.escape(peer)}"]`);
    if (row && state.picked) row.scrollIntoView({ block: "nearest" });
  }

  $("ring").addEventListener("mousemove", (event) => {
    const peer = nodeNear(event);
    if (peer !== state.hover) {
      state.hover = peer;
      drawRing();
      renderTip();
    }
  });
  $("ring").addEventListener("mouseleave", () => {
    state.hover = null;
    drawRing();
    renderTip();
  });
  $("ring").addEventListener("click", (event) => {
    const peer = nodeNear(event);
    if (peer) pick(peer);
  });

  // ----- the key and group forms -------------------------------------------------------------
  function setQuery(name, value) {
    const query = new URLSearchParams(location.search);
    if (value) query.set(name, value);
    else query.delete(name);
    const text = query.toString();
    history.replaceState(null, "", text ? `?${text}` : location.pathname);
  }
  $("key-input").value = state.key || "";
  $("group-input").value = state.group || "";
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("key-input").value.trim() || null;
    state.lookup = null;
    state.route = [];
    delete body.dataset.keyState;
    setQuery("key", state.key);
    redraw(); // the key's loop asks within a second
  });
  $("group-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.group = $("group-input").value.trim() || null;
    state.tree = null;
    delete body.dataset.groupState;
    setQuery("group", state.group);
    redraw(); // the group's loop asks within a second
  });
  window.addEventListener("resize", () => redraw());

  // ----- start -------------------------------------------------------------------------------
  const second = () => 1000;
  every(second, pollStatus);
  every(ringInterval, pollRing);
  every(second, pollKey);
  every(second, pollGroup);
  every(second, pollMetrics);
})();
