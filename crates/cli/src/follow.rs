//! Follows a run's journal over the SSE stream (`GET /runs/{id}/events/stream`), resuming a
//! dropped connection with `Last-Event-ID` = the last seq shown, so each entry is shown once
//! and none is lost. Reconnects back off exponentially and are bounded in number.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::client::{Client, segment};
use crate::error::CliError;

/// One Server-Sent Event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// An incremental SSE parser: bytes go in as they arrive (split anywhere, even inside a UTF-8
/// character), complete events come out. Lines end with `\n` or `\r\n`; comments (`:`) are
/// skipped; an event is complete at a blank line.
#[derive(Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.buffer[start..].iter().position(|&byte| byte == b'\n') {
            let end = start + offset;
            let mut line = &self.buffer[start..end];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        self.buffer.drain(..start);
        events
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.current);
            // An event without data is not dispatched (the SSE rules).
            return std::mem::take(&mut self.has_data).then_some(event);
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => self.current.id = Some(value.to_owned()),
            "event" => self.current.event = Some(value.to_owned()),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
        None
    }
}

/// Which journal entries have been shown: the resume point and the guard against repeats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    last_seq: i64,
}

impl Resume {
    pub fn after(last_seq: i64) -> Self {
        Resume { last_seq }
    }

    /// Whether an entry is new (and so to be shown); a new one moves the resume point.
    pub fn accept(&mut self, seq: i64) -> bool {
        if seq > self.last_seq {
            self.last_seq = seq;
            true
        } else {
            false
        }
    }

    /// The `Last-Event-ID` to reconnect with (0: from the start).
    pub fn last_event_id(&self) -> i64 {
        self.last_seq
    }
}

/// Bounded exponential backoff: `initial`, doubling up to `max`, for at most `max_attempts`
/// attempts in a row without progress.
#[derive(Clone, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub max_attempts: u32,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, max_attempts: u32) -> Self {
        Backoff {
            initial,
            max,
            max_attempts,
            attempt: 0,
        }
    }

    /// The wait before the next attempt, `None` once the attempts are used up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.attempt >= self.max_attempts {
            return None;
        }
        let factor = 2u32.saturating_pow(self.attempt.min(20));
        self.attempt += 1;
        Some(self.initial.saturating_mul(factor).min(self.max))
    }

    /// The attempt in progress, counting from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// After progress (an entry arrived), the next drop starts over with a short wait.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(250), Duration::from_secs(8), 10)
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
}

impl Outcome {
    pub fn from_state(state: &str) -> Option<Self> {
        match state {
            "succeeded" => Some(Outcome::Succeeded),
            "failed" => Some(Outcome::Failed),
            "cancelled" => Some(Outcome::Cancelled),
            _ => None,
        }
    }

    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Succeeded => crate::error::exit::SUCCESS,
            Outcome::Failed => crate::error::exit::RUN_FAILED,
            Outcome::Cancelled => crate::error::exit::RUN_CANCELLED,
        }
    }
}

/// The outcome a journal entry announces, when it is the run's terminal `run_state`.
pub fn terminal_outcome(entry: &Value) -> Option<Outcome> {
    if entry["kind"] != "run_state" || entry["payload"]["terminal"] != Value::Bool(true) {
        return None;
    }
    entry["payload"]["to"]
        .as_str()
        .and_then(Outcome::from_state)
}

/// Where followed entries go.
pub trait Timeline {
    /// A journal entry, each exactly once, in order.
    fn entry(&mut self, entry: &Value);
    /// The stream dropped; the next attempt comes after `delay`.
    fn reconnecting(&mut self, attempt: u32, max_attempts: u32, delay: Duration, why: &str);
}

/// Settings of [`follow`]; the defaults suit a person at a terminal and CI alike.
#[derive(Clone, Debug)]
pub struct FollowSettings {
    pub backoff: Backoff,
    /// A stream that sends nothing, not even its keep-alive comment (every 15 s), for this long
    /// is taken for dead.
    pub idle_timeout: Duration,
    /// All connections together, whatever the progress: a bound on a stream that keeps dropping.
    pub max_connections: u32,
}

impl Default for FollowSettings {
    fn default() -> Self {
        FollowSettings {
            backoff: Backoff::default(),
            idle_timeout: Duration::from_secs(45),
            max_connections: 1000,
        }
    }
}

/// Why one connection ended.
enum Ended {
    Terminal(Outcome),
    /// Closed by the server without the terminal entry (it should not, but a proxy may).
    Closed,
    Dropped(String),
}

