//! `overlay chat ...`: users, logins, direct messages and rooms, over the node's `/v1/chat` API
//! and its multicast groups.
//!
//! The client holds the user's keys (the key directory, [`KeyDir`]): it signs name records,
//! grants and room messages, seals DMs to the recipient's key and opens what arrives; nodes only
//! verify and route. Next to the keys, in `<keys>/state/NAME.json`, it keeps what a user's
//! client must remember between runs: its login sessions per node, the last sequence number it
//! sent to each recipient (DMs from one sender are ordered by it), the rooms joined, and the ids
//! of recently printed DMs (each is printed once, even when the mailbox hands it out again).
//!
//! `listen` opens the live feed of DMs first, then drains the mailbox (take, print, acknowledge:
//! a DM whose acknowledgement is lost comes again and is recognised by its id), then prints the
//! feed; DMs from one sender come in the order of their sequence numbers as long as the sender
//! sends one after the other.
//!
//! Room `R` is multicast group `room/R`; its messages are signed [`RoomMessage`]s in JSON, and
//! `listen` prints only those whose signature verifies under the key of the name they claim.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use clap::{Args, Subcommand};
use overlay_api::chat::{
    ChatNode, DM_EVENT, DmReceipt, LoginAnswer, LogoutRequest, MailboxAck, MailboxItem, MailboxTake, Presence,
};
use overlay_api::{ApiError, Client, GroupEvent, Method, StatusCode};
use overlay_chat::{Envelope, Grant, KeyDir, NameRecord, RoomMessage, UserKeys};
use serde::{Deserialize, Serialize};

use crate::cli::GlobalArgs;
use crate::commands;

/// How long a login grant lasts.
const GRANT_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);
/// Printed DM ids remembered per user, to print each once.
const SEEN_IDS: usize = 4096;

/// `overlay chat`: its subcommand and the key directory.
#[derive(Debug, Args)]
pub(crate) struct ChatArgs {
    /// Directory of the users' secret keys. Default: $XDG_CONFIG_HOME/overlay/keys, else
    /// ~/.config/overlay/keys.
    #[arg(long, global = true, env = "OVERLAY_KEYS", value_name = "DIR")]
    pub(crate) keys: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: ChatCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ChatCommand {
    /// Claim a user name for a key pair (created in the key directory if absent).
    Register {
        /// The user name: 1 to 64 of a-z, 0-9, '_', '.', '-'.
        name: String,
    },
    /// Log in at the node: hand it a grant to act for the user (12 h) and publish presence.
    Login {
        /// The user name.
        name: String,
    },
    /// Log out at the node: the user shows offline.
    Logout {
        /// The user name.
        name: String,
    },
    /// Show whether a user is online, and at which node, or when last seen.
    Who {
        /// The user name.
        name: String,
    },
    /// Send a direct message, sealed end to end: "delivered" or "queued".
    Send {
        /// The recipient.
        to: String,
        /// The message; `-` reads it from stdin.
        message: String,
        /// The sender (a user whose keys are in the key directory).
        #[arg(long = "as", value_name = "NAME")]
        as_name: String,
    },
    /// Join a room: `listen` shows its messages.
    Join {
        /// The room name.
        room: String,
        /// The user joining.
        #[arg(long = "as", value_name = "NAME")]
        as_name: String,
    },
    /// Send a signed message to a room.
    Say {
        /// The room name.
        room: String,
        /// The message; `-` reads it from stdin.
        message: String,
        /// The sender.
        #[arg(long = "as", value_name = "NAME")]
        as_name: String,
    },
    /// Log in if needed, then print direct messages and room messages as they arrive, until
    /// interrupted. With --json: one object per line.
    Listen {
        /// The user listening.
        #[arg(long = "as", value_name = "NAME")]
        as_name: String,
    },
}

/// What a user's client remembers between runs (`<keys>/state/NAME.json`).
#[derive(Debug, Default, Serialize, Deserialize)]
struct UserState {
    /// Login sessions by node peer id.
    #[serde(default)]
    sessions: BTreeMap<String, Session>,
    /// The last DM sequence number sent, by recipient.
    #[serde(default)]
    sent_seq: BTreeMap<String, u64>,
    /// Rooms joined.
    #[serde(default)]
    rooms: Vec<String>,
    /// Ids (hex) of DMs printed, oldest first.
    #[serde(default)]
    seen: VecDeque<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    session: String,
    expires_ms: u64,
}

/// What every chat command works with: the user's key directory and a node's API.
pub(crate) struct Cx {
    keydir: KeyDir,
    client: Client,
}

impl Cx {
    pub(crate) fn new(keydir: KeyDir, client: Client) -> Cx {
        Cx { keydir, client }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub(crate) use dht::bytes::to_hex as hex;

fn default_keys_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("overlay/keys"));
    }
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow!("no --keys, OVERLAY_KEYS or HOME"))?;
    Ok(PathBuf::from(home).join(".config/overlay/keys"))
}

