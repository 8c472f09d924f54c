//! The HTTP API's bearer token: whether the API needs one, where it comes from, and the check in
//! front of every protected route.
//!
//! Owns: the rule ([`resolve`]): a token given with `--api-token` or `--api-token-file` is always
//! enforced; otherwise an API bound to loopback needs none, and one bound to anything else uses
//! the token in `<data_dir>/api-token`, generated on first start; that file (32 random bytes
//! from the operating system, as 64 hex digits, mode 0600, written atomically, reused on every
//! restart); and the middleware ([`require_token`]) that answers 401 to any request outside
//! [`overlay_api::auth::OPEN_PATHS`] without the right `Authorization: Bearer` header, and
//! counts those refusals ([`Refusals`], shown by `/metrics`).
//!
//! Invariants:
//! - the token's value is never logged: [`ApiToken`]'s `Debug` is redacted (the effective
//!   configuration is logged at info), and the only place the value is ever shown is stderr,
//!   once, when the file is created;
//! - fail closed: every path is protected unless it is one of the open ones, unknown paths
//!   included, so a route added later needs the token until someone opens it on purpose;
//! - the comparison takes the same time whatever the presented token's bytes (for a token of
//!   the right length; the length itself is not secret: generated tokens all have 64 digits).

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use overlay_api::ErrorBody;
use overlay_api::auth::{TOKEN_FILE_NAME, is_open};
use subtle::ConstantTimeEq;
use tracing::{debug, info, warn};

use crate::metrics::ApiRefusals;

/// Random bytes in a generated token: 256 bits, beyond guessing at any request rate.
const GENERATED_BYTES: usize = 32;

/// Longest token accepted; a header value, not a document.
const MAX_TOKEN_BYTES: usize = 1024;

/// A bearer token: 1 to [`MAX_TOKEN_BYTES`] visible ASCII characters (what an HTTP header
/// carries without quoting). Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// Why a text is not a token.
#[derive(Debug, thiserror::Error)]
#[error("an API token is 1 to {MAX_TOKEN_BYTES} visible ASCII characters (no spaces)")]
pub struct InvalidToken;

impl FromStr for ApiToken {
    type Err = InvalidToken;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let visible = |b: &u8| (0x21..=0x7e).contains(b);
        if text.is_empty() || text.len() > MAX_TOKEN_BYTES || !text.as_bytes().iter().all(visible) {
            return Err(InvalidToken);
        }
        Ok(ApiToken(text.to_owned()))
    }
}