/// Follows `run_id`'s journal after `resume` until its terminal entry, reconnecting as needed.
pub async fn follow(
    client: &Client,
    run_id: &str,
    mut resume: Resume,
    settings: FollowSettings,
    timeline: &mut dyn Timeline,
) -> Result<Outcome, CliError> {
    let mut backoff = settings.backoff.clone();
    for _ in 0..settings.max_connections {
        let why = match client.open_stream(run_id, resume.last_event_id()).await {
            Ok(response) => {
                let before = resume;
                let opened = tokio::time::Instant::now();
                let ended = read_stream(
                    response,
                    client.server(),
                    run_id,
                    &mut resume,
                    &settings,
                    timeline,
                )
                .await?;
                // Progress, or a connection that held for a while (a quiet run behind a server
                // whose keep-alive is slower than ours), starts the attempts over.
                if resume != before || opened.elapsed() >= settings.idle_timeout {
                    backoff.reset();
                }
                match ended {
                    Ended::Terminal(outcome) => return Ok(outcome),
                    Ended::Closed => {
                        // A run that ended before everything was shown gets its entries on the
                        // next connection; one that ended with nothing left to show is done.
                        if let Some(outcome) = ended_with_nothing_left(client, run_id, resume).await
                        {
                            return Ok(outcome);
                        }
                        "the server closed the stream".to_owned()
                    }
                    Ended::Dropped(why) => why,
                }
            }
            Err(err) if retryable(&err) => err.to_string(),
            Err(err) => return Err(err),
        };
        let Some(delay) = backoff.next_delay() else {
            return Err(CliError::Network {
                server: client.server().to_owned(),
                message: format!(
                    "the event stream of run {run_id} could not be resumed after {} attempts \
                     ({why}); `cadenza runs logs {run_id} --follow` picks it up again",
                    backoff.max_attempts
                ),
            });
        };
        timeline.reconnecting(backoff.attempt(), backoff.max_attempts, delay, &why);
        tokio::time::sleep(delay).await;
    }
    Err(CliError::Network {
        server: client.server().to_owned(),
        message: format!(
            "the event stream of run {run_id} dropped {} times; giving up",
            settings.max_connections
        ),
    })
}

/// Errors worth another connection: the network, a server that is busy or restarting.
fn retryable(err: &CliError) -> bool {
    match err {
        CliError::Network { .. } => true,
        CliError::Api { problem } => problem.status == 429 || problem.status >= 500,
        _ => false,
    }
}

async fn ended_with_nothing_left(client: &Client, run_id: &str, resume: Resume) -> Option<Outcome> {
    let run = client
        .get(&format!("/runs/{}", segment(run_id)))
        .await
        .ok()?;
    let outcome = run["state"].as_str().and_then(Outcome::from_state)?;
    let last = run["last_event_seq"].as_i64()?;
    (resume.last_event_id() >= last).then_some(outcome)
}

