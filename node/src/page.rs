//! The node's web page (`GET /`): the ring with every node's key count, a key's owner, replicas and
//! lookup path, a group's tree and this node's live load, drawn in the browser from the JSON API
//! this node already serves.
//!
//! Owns: the page's three files (`page/index.html`, `page/page.js`, `page/page.css`), embedded in
//! the binary with `include_str!`, and the handlers that serve them.
//!
//! Invariants:
//! - Nothing is built and nothing is fetched from elsewhere: the files are served as written, and
//!   the `Content-Security-Policy` on the page lets it load scripts, styles and data only from the
//!   node that served it (so it works with no internet, and cannot start depending on it unseen).
//! - The page adds no state to the node. Everything it shows comes from `GET /v1/status`,
//!   `/v1/ring`, `/v1/lookup/{key}`, `/v1/groups/{g}/tree` and `/metrics`, each asked at most once
//!   a second by one open page, never two of a kind at once (the page's cost is in the README).
//! - The three files are served without the API token (they hold no data): when the node's API
//!   needs one, the page asks for it once and sends it with each request (`page.js`, "the API
//!   token").
//!
//! The DOM hooks the end-to-end test reads (`data-peer-id`, `data-ring-id`, `data-role`,
//! `data-tree-node`, `data-state`, ...) are documented in the README's "Web page" section and at
//! the top of `page.js`.

use axum::http::{HeaderName, HeaderValue, header};
use axum::response::IntoResponse;

const INDEX_HTML: &str = include_str!("page/index.html");
const PAGE_JS: &str = include_str!("page/page.js");
const PAGE_CSS: &str = include_str!("page/page.css");

/// Scripts, styles, images and requests only from this node; no frames, no plugins.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The files change only with the binary; `no-cache` makes a browser revalidate, so a page open
/// across a node upgrade picks up the new script on reload.
fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    let headers: [(HeaderName, HeaderValue); 4] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
    ];
    (headers, body)
}

/// `GET /`: the page. Its `?key=` and `?group=` are read by the script, not here.
pub(crate) async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /page.js`.
pub(crate) async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", PAGE_JS)
}

/// `GET /page.css`.
pub(crate) async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", PAGE_CSS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files() {
        for text in [INDEX_HTML, PAGE_JS, PAGE_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"), "an absolute URL in the page");
        }
        assert!(INDEX_HTML.contains(r#"<script src="/page.js""#));
        assert!(INDEX_HTML.contains(r#"<link rel="stylesheet" href="/page.css""#));
    }

    #[test]
    fn the_script_knows_which_paths_need_no_token() {
        let line = PAGE_JS.lines().find(|l| l.contains("const OPEN_PATHS")).expect("the script's list");
        let quoted: Vec<String> = overlay_api::auth::OPEN_PATHS.iter().map(|p| format!("\"{p}\"")).collect();
        assert_eq!(line.matches('"').count(), 2 * quoted.len(), "{line}");
        for path in quoted {
            assert!(line.contains(&path), "{path} missing from {line}");
        }
    }
}
