//! How a client proves it may use a node's API: a bearer token.
//!
//! Owns: the names every side agrees on (the environment variables the node and the CLI read,
//! the token file in a node's data directory), the list of paths that never need the token
//! ([`OPEN_PATHS`]), and the one way to write the `Authorization` header ([`bearer`]).
//!
//! A node needs the token when its API binds anything but loopback, or when one is given; then
//! every request outside [`OPEN_PATHS`] without `Authorization: Bearer <token>` is answered 401
//! with a `WWW-Authenticate: Bearer` header and an [`ErrorBody`](crate::ErrorBody).

/// The token, for the node (`--api-token`) and the CLI (`--api-token`).
pub const TOKEN_ENV: &str = "OVERLAY_API_TOKEN";

/// A file holding the token (`--api-token-file`), as container secrets are mounted.
pub const TOKEN_FILE_ENV: &str = "OVERLAY_API_TOKEN_FILE";

/// The token a node generated for itself, in its data directory (mode 0600).
pub const TOKEN_FILE_NAME: &str = "api-token";

/// Paths any client may ask without the token: the page and its two files (they hold no data;
/// the page asks for the token itself), the metrics a scraper reads, and the status probes and
/// health checks ask for.
pub const OPEN_PATHS: [&str; 5] = ["/", "/page.js", "/page.css", crate::path::METRICS, crate::path::STATUS];

/// Whether `path` (without its query) is one of [`OPEN_PATHS`].
pub fn is_open(path: &str) -> bool {
    OPEN_PATHS.contains(&path)
}

/// The value of the `Authorization` header that carries `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_page_metrics_and_status_are_open() {
        for open in ["/", "/page.js", "/page.css", "/metrics", "/v1/status"] {
            assert!(is_open(open), "{open}");
        }
        for closed in ["/v1/ring", "/v1/kv/a", "/v1/status/", "/v1/lookup/k", "/v1/groups", "/nope", ""] {
            assert!(!is_open(closed), "{closed}");
        }
    }
}
