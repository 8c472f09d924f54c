//! Request paths of the API, with keys, group names and labels percent-encoded.
//!
//! Every function returns a path with its query (`/v1/kv/a%2Fb?consistency=all`), to be appended
//! to a base URL such as `http://127.0.0.1:7001`. They encode and do not judge: an empty key
//! or a name the node would refuse still gets a path, so that tests can send bad input on
//! purpose; the client (`Client`) checks before it builds.
//!
//! Encoding keeps a key one path segment whatever it holds: every byte except RFC 3986's
//! unreserved characters (`A-Z a-z 0-9 - . _ ~`) is percent-encoded, and the segments `.` and
//! `..` are encoded whole, because clients and proxies remove such dot-segments from paths
//! before the node would see them. Query values are encoded the same way.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::consistency::Consistency;

/// What [`encode_path_segment`] encodes: everything but the unreserved characters.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `GET /v1/status`.
pub const STATUS: &str = "/v1/status";
/// `GET /v1/ring`.
pub const RING: &str = "/v1/ring";
/// `GET /v1/groups`.
pub const GROUPS: &str = "/v1/groups";
/// `GET /metrics` (Prometheus text).
pub const METRICS: &str = "/metrics";

/// `GET /[?key=K][&group=G]`: the node's web page, showing a key and a group if given.
pub fn page(key: Option<&str>, group: Option<&str>) -> String {
    let query: Vec<String> = [("key", key), ("group", group)]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name}={}", encode_path_segment(v))))
        .collect();
    if query.is_empty() { "/".to_owned() } else { format!("/?{}", query.join("&")) }
}

/// Percent-encodes `segment` so that it stays one path segment (or one query value).
pub fn encode_path_segment(segment: &str) -> String {
    if segment == "." || segment == ".." {
        return "%2E".repeat(segment.len());
    }
    utf8_percent_encode(segment, NOT_UNRESERVED).to_string()
}

/// `GET`, `PUT` or `DELETE /v1/kv/{key}[?consistency=...]`; without a level the node uses its
/// default (quorum).
pub fn kv(key: &str, consistency: Option<Consistency>) -> String {
    let mut path = format!("/v1/kv/{}", encode_path_segment(key));
    if let Some(consistency) = consistency {
        path.push_str("?consistency=");
        path.push_str(consistency.as_str());
    }
    path
}

/// `PUT` or `DELETE /v1/kv/{key}?if-version=V` or `?if-absent=true`.
pub fn kv_conditional(key: &str, condition: &crate::kv::Condition) -> String {
    let segment = encode_path_segment(key);
    match condition {
        crate::kv::Condition::Version(version) => {
            format!("/v1/kv/{segment}?if-version={}", encode_path_segment(version))
        }
        crate::kv::Condition::Absent => format!("/v1/kv/{segment}?if-absent=true"),
    }
}

/// `GET /v1/kv/{key}?local=true`: only the answering node's own copy, no quorum.
pub fn kv_local(key: &str) -> String {
    format!("/v1/kv/{}?local=true", encode_path_segment(key))
}

/// `GET /v1/lookup/{key}`.
pub fn lookup(key: &str) -> String {
    format!("/v1/lookup/{}", encode_path_segment(key))
}

/// `POST /v1/groups/{g}/join`.
pub fn group_join(group: &str) -> String {
    group_path(group, "/join")
}

/// `POST /v1/groups/{g}/leave`.
pub fn group_leave(group: &str) -> String {
    group_path(group, "/leave")
}

/// `POST /v1/groups/{g}/messages[?from=LABEL]`.
pub fn group_send(group: &str, from: Option<&str>) -> String {
    let mut path = group_path(group, "/messages");
    if let Some(from) = from {
        path.push_str("?from=");
        path.push_str(&encode_path_segment(from));
    }
    path
}

/// `GET /v1/groups/{g}/messages[?from=SEQ]`: the group's event stream, replayed from `SEQ`.
pub fn group_listen(group: &str, from: Option<u64>) -> String {
    let mut path = group_path(group, "/messages");
    if let Some(from) = from {
        path.push_str(&format!("?from={from}"));
    }
    path
}