fn state_path(keydir: &KeyDir, name: &str) -> PathBuf {
    keydir.path().join("state").join(format!("{name}.json"))
}

fn load_state(keydir: &KeyDir, name: &str) -> Result<UserState> {
    let path = state_path(keydir, name);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UserState::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Written to a temporary file and renamed, so that a crash leaves the old state or the new.
fn save_state(keydir: &KeyDir, name: &str, state: &UserState) -> Result<()> {
    let path = state_path(keydir, name);
    let dir = path.parent().expect("state files live in a directory");
    create_private_dir(dir)?;
    let tmp = dir.join(format!(".{name}.json.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(state)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

pub(crate) fn run(global: &GlobalArgs, args: &ChatArgs, out: &mut impl Write) -> Result<()> {
    let dir = match &args.keys {
        Some(dir) => dir.clone(),
        None => default_keys_dir()?,
    };
    let keydir =
        KeyDir::open(&dir).with_context(|| format!("opening the key directory {}", dir.display()))?;
    let cx = Cx::new(keydir, commands::client(global)?);
    match &args.command {
        ChatCommand::Register { name } => register(&cx, name, out),
        ChatCommand::Login { name } => {
            let answer = login(&cx, name)?;
            writeln!(
                out,
                "logged in as {name} at node {} until {}",
                answer.peer_id,
                clock(answer.expires_ms)
            )?;
            Ok(())
        }
        ChatCommand::Logout { name } => logout(&cx, name, out),
        ChatCommand::Who { name } => who(global, &cx, name, out),
        ChatCommand::Send { to, message, as_name } => send(global, &cx, as_name, to, message, out),
        ChatCommand::Join { room, as_name } => join(&cx, as_name, room, out),
        ChatCommand::Say { room, message, as_name } => say(&cx, as_name, room, message, out),
        ChatCommand::Listen { as_name } => listen(global, &cx, as_name, out),
    }
}

// ----- HTTP ------------------------------------------------------------------------------------

/// Sends a request and turns any answer but 2xx into the node's error.
fn call(client: &Client, method: &Method, path: &str, body: &[u8]) -> Result<Vec<u8>> {
    call_answer(client.raw(method, path, body)?)
}

/// A raw answer's body if it is 2xx, else the node's error.
fn call_answer(response: overlay_api::RawResponse) -> Result<Vec<u8>> {
    if (200..300).contains(&response.status) {
        return Ok(response.body);
    }
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = serde_json::from_slice::<overlay_api::ErrorBody>(&response.body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&response.body).into_owned());
    Err(ApiError::Rejected { status, message }.into())
}

fn status_of(error: &anyhow::Error) -> Option<StatusCode> {
    error.chain().find_map(|c| match c.downcast_ref::<ApiError>() {
        Some(ApiError::Rejected { status, .. }) => Some(*status),
        _ => None,
    })
}

fn load_keys(cx: &Cx, name: &str) -> Result<UserKeys> {
    cx.keydir.load(name).with_context(|| {
        format!(
            "no keys for {name:?} in {}: `overlay chat register {name}` first",
            cx.keydir.path().display()
        )
    })
}

/// The verified name record of `name`, `None` if nobody registered it.
fn name_record(client: &Client, name: &str) -> Result<Option<NameRecord>> {
    overlay_chat::validate_name(name)?;
    match call(client, &Method::GET, &format!("/v1/chat/names/{name}"), b"") {
        Ok(body) => {
            let record: NameRecord = serde_json::from_slice(&body).context("reading the name record")?;
            record.verify().with_context(|| format!("the record of {name:?} does not verify"))?;
            if record.name != name {
                bail!("the node answered the record of {:?} for {name:?}", record.name);
            }
            Ok(Some(record))
        }
        Err(e) if status_of(&e) == Some(StatusCode::NOT_FOUND) => Ok(None),
        Err(e) => Err(e),
    }
}

// ----- names and logins ------------------------------------------------------------------------

pub(crate) fn register(cx: &Cx, name: &str, out: &mut impl Write) -> Result<()> {
    overlay_chat::validate_name(name)?;
    let keys = cx.keydir.load_or_create(name)?;
    if let Some(current) = name_record(&cx.client, name)? {
        if current.owner == keys.public() && !current.released {
            writeln!(out, "{name} is already registered to your key {}", keys.public().fingerprint())?;
            return Ok(());
        }
        if !current.released {
            bail!("the name {name:?} is taken by another key ({})", current.owner.fingerprint());
        }
    }
    let record = NameRecord::sign(&keys, name, 1, false, now_ms())?;
    match call(&cx.client, &Method::POST, &format!("/v1/chat/names/{name}"), &serde_json::to_vec(&record)?) {
        Ok(_) => {
            writeln!(out, "registered {name} (key {})", keys.public().fingerprint())?;
            Ok(())
        }
        Err(e) if status_of(&e) == Some(StatusCode::CONFLICT) => {
            Err(e.context(format!("the name {name:?} is taken")))
        }
        Err(e) => Err(e),
    }
}

fn chat_node(client: &Client) -> Result<(ChatNode, [u8; 32])> {
    let node: ChatNode = serde_json::from_slice(&call(client, &Method::GET, "/v1/chat/node", b"")?)?;
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&node.ed25519)
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or_else(|| anyhow!("the node's ed25519 key is not 32 bytes of base64url"))?;
    Ok((node, key))
}

/// Logs `name` in at the node with a fresh grant and remembers the session.
pub(crate) fn login(cx: &Cx, name: &str) -> Result<LoginAnswer> {
    let keys = load_keys(cx, name)?;
    let (_, node_key) = chat_node(&cx.client)?;
    let now = now_ms();
    let grant = Grant::sign(&keys, name, node_key, now, now + GRANT_LIFETIME.as_millis() as u64)?;
    let body = call(&cx.client, &Method::POST, "/v1/chat/login", &serde_json::to_vec(&grant)?)?;
    let answer: LoginAnswer = serde_json::from_slice(&body).context("reading the login answer")?;
    let mut state = load_state(&cx.keydir, name)?;
    state.sessions.retain(|_, s| s.expires_ms > now);
    state.sessions.insert(
        answer.peer_id.clone(),
        Session { session: answer.session.clone(), expires_ms: answer.expires_ms },
    );
    save_state(&cx.keydir, name, &state)?;
    Ok(answer)
}

pub(crate) fn logout(cx: &Cx, name: &str, out: &mut impl Write) -> Result<()> {
    let (node, _) = chat_node(&cx.client)?;
    let mut state = load_state(&cx.keydir, name)?;
    let Some(session) = state.sessions.remove(&node.peer_id) else {
        bail!("{name} is not logged in at node {} from this key directory", node.peer_id);
    };
    let request = LogoutRequest { name: name.to_owned(), session: session.session };
    call(&cx.client, &Method::POST, "/v1/chat/logout", &serde_json::to_vec(&request)?)?;
    save_state(&cx.keydir, name, &state)?;
    writeln!(out, "logged out {name} at node {}", node.peer_id)?;
    Ok(())
}

fn clock(ms: u64) -> String {
    let secs = ms / 1000;
    format!("{:02}:{:02}:{:02} UTC", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}

/// `name`'s presence as the node reads it.
pub(crate) fn presence(client: &Client, name: &str) -> Result<Presence> {
    Ok(serde_json::from_slice(&presence_document(client, name)?)?)
}

fn presence_document(client: &Client, name: &str) -> Result<Vec<u8>> {
    overlay_chat::validate_name(name)?;
    call(client, &Method::GET, &format!("/v1/chat/presence/{name}"), b"")
}

fn who(global: &GlobalArgs, cx: &Cx, name: &str, out: &mut impl Write) -> Result<()> {
    if global.json {
        out.write_all(&presence_document(&cx.client, name)?)?;
        writeln!(out)?;
        return Ok(());
    }
    let presence = presence(&cx.client, name)?;
    match (presence.online, presence.last_seen_ms) {
        (true, _) => writeln!(
            out,
            "{name} is online at node {} ({})",
            presence.peer_id.as_deref().unwrap_or("?"),
            presence.node_addr.as_deref().unwrap_or("?")
        )?,
        (false, Some(seen)) => writeln!(out, "{name} is offline, last seen {}", clock(seen))?,
        (false, None) => writeln!(out, "{name} is offline, never seen online")?,
    }
    Ok(())
}

fn message_body(message: &str) -> Result<Vec<u8>> {
    if message != "-" {
        return Ok(message.as_bytes().to_vec());
    }
    let mut body =
        commands::read_bounded(std::io::stdin().lock()).context("reading the message from stdin")?;
    if body.last() == Some(&b'\n') {
        body.pop();
    }
    Ok(body)
}

// ----- direct messages -------------------------------------------------------------------------

fn send(
    global: &GlobalArgs,
    cx: &Cx,
    from: &str,
    to: &str,
    message: &str,
    out: &mut impl Write,
) -> Result<()> {
    let answer = seal_and_send(cx, from, to, &message_body(message)?)?;
    if global.json {
        out.write_all(&answer)?;
        writeln!(out)?;
        return Ok(());
    }
    let receipt: DmReceipt = serde_json::from_slice(&answer)?;
    writeln!(out, "{}", receipt.outcome)?;
    Ok(())
}

/// Seals `body` from `from` to `to`'s current key and hands it to the node; returns the node's
/// answer (a [`DmReceipt`] in JSON).
fn seal_and_send(cx: &Cx, from: &str, to: &str, body: &[u8]) -> Result<Vec<u8>> {
    let keys = load_keys(cx, from)?;
    let Some(recipient) = name_record(&cx.client, to)? else { bail!("unknown user {to:?}") };
    if recipient.released {
        bail!("the name {to:?} has been released");
    }
    let mut state = load_state(&cx.keydir, from)?;
    let seq = state.sent_seq.get(to).copied().unwrap_or(0) + 1;
    let envelope = Envelope::seal(&keys, from, to, &recipient.owner, seq, now_ms(), body)?;
    // Counted before it is sent: a number is never reused, even if the answer is lost.
    state.sent_seq.insert(to.to_owned(), seq);
    save_state(&cx.keydir, from, &state)?;
    call(&cx.client, &Method::POST, "/v1/chat/dm", envelope.to_json().as_bytes())
}

/// Sends a DM and returns the node's receipt: `delivered` or `queued`.
pub(crate) fn send_dm(cx: &Cx, from: &str, to: &str, body: &[u8]) -> Result<DmReceipt> {
    Ok(serde_json::from_slice(&seal_and_send(cx, from, to, body)?)?)
}

/// Opens a DM sent to `name` and checks that its sender key is the one its claimed name is
/// registered to.
pub(crate) fn open_dm(cx: &Cx, name: &str, envelope: &Envelope) -> Result<overlay_chat::Plain> {
    let keys = load_keys(cx, name)?;
    let plain = envelope.open(&keys).context("the message does not open")?;
    let mut senders = Senders { client: cx.client.clone(), known: HashMap::new() };
    if !senders.owns(&plain.from, &plain.from_key) {
        bail!("the sender key is not {:?}'s", plain.from);
    }
    Ok(plain)
}

/// Opens the live feed of `name`'s DMs at the node, with the login's session; the stream ends
/// after `limit`.
pub(crate) fn dm_feed(
    cx: &Cx,
    name: &str,
    session: &str,
    limit: Duration,
) -> Result<overlay_api::GroupStream> {
    Ok(cx.client.event_stream(&format!("/v1/chat/listen?name={name}&session={session}"), Some(limit))?)
}

/// The next DM of a feed opened with [`dm_feed`], `None` when the stream ended. An envelope
/// that does not parse is reported on stderr and skipped: one bad message must not end a feed.
pub(crate) fn next_dm(stream: &mut overlay_api::GroupStream) -> Result<Option<Envelope>> {
    while let Some(event) = stream.next_raw_event()? {
        if event.event == overlay_api::groups::ERROR_EVENT {
            bail!("the node ended the stream: {}", event.data);
        }
        if event.event != DM_EVENT {
            continue;
        }
        match Envelope::from_json(event.data.as_bytes()) {
            Ok(envelope) => return Ok(Some(envelope)),
            Err(e) => eprintln!("overlay: dropped an unreadable message: {e}"),
        }
    }
    Ok(None)
}

/// Takes the first DM of `name`'s mailbox, waiting up to `wait`, opens it and acknowledges it;
/// `None` when nothing arrived in time.
pub(crate) fn take_from_mailbox(
    cx: &Cx,
    name: &str,
    session: &str,
    wait: Duration,
) -> Result<Option<overlay_chat::Plain>> {
    let Some(item) = take_item(cx, name, session, wait)? else { return Ok(None) };
    let envelope: Envelope =
        serde_json::from_value(item.envelope.clone()).context("reading a mailbox message")?;
    let plain = open_dm(cx, name, &envelope)?;
    ack_item(cx, name, session, item)?;
    Ok(Some(plain))
}

/// Leases the first DM of `name`'s mailbox, waiting up to `wait`; `None` when it stayed empty.
fn take_item(cx: &Cx, name: &str, session: &str, wait: Duration) -> Result<Option<MailboxItem>> {
    let take = MailboxTake {
        name: name.to_owned(),
        session: session.to_owned(),
        wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
    };
    let response = cx.client.raw(&Method::POST, "/v1/chat/mailbox/take", &serde_json::to_vec(&take)?)?;
    if response.status == 204 {
        return Ok(None);
    }
    Ok(Some(serde_json::from_slice(&call_answer(response)?).context("reading a mailbox message")?))
}

/// Removes a DM taken from the mailbox.
fn ack_item(cx: &Cx, name: &str, session: &str, item: MailboxItem) -> Result<()> {
    let ack = MailboxAck {
        id: item.id,
        lease: item.lease,
        name: name.to_owned(),
        seq: item.seq,
        session: session.to_owned(),
    };
    call(&cx.client, &Method::POST, "/v1/chat/mailbox/ack", &serde_json::to_vec(&ack)?)?;
    Ok(())
}

// ----- rooms -----------------------------------------------------------------------------------

fn room_group(room: &str) -> String {
    format!("room/{room}")
}

fn join(cx: &Cx, name: &str, room: &str, out: &mut impl Write) -> Result<()> {
    overlay_chat::validate_name(room)?;
    load_keys(cx, name)?;
    let mut state = load_state(&cx.keydir, name)?;
    if !state.rooms.iter().any(|r| r == room) {
        state.rooms.push(room.to_owned());
        save_state(&cx.keydir, name, &state)?;
    }
    writeln!(out, "{name} joined room {room}")?;
    Ok(())
}

fn say(cx: &Cx, name: &str, room: &str, message: &str, out: &mut impl Write) -> Result<()> {
    let keys = load_keys(cx, name)?;
    let body = message_body(message)?;
    let signed = RoomMessage::sign(&keys, name, room, now_ms(), &body)?;
    let receipt =
        cx.client.send_to_group(&room_group(room), serde_json::to_string(&signed)?.as_bytes(), Some(name))?;
    writeln!(out, "sent to room {room} (seq {})", receipt.parsed.seq)?;
    Ok(())
}

// ----- listening -------------------------------------------------------------------------------

/// One line of `listen --json`.
#[derive(Debug, Serialize)]
struct Line<'a> {
    kind: &'a str,
    from: &'a str,
    body: String,
    ts: u64,
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

/// Prints lines from several threads, one whole line at a time.
type Printer = Arc<Mutex<Box<dyn Write + Send>>>;

fn print_line(printer: &Printer, json: bool, line: &Line<'_>) -> Result<()> {
    print_text(printer, &line_text(json, line)?)
}

/// The main thread holds stdout's lock (`main`), so only it prints: other threads hand it text.
fn print_text(printer: &Printer, text: &str) -> Result<()> {
    let mut out = printer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

fn line_text(json: bool, line: &Line<'_>) -> Result<String> {
    Ok(if json {
        serde_json::to_string(line)?
    } else {
        match line.room {
            Some(room) => format!("[{}] #{room} {}: {}", clock(line.ts), line.from, line.body),
            None => format!("[{}] {}: {}", clock(line.ts), line.from, line.body),
        }
    })
}

/// Name records of senders, fetched once per run.
struct Senders {
    client: Client,
    known: HashMap<String, Option<NameRecord>>,
}

impl Senders {
    /// Whether `key` is the current key of `name`.
    fn owns(&mut self, name: &str, key: &overlay_chat::UserPublic) -> bool {
        if !self.known.contains_key(name) {
            let record = name_record(&self.client, name).ok().flatten();
            self.known.insert(name.to_owned(), record);
        }
        matches!(self.known.get(name), Some(Some(r)) if &r.owner == key && !r.released)
    }
}

fn listen(global: &GlobalArgs, cx: &Cx, name: &str, out: &mut impl Write) -> Result<()> {
    let keys = load_keys(cx, name)?;
    let (node, _) = chat_node(&cx.client)?;
    let state = load_state(&cx.keydir, name)?;
    let mut session = match state.sessions.get(&node.peer_id) {
        Some(s) if s.expires_ms > now_ms() + 60_000 => s.session.clone(),
        _ => login(cx, name)?.session,
    };
    // The live feed first, so that nothing sent while the mailbox drains goes past this
    // listener into the mailbox and stays there.
    let stream = match cx.client.event_stream(&format!("/v1/chat/listen?name={name}&session={session}"), None)
    {
        Ok(stream) => stream,
        Err(ApiError::Rejected { status, .. }) if status == StatusCode::FORBIDDEN => {
            // The node forgot the session (it restarted): log in afresh.
            session = login(cx, name)?.session;
            cx.client.event_stream(&format!("/v1/chat/listen?name={name}&session={session}"), None)?
        }
        Err(e) => return Err(e.into()),
    };
    out.flush()?;
    let printer: Printer = Arc::new(Mutex::new(Box::new(std::io::stdout())));
    let json = global.json;
    let mut senders = Senders { client: cx.client.clone(), known: HashMap::new() };
    if !json {
        eprintln!("listening as {name} at node {} (Ctrl-C to stop)", node.peer_id);
    }
    drain_mailbox(cx, name, &session, &keys, &mut senders, json, &printer)?;
    // Then the live feed, and the mailbox again as DMs land in it: one that found no listener
    // (sent while this one was attaching, or while its node was unreachable) waits there.
    let (tx, incoming) = std::sync::mpsc::channel();
    for room in &state.rooms {
        let (client, room, tx) = (cx.client.clone(), room.clone(), tx.clone());
        std::thread::spawn(move || {
            if let Err(e) = listen_room(&client, &room, json, &tx) {
                eprintln!("overlay: room {room}: {e:#}");
            }
        });
    }
    let feed = tx.clone();
    std::thread::spawn(move || read_feed(stream, &feed));
    let (client, mailbox_name, mailbox_session) = (cx.client.clone(), name.to_owned(), session.clone());
    std::thread::spawn(move || watch_mailbox(&client, &mailbox_name, &mailbox_session, &tx));
    for item in incoming {
        match item {
            Incoming::Dm(envelope) => {
                handle_dm(cx, name, &keys, &mut senders, &envelope, json, &printer)?;
            }
            Incoming::Mailbox(item) => {
                show_and_ack(cx, name, &session, &keys, &mut senders, json, &printer, item)?
            }
            Incoming::Print(text) => print_text(&printer, &text)?,
            Incoming::Ended(error) => return Err(error),
        }
    }
    bail!("the node ended the stream")
}

/// What the listening threads hand the printing one.
enum Incoming {
    Dm(Box<Envelope>),
    Mailbox(MailboxItem),
    /// A line ready to print (a room message).
    Print(String),
    Ended(anyhow::Error),
}

/// Reads the live feed of DMs until it ends.
fn read_feed(mut stream: overlay_api::GroupStream, tx: &std::sync::mpsc::Sender<Incoming>) {
    let ended = loop {
        match next_dm(&mut stream) {
            Ok(Some(envelope)) => {
                if tx.send(Incoming::Dm(Box::new(envelope))).is_err() {
                    return;
                }
            }
            Ok(None) => break anyhow!("the node ended the stream"),
            Err(e) => break e,
        }
    };
    let _ = tx.send(Incoming::Ended(ended));
}

/// Takes from the mailbox as DMs land in it (a blocking take of up to 20 s at a time).
fn watch_mailbox(client: &Client, name: &str, session: &str, tx: &std::sync::mpsc::Sender<Incoming>) {
    let take = MailboxTake { name: name.to_owned(), session: session.to_owned(), wait_ms: 20_000 };
    let Ok(take) = serde_json::to_vec(&take) else { return };
    loop {
        let item = match client.raw(&Method::POST, "/v1/chat/mailbox/take", &take) {
            Ok(response) if response.status == 204 => continue,
            Ok(response) => {
                call_answer(response).and_then(|body| Ok(serde_json::from_slice::<MailboxItem>(&body)?))
            }
            Err(e) => Err(e.into()),
        };
        match item {
            Ok(item) => {
                if tx.send(Incoming::Mailbox(item)).is_err() {
                    return;
                }
            }
            Err(e) if status_of(&e) == Some(StatusCode::FORBIDDEN) => {
                let _ = tx.send(Incoming::Ended(e.context("the mailbox")));
                return;
            }
            // The node is busy or a mailbox node is failing over: try again shortly.
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// Prints what waits in the mailbox, oldest first, acknowledging each once it is printed (or
/// dropped as unreadable), until the mailbox is empty.
fn drain_mailbox(
    cx: &Cx,
    name: &str,
    session: &str,
    keys: &UserKeys,
    senders: &mut Senders,
    json: bool,
    printer: &Printer,
) -> Result<()> {
    while let Some(item) = take_item(cx, name, session, Duration::ZERO)? {
        show_and_ack(cx, name, session, keys, senders, json, printer, item)?;
    }
    Ok(())
}

/// Shows a DM taken from the mailbox (once: it may have been shown live already), then
/// acknowledges it so that it is removed.
#[allow(clippy::too_many_arguments)]
fn show_and_ack(
    cx: &Cx,
    name: &str,
    session: &str,
    keys: &UserKeys,
    senders: &mut Senders,
    json: bool,
    printer: &Printer,
    item: MailboxItem,
) -> Result<()> {
    match serde_json::from_value::<Envelope>(item.envelope.clone()) {
        Ok(envelope) => {
            handle_dm(cx, name, keys, senders, &envelope, json, printer)?;
        }
        Err(e) => eprintln!("overlay: dropped an unreadable mailbox message: {e}"),
    }
    ack_item(cx, name, session, item)
}

/// Opens, checks and prints one DM, once.
fn handle_dm(
    cx: &Cx,
    name: &str,
    keys: &UserKeys,
    senders: &mut Senders,
    envelope: &Envelope,
    json: bool,
    printer: &Printer,
) -> Result<bool> {
    let id = hex(&envelope.id);
    let mut state = load_state(&cx.keydir, name)?;
    if state.seen.contains(&id) {
        return Ok(false);
    }
    let plain = match envelope.open(keys) {
        Ok(plain) => plain,
        Err(e) => {
            eprintln!("overlay: dropped a message that does not open: {e}");
            return Ok(false);
        }
    };
    if !senders.owns(&plain.from, &plain.from_key) {
        eprintln!("overlay: dropped a message whose sender key is not {:?}'s", plain.from);
        return Ok(false);
    }
    let line = Line {
        kind: "dm",
        from: &plain.from,
        body: String::from_utf8_lossy(&plain.body).into_owned(),
        ts: plain.ts_ms,
        id: id.clone(),
        room: None,
        seq: Some(plain.seq),
    };
    print_line(printer, json, &line)?;
    state.seen.push_back(id);
    while state.seen.len() > SEEN_IDS {
        state.seen.pop_front();
    }
    save_state(&cx.keydir, name, &state)?;
    Ok(true)
}

fn listen_room(
    client: &Client,
    room: &str,
    json: bool,
    tx: &std::sync::mpsc::Sender<Incoming>,
) -> Result<()> {
    let mut stream = client.group_messages(&room_group(room), None, None)?;
    let mut senders = Senders { client: client.clone(), known: HashMap::new() };
    while let Some(event) = stream.next_event()? {
        let GroupEvent::Message(message) = event else { continue };
        let Ok(signed) = serde_json::from_str::<RoomMessage>(&message.parsed.body) else {
            eprintln!("overlay: room {room}: dropped a message that is not a signed room message");
            continue;
        };
        if signed.room != room || signed.verify().is_err() || !senders.owns(&signed.from, &signed.from_key) {
            eprintln!("overlay: room {room}: dropped a message not signed by {:?}'s key", signed.from);
            continue;
        }
        let line = Line {
            kind: "room",
            from: &signed.from,
            body: String::from_utf8_lossy(&signed.body).into_owned(),
            ts: signed.ts_ms,
            id: hex(&signed.id),
            room: Some(room),
            seq: Some(message.parsed.seq),
        };
        if tx.send(Incoming::Print(line_text(json, &line)?)).is_err() {
            return Ok(());
        }
    }
    bail!("the node ended the room's stream")
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::ChatCommand;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("overlay").chain(args.iter().copied()))
    }

    #[test]
    fn chat_subcommands_parse_with_the_key_directory_anywhere_after_chat() {
        let cli = parse(&["chat", "--keys", "/k", "send", "bob", "hi", "--as", "alice"]).expect("parses");
        let Command::Chat(chat) = cli.command else { panic!("chat expected") };
        assert_eq!(chat.keys.as_deref(), Some(std::path::Path::new("/k")));
        assert!(
            matches!(chat.command, ChatCommand::Send { ref to, ref message, ref as_name } if to == "bob" && message == "hi" && as_name == "alice")
        );
        let cli = parse(&["chat", "listen", "--as", "bob", "--json", "--keys", "/k"]).expect("parses");
        assert!(cli.global.json);
        assert!(parse(&["chat", "send", "bob", "hi"]).is_err(), "--as is required");
        assert!(parse(&["chat", "listen"]).is_err(), "--as is required");
    }
}
