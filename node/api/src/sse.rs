//! Server-sent events (`text/event-stream`): turns the bytes of a body, as they arrive in reads
//! of any size, into events. [`SseParser`] is the push parser (it owns nothing but the partial
//! line and the event being built); [`EventReader`] pulls events from any blocking
//! [`std::io::Read`], such as the client's response body.
//!
//! It follows the WHATWG "event stream interpretation" rules that a group's stream needs: lines
//! end with `\n`, `\r\n` or `\r` (also when a read ends between `\r` and `\n`); a line starting
//! with `:` is a comment (the node's keep-alives); `event:` names the event; every `data:` line
//! appends its value plus `\n`; an empty line dispatches the event, without the last `\n`, and
//! named `message` when no `event:` was given. One space after the colon is dropped. `id:` and
//! `retry:` are ignored: clients resume by sequence number (`?from=`), not by event id.
//!
//! The crates that parse event streams read from async streams; a blocking client needs a
//! blocking reader, and this parser is small and tested, so it stays ours.
//!
//! Invariant: memory stays bounded: a line or an event's data longer than [`MAX_EVENT_BYTES`] is
//! an error, not a reason to buffer more.

use std::collections::VecDeque;
use std::io::{self, Read};

/// Largest line, and largest data of one event, the parser buffers. A group message body is at
/// most 64 KiB; JSON-escaping control characters can make it six times longer, plus the sender
/// label and the envelope, so 1 MiB leaves ample room while still refusing an endless line.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, `message` when absent.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Why the stream cannot be parsed further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line or an event's data exceeded [`MAX_EVENT_BYTES`]: the server does not follow the
    /// group API, or it is not the node.
    #[error("an event of more than {MAX_EVENT_BYTES} bytes")]
    EventTooLarge,
}

/// Incremental parser; feed it every chunk read from the body, in order.
#[derive(Debug, Default)]
pub struct SseParser {
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
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        SseParser::default()
    }

    /// Parses `bytes` and appends every event they complete to `events`.
    pub fn feed(&mut self, bytes: &[u8], events: &mut Vec<SseEvent>) -> Result<(), SseError> {
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

/// Size of one read from the underlying reader.
const READ_CHUNK: usize = 16 * 1024;

/// Why an [`EventReader`] cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading failed (a time-out shows here with [`io::ErrorKind::TimedOut`]).
    #[error("the stream broke: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not an event stream this parser accepts.
    #[error(transparent)]
    Framing(#[from] SseError),
}

/// Pulls events from a blocking reader: each call reads until the next event is complete.
#[derive(Debug)]
pub struct EventReader<R> {
    reader: R,
    parser: SseParser,
    /// Events parsed but not yet returned, oldest first.
    pending: VecDeque<SseEvent>,
    buffer: Box<[u8]>,
}

impl<R: Read> EventReader<R> {
    /// Reads events from `reader`, which must be positioned at the start of the body.
    pub fn new(reader: R) -> Self {
        EventReader {
            reader,
            parser: SseParser::new(),
            pending: VecDeque::new(),
            buffer: vec![0; READ_CHUNK].into_boxed_slice(),
        }
    }

    /// The next event; `Ok(None)` at the end of the body (an event the body ends inside of is
    /// dropped, as the standard says). Blocks until an event is complete: comments such as
    /// keep-alives are consumed without returning.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, StreamError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(Some(event));
            }
            let read = match self.reader.read(&mut self.buffer) {
                Ok(0) => return Ok(None),
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            let mut parsed = Vec::new();
            // A framing error ends the stream, along with events the same read completed: the
            // caller stops at the error anyway.
            self.parser.feed(&self.buffer[..read], &mut parsed)?;
            self.pending.extend(parsed);
        }
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

    /// A reader that returns one prepared chunk (or error) per call, as a socket might.
    struct Chunks(VecDeque<io::Result<Vec<u8>>>);

    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.pop_front() {
                None => Ok(0),
                Some(Err(e)) => Err(e),
                Some(Ok(mut chunk)) => {
                    let n = chunk.len().min(buf.len());
                    buf[..n].copy_from_slice(&chunk[..n]);
                    if n < chunk.len() {
                        self.0.push_front(Ok(chunk.split_off(n)));
                    }
                    Ok(n)
                }
            }
        }
    }

    fn reader(chunks: Vec<io::Result<&[u8]>>) -> EventReader<Chunks> {
        EventReader::new(Chunks(chunks.into_iter().map(|c| c.map(<[u8]>::to_vec)).collect()))
    }

    #[test]
    fn the_reader_skips_keep_alives_and_joins_events_split_across_reads() {
        let mut events = reader(vec![
            Ok(b": keep-alive\n\n"),
            Ok(b"event: message\ndata: {\"seq\""),
            Err(io::Error::from(io::ErrorKind::Interrupted)),
            Ok(b":1}\n"),
            Ok(b"\n: keep-alive\n\nevent: gap\ndata: a\ndata: b\n\ndata: x\n\n"),
        ]);
        assert_eq!(events.next_event().expect("an event"), Some(event("message", "{\"seq\":1}")));
        assert_eq!(events.next_event().expect("an event"), Some(event("gap", "a\nb")));
        assert_eq!(events.next_event().expect("an event"), Some(event("message", "x")));
        assert_eq!(events.next_event().expect("the end"), None);
    }

    #[test]
    fn an_event_cut_off_by_the_end_of_the_body_is_dropped() {
        let mut events = reader(vec![Ok(b"data: whole\n\ndata: half")]);
        assert_eq!(events.next_event().expect("an event"), Some(event("message", "whole")));
        assert_eq!(events.next_event().expect("the end"), None);
    }

    #[test]
    fn read_errors_and_framing_errors_end_the_reader() {
        let mut events = reader(vec![Ok(b": ka\n"), Err(io::Error::from(io::ErrorKind::TimedOut))]);
        let error = events.next_event().expect_err("a time-out");
        assert!(matches!(error, StreamError::Io(ref e) if e.kind() == io::ErrorKind::TimedOut), "{error}");
        let endless = vec![b'x'; MAX_EVENT_BYTES + 1];
        let mut events = reader(vec![Ok(&endless)]);
        assert!(matches!(events.next_event(), Err(StreamError::Framing(SseError::EventTooLarge))));
    }
}
