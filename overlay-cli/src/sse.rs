//! Server-sent events framing: turns the bytes of a `text/event-stream` body, as they arrive in
//! reads of any size, into events. Owns nothing but the partial line and the event being built.
//!
//! It follows the WHATWG "event stream interpretation" rules that `group listen` needs: lines
//! end with `\n`, `\r\n` or `\r` (also when a read ends between `\r` and `\n`); a line starting
//! with `:` is a comment (the node's keep-alives); `event:` names the event; every `data:` line
//! appends its value plus `\n`; an empty line dispatches the event, without the last `\n`, and
//! named `message` when no `event:` was given. One space after the colon is dropped. `id:` and
//! `retry:` are ignored: the CLI resumes by sequence number (`--from`), not by event id.
//!
//! Invariant: memory stays bounded: a line or an event's data longer than [`MAX_EVENT_BYTES`] is
//! an error, not a reason to buffer more.

/// Largest line, and largest data of one event, the parser buffers. A group message body is at
/// most 64 KiB; JSON-escaping control characters can make it six times longer, plus the sender
/// label and the envelope, so 1 MiB leaves ample room while still refusing an endless line.
pub(crate) const MAX_EVENT_BYTES: usize = 1 << 20;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field, `message` when absent.
    pub(crate) event: String,
    /// The `data:` lines joined with `\n`.
    pub(crate) data: String,
}

/// Why the stream cannot be parsed further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SseError {
    /// A line or an event's data exceeded [`MAX_EVENT_BYTES`]: the server does not follow the
    /// group API, or it is not the node.
    #[error("an event of more than {MAX_EVENT_BYTES} bytes")]
    EventTooLarge,
}

/// Incremental parser; feed it every chunk read from the body, in order.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    /// Bytes of the line not yet ended.
    line: Vec<u8>,
    /// The last byte fed ended a line with `\r`, so a `\n` that follows belongs to that line end.
    after_cr: bool,
    /// The `event:` field of the event being built, empty if none yet.
    event: String,
    /// The `data:` lines of the event being built, each followed by `\n`.
    data: String,
}

impl SseParser {
    pub(crate) fn new() -> Self {
        SseParser::default()
    }

    /// Parses `bytes` and appends every event they complete to `events`.
    pub(crate) fn feed(&mut self, bytes: &[u8], events: &mut Vec<SseEvent>) -> Result<(), SseError> {
        for &byte in bytes {
            if std::mem::take(&mut self.after_cr) && byte == b'\n' {
                continue;
            }
            match byte {
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.process_line(&line)? {
                        events.push(event);
                    }
                    // Keep the allocation for the next line unless one huge line inflated it.
                    if line.capacity() <= 4096 {
                        self.line = line;
                        self.line.clear();
                    }
                }
                _ => {
                    if self.line.len() >= MAX_EVENT_BYTES {
                        return Err(SseError::EventTooLarge);
                    }
                    self.line.push(byte);
                }
            }
        }
        Ok(())
    }

    fn process_line(&mut self, line: &[u8]) -> Result<Option<SseEvent>, SseError> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line[0] == b':' {
            return Ok(None);
        }
        // The standard decodes the stream as UTF-8 with replacement; the node only sends UTF-8.
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event),
            "data" => {
                if self.data.len() + value.len() + 1 > MAX_EVENT_BYTES {
                    return Err(SseError::EventTooLarge);
                }
                self.data.push_str(value);
                self.data.push('\n');
            }
            // `id`, `retry` and unknown fields are ignored, as the standard says.
            _ => {}
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = std::mem::take(&mut self.event);
        if self.data.is_empty() {
            return None;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        Some(SseEvent { event: if event.is_empty() { "message".to_owned() } else { event }, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_chunks(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut events).expect("valid stream");
        }
        events
    }

    fn event(name: &str, data: &str) -> SseEvent {
        SseEvent { event: name.to_owned(), data: data.to_owned() }
    }

    #[test]
    fn named_events_and_comments() {
        let stream = b": keep-alive\n\nevent: message\ndata: {\"seq\":1}\n\n: keep-alive\n\nevent: gap\ndata: {\"from\":3,\"to\":9}\n\n";
        assert_eq!(
            parse_in_chunks(&[stream]),
            vec![event("message", "{\"seq\":1}"), event("gap", "{\"from\":3,\"to\":9}")]
        );
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines_and_the_name_defaults_to_message() {
        let stream = b"data: first\ndata:second\ndata\ndata:  two spaces\n\n";
        assert_eq!(parse_in_chunks(&[stream]), vec![event("message", "first\nsecond\n\n two spaces")]);
    }

    #[test]
    fn every_line_ending_is_accepted() {
        let expected = vec![event("message", "a"), event("gap", "b")];
        assert_eq!(parse_in_chunks(&[b"data: a\r\n\r\nevent: gap\r\ndata: b\r\n\r\n"]), expected);
        assert_eq!(parse_in_chunks(&[b"data: a\r\revent: gap\rdata: b\r\r"]), expected);
        assert_eq!(parse_in_chunks(&[b"data: a\n\nevent: gap\r\ndata: b\r\r"]), expected);
    }

    #[test]
    fn events_split_across_reads_at_any_byte() {
        let stream: &[u8] = b"event: message\r\ndata: {\"body\":\"h\xc3\xa9llo\"}\r\n\r\n: ka\r\n\r\nevent: gap\r\ndata: x\r\n\r\n";
        let whole = parse_in_chunks(&[stream]);
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[0].data, "{\"body\":\"héllo\"}");
        for split in 0..=stream.len() {
            let (a, b) = stream.split_at(split);
            assert_eq!(parse_in_chunks(&[a, b]), whole, "split at byte {split}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(parse_in_chunks(&bytes), whole, "one byte per read");
    }

    #[test]
    fn a_split_crlf_is_one_line_end_not_two() {
        // Were the `\n` after a read-ending `\r` taken for an empty line, it would dispatch early.
        assert_eq!(parse_in_chunks(&[b"data: a\r", b"\ndata: b\r\n\r\n"]), vec![event("message", "a\nb")]);
    }

    #[test]
    fn events_without_data_are_not_dispatched_and_incomplete_ones_wait() {
        assert!(parse_in_chunks(&[b"event: gap\n\n"]).is_empty());
        // The `event:` of an undispatched event does not leak into the next one.
        assert_eq!(parse_in_chunks(&[b"event: gap\n\ndata: x\n\n"]), vec![event("message", "x")]);
        assert!(parse_in_chunks(&[b"event: message\ndata: x\n"]).is_empty());
    }

    #[test]
    fn endless_lines_are_refused() {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        let chunk = vec![b'x'; 64 * 1024];
        let mut result = Ok(());
        for _ in 0..=(MAX_EVENT_BYTES / chunk.len()) {
            result = parser.feed(&chunk, &mut events);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SseError::EventTooLarge));
    }
}