impl ApiToken {
    /// A new token from the operating system's random source.
    pub fn generate() -> anyhow::Result<Self> {
        use rand::TryRng;
        let mut bytes = [0u8; GENERATED_BYTES];
        rand::rngs::SysRng.try_fill_bytes(&mut bytes).context("reading the system's random source")?;
        Ok(ApiToken(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// The token itself, to hand to a person or a client. Never log it.
    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, in time independent of its bytes.
    fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

/// Where the enforced token came from, for the log (which never shows the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `--api-token` / `OVERLAY_API_TOKEN`.
    Given,
    /// `--api-token-file` / `OVERLAY_API_TOKEN_FILE`.
    GivenFile(PathBuf),
    /// `<data_dir>/api-token`, made by this start (`created`) or an earlier one.
    DataDir {
        /// The file.
        path: PathBuf,
        /// Whether this start generated it.
        created: bool,
    },
}

/// The token the API enforces, if any: `given` (from `--api-token`) or the contents of
/// `given_file`; else none when `http` is a loopback address; else the data directory's token
/// file, created with a new token if it does not exist. A token created here is printed to
/// stderr, once: every later start reuses the file and prints nothing.
pub fn resolve(
    given: Option<&ApiToken>,
    given_file: Option<&Path>,
    http: SocketAddr,
    data_dir: &Path,
) -> anyhow::Result<Option<(ApiToken, TokenSource)>> {
    if let Some(token) = given {
        return Ok(Some((token.clone(), TokenSource::Given)));
    }
    if let Some(path) = given_file {
        let token = read_token_file(path)?;
        return Ok(Some((token, TokenSource::GivenFile(path.to_owned()))));
    }
    if http.ip().is_loopback() {
        return Ok(None);
    }
    let path = data_dir.join(TOKEN_FILE_NAME);
    if path.exists() {
        warn_if_readable_by_others(&path);
        let token = read_token_file(&path).context("remove the file to have a new token generated")?;
        return Ok(Some((token, TokenSource::DataDir { path, created: false })));
    }
    let token = ApiToken::generate()?;
    write_token_file(data_dir, &token)?;
    // Shown once, to whoever started the node: on stderr and not through the log, which may
    // be collected and kept. It stays in the file for later.
    eprintln!(
        "overlay-node: the HTTP API on {http} is not on loopback, so it needs a bearer token.\n\
         overlay-node: generated API token (kept in {}): {}",
        path.display(),
        token.reveal()
    );
    Ok(Some((token, TokenSource::DataDir { path, created: true })))
}

fn read_token_file(path: &Path) -> anyhow::Result<ApiToken> {
    let text =
        fs::read_to_string(path).with_context(|| format!("reading the API token {}", path.display()))?;
    text.trim().parse().with_context(|| format!("{} does not hold a valid API token", path.display()))
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            let mode = format!("{mode:o}");
            warn!(path = %path.display(), %mode, "the API token file is readable by others; chmod 600 it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// Writes `<data_dir>/api-token` so that a crash leaves either no file or the whole token: a
/// temporary file (mode 0600 from its creation, never readable by others), fsync, rename, and
/// fsync of the directory so the rename itself survives a power loss.
fn write_token_file(data_dir: &Path, token: &ApiToken) -> anyhow::Result<()> {
    let path = data_dir.join(TOKEN_FILE_NAME);
    let tmp = data_dir.join(format!("{TOKEN_FILE_NAME}.tmp"));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    #[cfg(unix)]
    {
        // `mode` applies only to a new file; a temporary file left by a crash keeps its own.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", tmp.display()))?;
    }
    file.write_all(format!("{}\n", token.reveal()).as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(file);
    fs::rename(&tmp, &path).with_context(|| format!("saving {}", path.display()))?;
    fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("syncing the directory {}", data_dir.display()))?;
    Ok(())
}

/// Logs, without the token, whether and how the API is protected.
pub fn log_requirement(http: SocketAddr, token: Option<&(ApiToken, TokenSource)>) {
    match token {
        None => info!(%http, "HTTP API on loopback without a token"),
        Some((_, source)) => {
            let open = overlay_api::auth::OPEN_PATHS.join(" ");
            info!(%http, ?source, %open, "HTTP API needs a bearer token except on the open paths")
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No `Authorization` header.
    Missing,
    /// A header that is not `Bearer <token>`.
    Malformed,
    /// A bearer token that is not this node's.
    Wrong,
}

/// Checks the `Authorization` header against `token`.
fn check(token: &ApiToken, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Err(Refusal::Missing) };
    let value = value.as_bytes();
    // RFC 7235: the scheme is case-insensitive; one space separates it from the credentials.
    let (scheme, presented) = value.split_at_checked(7).ok_or(Refusal::Malformed)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return Err(Refusal::Malformed);
    }
    if token.matches(presented) { Ok(()) } else { Err(Refusal::Wrong) }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        // RFC 6750: `invalid_token` tells a client that its token, not its request, is wrong.
        let (challenge, error) = match self {
            Refusal::Missing => (
                r#"Bearer realm="overlay""#,
                "this node's API needs a bearer token (Authorization: Bearer TOKEN)",
            ),
            Refusal::Malformed => (
                r#"Bearer realm="overlay", error="invalid_request""#,
                "the Authorization header must be: Bearer TOKEN",
            ),
            Refusal::Wrong => {
                (r#"Bearer realm="overlay", error="invalid_token""#, "the API token is not this node's")
            }
        };
        let headers = [(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge))];
        (StatusCode::UNAUTHORIZED, headers, Json(ErrorBody { error: error.to_owned() })).into_response()
    }
}

/// Requests refused, counted by the middleware on whichever task serves them and read by the
/// `/metrics` handler: plain atomic counters, no lock, and nothing for the event loop to do.
#[derive(Debug, Default)]
pub struct Refusals {
    missing: AtomicU64,
    malformed: AtomicU64,
    wrong: AtomicU64,
}

impl Refusals {
    fn count(&self, refusal: Refusal) {
        let counter = match refusal {
            Refusal::Missing => &self.missing,
            Refusal::Malformed => &self.malformed,
            Refusal::Wrong => &self.wrong,
        };
        // Relaxed: independent counters; a scrape needs no ordering with anything else.
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn counts(&self) -> ApiRefusals {
        ApiRefusals {
            missing: self.missing.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            wrong: self.wrong.load(Ordering::Relaxed),
        }
    }
}

/// What [`require_token`] holds.
#[derive(Clone, Debug)]
pub(crate) struct Guard {
    /// The token to require.
    pub(crate) token: Arc<ApiToken>,
    /// Where refusals are counted.
    pub(crate) refusals: Arc<Refusals>,
}

/// Middleware: passes requests for open paths, and others only with the right bearer token;
/// refusals are counted and logged at debug (a client's mistake or a probe, not the node's).
pub(crate) async fn require_token(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    if is_open(request.uri().path()) {
        return next.run(request).await;
    }
    match check(&guard.token, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            guard.refusals.count(refusal);
            debug!(method = %request.method(), ?refusal, "API request refused: no valid token");
            refusal.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).expect("a header value"));
        }
        headers
    }

    fn token(text: &str) -> ApiToken {
        text.parse().expect("a valid token")
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        let token = token("s3cret-token");
        assert_eq!(check(&token, &headers(Some("Bearer s3cret-token"))), Ok(()));
        assert_eq!(check(&token, &headers(Some("bearer s3cret-token"))), Ok(()));
        assert_eq!(check(&token, &headers(None)), Err(Refusal::Missing));
        assert_eq!(check(&token, &headers(Some("Bearer s3cret-tokeN"))), Err(Refusal::Wrong));
        assert_eq!(check(&token, &headers(Some("Bearer s3cret-token2"))), Err(Refusal::Wrong));
        assert_eq!(check(&token, &headers(Some("Bearer s3cret"))), Err(Refusal::Wrong));
        assert_eq!(check(&token, &headers(Some("Bearer "))), Err(Refusal::Wrong));
        assert_eq!(check(&token, &headers(Some("Basic czNjcmV0"))), Err(Refusal::Malformed));
        assert_eq!(check(&token, &headers(Some("s3cret-token"))), Err(Refusal::Malformed));
        assert_eq!(check(&token, &headers(Some("Bearer"))), Err(Refusal::Malformed));
    }

    #[test]
    fn refusals_are_counted_by_reason() {
        let refusals = Refusals::default();
        for refusal in [Refusal::Wrong, Refusal::Missing, Refusal::Wrong] {
            refusals.count(refusal);
        }
        assert_eq!(refusals.counts(), ApiRefusals { missing: 1, malformed: 0, wrong: 2 });
    }

    #[test]
    fn a_refusal_is_a_401_with_a_challenge_and_a_json_error() {
        for refusal in [Refusal::Missing, Refusal::Malformed, Refusal::Wrong] {
            let response = refusal.into_response();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            let challenge = response.headers()[header::WWW_AUTHENTICATE].to_str().expect("ASCII");
            assert!(challenge.starts_with("Bearer "), "{challenge}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        }
    }

    #[test]
    fn tokens_are_visible_ascii_and_never_printed() {
        assert!("".parse::<ApiToken>().is_err());
        assert!("has space".parse::<ApiToken>().is_err());
        assert!("tab\there".parse::<ApiToken>().is_err());
        assert!("é".parse::<ApiToken>().is_err());
        assert!("x".repeat(MAX_TOKEN_BYTES + 1).parse::<ApiToken>().is_err());
        assert_eq!(format!("{:?}", token("s3cret")), "ApiToken(<redacted>)");
        let generated = ApiToken::generate().expect("random bytes");
        assert_eq!(generated.reveal().len(), 2 * GENERATED_BYTES);
        assert!(generated.reveal().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(generated, ApiToken::generate().expect("random bytes"));
    }

    #[test]
    fn loopback_needs_no_token_unless_one_is_given() {
        let dir = tempfile::tempdir().expect("temp dir");
        let loopback: SocketAddr = "127.0.0.1:7001".parse().expect("addr");
        assert_eq!(resolve(None, None, loopback, dir.path()).expect("resolved"), None);
        assert!(!dir.path().join(TOKEN_FILE_NAME).exists());
        let given = token("given");
        let (enforced, source) =
            resolve(Some(&given), None, loopback, dir.path()).expect("resolved").expect("a token");
        assert_eq!((enforced, source), (given, TokenSource::Given));
    }

    #[test]
    fn a_generated_token_is_kept_private_and_reused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let everywhere: SocketAddr = "0.0.0.0:7001".parse().expect("addr");
        let (first, source) =
            resolve(None, None, everywhere, dir.path()).expect("resolved").expect("a token");
        let path = dir.path().join(TOKEN_FILE_NAME);
        assert_eq!(source, TokenSource::DataDir { path: path.clone(), created: true });
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("the file").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert!(!dir.path().join(format!("{TOKEN_FILE_NAME}.tmp")).exists());
        let (again, source) =
            resolve(None, None, everywhere, dir.path()).expect("resolved").expect("a token");
        assert_eq!((again, source), (first, TokenSource::DataDir { path: path.clone(), created: false }));

        fs::write(&path, "not a token\n").expect("write");
        assert!(
            resolve(None, None, everywhere, dir.path()).is_err(),
            "a damaged file is an error, not a new token"
        );
    }
}