/// `GET /v1/groups/{g}/tree`.
pub fn group_tree(group: &str) -> String {
    group_path(group, "/tree")
}

fn queue_path(queue: &str, rest: &str) -> String {
    format!("/v1/queues/{}{rest}", encode_path_segment(queue))
}

/// `POST /v1/queues/{q}/messages` (put) and `GET` (notify stream from `from`).
pub fn queue_messages(queue: &str, from: Option<u64>) -> String {
    let mut path = queue_path(queue, "/messages");
    if let Some(from) = from {
        path.push_str(&format!("?from={from}"));
    }
    path
}

/// `POST /v1/queues/{q}/take?wait=..&lease=..`.
pub fn queue_take(queue: &str, wait_seconds: f64, lease_seconds: f64) -> String {
    queue_path(queue, &format!("/take?wait={wait_seconds}&lease={lease_seconds}"))
}

/// `POST /v1/queues/{q}/ack`.
pub fn queue_ack(queue: &str) -> String {
    queue_path(queue, "/ack")
}

/// `GET /v1/queues/{q}`.
pub fn queue_stat(queue: &str) -> String {
    queue_path(queue, "")
}

fn group_path(group: &str, rest: &str) -> String {
    format!("/v1/groups/{}{rest}", encode_path_segment(group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_takes_a_key_and_a_group_as_query_values() {
        assert_eq!(page(None, None), "/");
        assert_eq!(page(Some("demo/paris"), None), "/?key=demo%2Fparis");
        assert_eq!(page(Some("a b"), Some("chat&more")), "/?key=a%20b&group=chat%26more");
    }

    #[test]
    fn unreserved_characters_pass_through() {
        assert_eq!(encode_path_segment("Key-1.2_three~"), "Key-1.2_three~");
    }

    #[test]
    fn reserved_and_non_ascii_bytes_are_encoded_in_upper_case_hex() {
        assert_eq!(encode_path_segment("a/b"), "a%2Fb");
        assert_eq!(encode_path_segment("a b?c#d%e"), "a%20b%3Fc%23d%25e");
        assert_eq!(encode_path_segment("ü"), "%C3%BC");
        assert_eq!(encode_path_segment("+&=;,"), "%2B%26%3D%3B%2C");
        assert_eq!(encode_path_segment("\0\n\u{7f}"), "%00%0A%7F");
        assert_eq!(encode_path_segment("%2F"), "%252F", "an encoded-looking key is encoded again");
        assert_eq!(encode_path_segment("🦀"), "%F0%9F%A6%80");
        assert_eq!(encode_path_segment(""), "");
    }

    #[test]
    fn dot_segments_are_encoded_whole() {
        assert_eq!(encode_path_segment("."), "%2E");
        assert_eq!(encode_path_segment(".."), "%2E%2E");
        assert_eq!(encode_path_segment("..."), "...");
        assert_eq!(encode_path_segment("../etc"), "..%2Fetc");
    }

    #[test]
    fn paths_carry_their_queries_only_when_asked() {
        assert_eq!(kv("a/b", None), "/v1/kv/a%2Fb");
        assert_eq!(kv("k", Some(Consistency::Quorum)), "/v1/kv/k?consistency=quorum");
        assert_eq!(kv_local("k"), "/v1/kv/k?local=true");
        assert_eq!(lookup(".."), "/v1/lookup/%2E%2E");
        assert_eq!(group_join("a b"), "/v1/groups/a%20b/join");
        assert_eq!(group_leave("g"), "/v1/groups/g/leave");
        assert_eq!(group_send("g", Some("al&ce")), "/v1/groups/g/messages?from=al%26ce");
        assert_eq!(group_send("g", None), "/v1/groups/g/messages");
        assert_eq!(group_listen("g", Some(7)), "/v1/groups/g/messages?from=7");
        assert_eq!(group_tree("g/h"), "/v1/groups/g%2Fh/tree");
    }
}