async fn read_stream(
    response: reqwest::Response,
    server: &str,
    run_id: &str,
    resume: &mut Resume,
    settings: &FollowSettings,
    timeline: &mut dyn Timeline,
) -> Result<Ended, CliError> {
    let mut parser = SseParser::default();
    let mut body = response.bytes_stream();
    loop {
        let chunk = match tokio::time::timeout(settings.idle_timeout, body.next()).await {
            Err(_) => {
                return Ok(Ended::Dropped(format!(
                    "nothing arrived for {} s",
                    settings.idle_timeout.as_secs()
                )));
            }
            Ok(None) => return Ok(Ended::Closed),
            Ok(Some(Err(err))) => {
                return Ok(Ended::Dropped(format!("the connection broke ({err})")));
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        for event in parser.feed(&chunk) {
            if event.event.as_deref() == Some("stream_closed") {
                let closed: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                let detail = closed["detail"]
                    .as_str()
                    .or(closed["reason"].as_str())
                    .unwrap_or("no reason given")
                    .to_owned();
                if closed["retryable"] == Value::Bool(true) {
                    return Ok(Ended::Dropped(detail));
                }
                return Err(CliError::StreamClosed {
                    run_id: run_id.to_owned(),
                    detail,
                });
            }
            // Only journal entries carry an `id:`.
            if event.id.is_none() {
                continue;
            }
            let entry: Value =
                serde_json::from_str(&event.data).map_err(|err| CliError::Protocol {
                    server: server.to_owned(),
                    detail: format!("a stream event is not JSON: {err}"),
                })?;
            let Some(seq) = entry["seq"].as_i64() else {
                continue;
            };
            if !resume.accept(seq) {
                continue;
            }
            timeline.entry(&entry);
            if let Some(outcome) = terminal_outcome(&entry) {
                return Ok(Ended::Terminal(outcome));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = ": keep-alive\n\nid: 1\nevent: run_state\ndata: {\"seq\":1}\n\n\
                          id: 2\r\nevent: message\r\ndata: {\"seq\":2,\r\ndata: \"t\":\"é\"}\r\n\r\n\
                          event: stream_closed\ndata: {\"retryable\":true}\n\n";

    fn expected() -> Vec<SseEvent> {
        vec![
            SseEvent {
                id: Some("1".into()),
                event: Some("run_state".into()),
                data: "{\"seq\":1}".into(),
            },
            SseEvent {
                id: Some("2".into()),
                event: Some("message".into()),
                data: "{\"seq\":2,\n\"t\":\"é\"}".into(),
            },
            SseEvent {
                id: None,
                event: Some("stream_closed".into()),
                data: "{\"retryable\":true}".into(),
            },
        ]
    }

    #[test]
    fn sse_events_parse_whole() {
        let mut parser = SseParser::default();
        assert_eq!(parser.feed(STREAM.as_bytes()), expected());
    }

    #[test]
    fn sse_events_parse_the_same_split_at_every_byte() {
        let bytes = STREAM.as_bytes();
        for split in 0..=bytes.len() {
            let mut parser = SseParser::default();
            let mut events = parser.feed(&bytes[..split]);
            events.extend(parser.feed(&bytes[split..]));
            assert_eq!(events, expected(), "split at {split}");
        }
        // And one byte at a time (a UTF-8 character arrives in pieces).
        let mut parser = SseParser::default();
        let events: Vec<SseEvent> = bytes
            .iter()
            .flat_map(|byte| parser.feed(std::slice::from_ref(byte)))
            .collect();
        assert_eq!(events, expected());
    }

    #[test]
    fn an_unfinished_event_waits_for_its_blank_line() {
        let mut parser = SseParser::default();
        assert!(parser.feed(b"id: 3\ndata: {}\n").is_empty());
        assert_eq!(parser.feed(b"\n").len(), 1);
        // A field block without data is not an event.
        assert!(parser.feed(b"id: 4\n\n").is_empty());
    }

    #[test]
    fn a_resume_shows_each_seq_once_and_reconnects_after_the_last_shown() {
        let mut resume = Resume::default();
        assert_eq!(resume.last_event_id(), 0);
        assert!(resume.accept(1));
        assert!(resume.accept(2));
        assert!(resume.accept(3));
        assert_eq!(resume.last_event_id(), 3);
        // A reconnect whose history overlaps what was shown repeats nothing.
        assert!(!resume.accept(2));
        assert!(!resume.accept(3));
        assert!(resume.accept(4));
        assert_eq!(resume.last_event_id(), 4);
        assert_eq!(Resume::after(7).last_event_id(), 7);
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap_and_ends_after_its_attempts() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500), 5);
        let delays: Vec<_> = std::iter::from_fn(|| backoff.next_delay()).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 500, 500]
                .map(Duration::from_millis)
                .to_vec()
        );
        assert_eq!(backoff.next_delay(), None);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Some(Duration::from_millis(100)));
        assert_eq!(backoff.attempt(), 1);
    }

    #[test]
    fn only_a_terminal_run_state_ends_the_follow() {
        let entry = |kind: &str, to: &str, terminal: bool| serde_json::json!({"kind": kind, "payload": {"to": to, "terminal": terminal}});
        assert_eq!(
            terminal_outcome(&entry("run_state", "succeeded", true)),
            Some(Outcome::Succeeded)
        );
        assert_eq!(
            terminal_outcome(&entry("run_state", "failed", true)),
            Some(Outcome::Failed)
        );
        assert_eq!(
            terminal_outcome(&entry("run_state", "cancelled", true)),
            Some(Outcome::Cancelled)
        );
        assert_eq!(
            terminal_outcome(&entry("run_state", "running", false)),
            None
        );
        assert_eq!(terminal_outcome(&entry("message", "succeeded", true)), None);
        assert_eq!(Outcome::Succeeded.exit_code(), 0);
        assert_eq!(Outcome::Failed.exit_code(), 1);
        assert_eq!(Outcome::Cancelled.exit_code(), 2);
    }
}
