//! The node's server-sent event streams as the client reads them: [`GroupStream`] (a group's
//! messages and gaps, or the chat feed), [`QueueStream`] (a queue's messages as they are put), and
//! [`StreamCloser`], which closes either from another thread. Each stream owns its connection and
//! agent, so closing one closes nothing else.

use std::fmt;
use std::time::Duration;

use super::{ApiError, parse_document};
use crate::document::Document;
use crate::groups::GroupEvent;
use crate::queues::QueueItem;
use crate::sse::{EventReader, StreamError};

/// An open server-sent event stream of the node's API: the connection, its own agent (so that
/// shutting it down closes only this stream) and its time limit. [`GroupStream`] and
/// [`QueueStream`] read their events from it.
pub(super) struct EventStream {
    pub(super) url: String,
    pub(super) limit: Option<Duration>,
    pub(super) events: EventReader<ureq::BodyReader<'static>>,
    pub(super) agent: ureq::Agent,
}

impl EventStream {
    /// The next event of any name, as sent; `Ok(None)` when the node ended the stream.
    fn next_raw_event(&mut self) -> Result<Option<crate::sse::SseEvent>, ApiError> {
        match self.events.next_event() {
            Ok(event) => Ok(event),
            Err(StreamError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                Err(ApiError::TimedOut { url: self.url.clone(), after: self.limit.unwrap_or_default() })
            }
            Err(e) => Err(ApiError::Protocol { url: self.url.clone(), reason: e.to_string() }),
        }
    }

    fn closer(&self) -> StreamCloser {
        StreamCloser { agent: self.agent.clone() }
    }
}

/// An open `GET /v1/groups/{g}/messages` stream (or another stream of the same events, such as
/// the chat feed). While it is open the node is a member of the group; dropping it, or
/// [`StreamCloser::close`] from another thread, closes the connection.
pub struct GroupStream(pub(super) EventStream);

impl fmt::Debug for GroupStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupStream").field("url", &self.0.url).finish_non_exhaustive()
    }
}

impl GroupStream {
    /// The next message, gap or error; `Ok(None)` when the node ended the stream. Blocks until
    /// one arrives (keep-alives and events of unknown names are consumed silently), or until
    /// the stream's time limit.
    pub fn next_event(&mut self) -> Result<Option<GroupEvent>, ApiError> {
        while let Some(event) = self.0.next_raw_event()? {
            if let Some(event) = GroupEvent::from_sse(event) {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }

    /// The next event of any name, as sent; `Ok(None)` when the node ended the stream.
    pub fn next_raw_event(&mut self) -> Result<Option<crate::sse::SseEvent>, ApiError> {
        self.0.next_raw_event()
    }

    /// A handle that closes this stream from another thread.
    pub fn closer(&self) -> StreamCloser {
        self.0.closer()
    }
}

/// Closes a [`GroupStream`] or [`QueueStream`] from another thread: a read blocked on the
/// connection returns an error at once, and so does every later call. A reader thread that
/// would otherwise wait for the next message of a quiet group can so be ended and joined.
#[derive(Clone)]
pub struct StreamCloser {
    agent: ureq::Agent,
}

impl fmt::Debug for StreamCloser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamCloser").finish_non_exhaustive()
    }
}

impl StreamCloser {
    /// Closes the stream's connection.
    pub fn close(&self) {
        self.agent.clone().shutdown();
    }
}

/// An open `GET /v1/queues/{q}/messages` stream; dropping it (or [`QueueStream::closer`])
/// closes the connection and ends the subscription.
pub struct QueueStream(pub(super) EventStream);

impl fmt::Debug for QueueStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueStream").field("url", &self.0.url).finish_non_exhaustive()
    }
}

impl QueueStream {
    /// The next message put; `Ok(None)` when the node ended the stream.
    pub fn next_item(&mut self) -> Result<Option<Document<QueueItem>>, ApiError> {
        while let Some(event) = self.0.next_raw_event()? {
            if event.event == crate::groups::MESSAGE_EVENT {
                return parse_document(&self.0.url, event.data.as_bytes()).map(Some);
            }
        }
        Ok(None)
    }

    /// A handle that closes this stream from another thread.
    pub fn closer(&self) -> StreamCloser {
        self.0.closer()
    }
}
