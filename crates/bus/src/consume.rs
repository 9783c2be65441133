//! The one durable-consumer loop: opens (and re-opens) a durable consumer, decodes each message
//! under the version rule, hands it to the caller's handler and settles it with the handler's
//! `Disposition`. Services never see JetStream's acknowledgement kinds.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use futures::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::messages::Message;
use crate::{Bus, BusError};

/// How long a message with a newer `v` than this build knows waits before it is redelivered
/// (to this consumer, or to a newer one that shares its durable name).
pub const NEWER_VERSION_DELAY: Duration = Duration::from_secs(5);

/// The first pause before re-opening a consumer that failed, doubled up to `REOPEN_MAX`.
const REOPEN_START: Duration = Duration::from_millis(200);
const REOPEN_MAX: Duration = Duration::from_secs(5);

/// What to do with a message once its handler has looked at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Done: the message goes from the stream.
    Ack,
    /// Not now: the message is delivered again after the delay (up to the consumer's delivery
    /// limit).
    Retry(Duration),
    /// Never: the message is terminated and not delivered again.
    Reject,
}

/// The durable consumer to read: its name (shared by every process that consumes as one), the
/// subject filter relative to the bus prefix, and, with `expire_after`, how long the server keeps
/// it once nobody pulls (see `Bus::durable_consumer`).
#[derive(Clone, Copy, Debug)]
pub struct Durable<'a> {
    pub name: &'a str,
    pub filter: &'a str,
    pub expire_after: Option<Duration>,
}

/// Consumes messages of type `T` from a durable consumer until `shutdown`, one at a time, in
/// order. The handler returns what to do with each message; acknowledging after the work is
/// committed is the handler's to arrange (it returns `Ack` only then).
///
/// The version rule: a message whose `v` is newer than `T::VERSION` never reaches the handler;
/// it is redelivered after `NEWER_VERSION_DELAY`, so a newer consumer can take it. A body that is
/// not a versioned JSON object, or does not decode as `T`, is rejected (terminated): no consumer
/// would ever read it.
///
/// When the consumer cannot be opened, or its message stream fails or ends (NATS restarted, the
/// stream or the consumer was deleted), it is opened again, after a pause that grows from 200 ms
/// to 5 s and starts over once a message arrives. Opening creates the stream again when it is
/// gone.
pub async fn consume<T, H, F>(
    bus: &Bus,
    durable: Durable<'_>,
    shutdown: &CancellationToken,
    mut handler: H,
) where
    T: Message,
    H: FnMut(T) -> F,
    F: Future<Output = Disposition>,
{
    let mut pause = REOPEN_START;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match open(bus, &durable).await {
            Ok(mut messages) => loop {
                let message = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = messages.next() => match next {
                        Some(Ok(message)) => message,
                        Some(Err(err)) => {
                            tracing::warn!(consumer = durable.name, error = %err, "message stream failed; reopening");
                            break;
                        }
                        None => {
                            tracing::warn!(consumer = durable.name, "message stream ended; reopening");
                            break;
                        }
                    },
                };
                pause = REOPEN_START;
                let disposition = match decode::<T>(&message.subject, &message.payload) {
                    Decoded::Current(body) => handler(body).await,
                    Decoded::Newer(v) => {
                        tracing::info!(
                            consumer = durable.name,
                            subject = message.subject.as_str(),
                            v,
                            known = T::VERSION,
                            "a newer message version; leaving it for a newer consumer"
                        );
                        Disposition::Retry(NEWER_VERSION_DELAY)
                    }
                    Decoded::Undecodable(err) => {
                        tracing::error!(consumer = durable.name, error = %err, "undecodable message; rejecting it");
                        Disposition::Reject
                    }
                };
                settle(&message, disposition).await;
            },
            Err(err) => {
                tracing::warn!(consumer = durable.name, error = %err, "consumer unavailable; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(REOPEN_MAX);
    }
}

async fn open(
    bus: &Bus,
    durable: &Durable<'_>,
) -> Result<async_nats::jetstream::consumer::pull::Stream, BusError> {
    let consumer = bus
        .durable_consumer(durable.name, durable.filter, durable.expire_after)
        .await?;
    consumer
        .messages()
        .await
        .map_err(|err| BusError::Subscribe {
            subject: bus.subject(durable.filter),
            detail: err.to_string(),
        })
}

async fn settle(message: &async_nats::jetstream::Message, disposition: Disposition) {
    let settled = match disposition {
        Disposition::Ack => message.ack().await,
        Disposition::Retry(delay) => message.ack_with(AckKind::Nak(Some(delay))).await,
        Disposition::Reject => message.ack_with(AckKind::Term).await,
    };
    if let Err(err) = settled {
        // The message comes back after the ack wait; handlers are idempotent.
        tracing::debug!(subject = message.subject.as_str(), ?disposition, error = %err, "settling a message failed; it will be redelivered");
    }
}

/// A message body read under the version rule.
#[derive(Debug)]
enum Decoded<T> {
    Current(T),
    /// Written by a newer build, at this version.
    Newer(u32),
    Undecodable(BusError),
}

fn decode<T: Message>(subject: &str, body: &[u8]) -> Decoded<T> {
    #[derive(Deserialize)]
    struct Versioned {
        v: u32,
    }
    match crate::decode::<Versioned>(subject, body) {
        Ok(Versioned { v }) if v > T::VERSION => Decoded::Newer(v),
        Ok(_) => match crate::decode::<T>(subject, body) {
            Ok(body) => Decoded::Current(body),
            Err(err) => Decoded::Undecodable(err),
        },
        Err(err) => Decoded::Undecodable(err),
    }
}

#[cfg(test)]
mod tests {
    use cadenza_domain::{OrgId, RunId};

    use super::{Decoded, decode};
    use crate::messages::{Message, RunRequested};

    #[test]
    fn a_body_is_read_only_at_a_version_this_build_knows() {
        let request = RunRequested::new(RunId::new(), OrgId::new());
        let body = serde_json::to_vec(&request).expect("encode");
        assert!(
            matches!(decode::<RunRequested>("s", &body), Decoded::Current(read) if read == request)
        );
        let newer = serde_json::json!({"v": RunRequested::VERSION + 1, "something": "else"});
        assert!(matches!(
            decode::<RunRequested>("s", newer.to_string().as_bytes()),
            Decoded::Newer(v) if v == RunRequested::VERSION + 1
        ));
        for garbage in [
            &b"not json"[..],
            br#"{"run_id": "x"}"#,
            br#"{"v": 1, "run_id": "not a uuid"}"#,
        ] {
            assert!(
                matches!(
                    decode::<RunRequested>("s", garbage),
                    Decoded::Undecodable(_)
                ),
                "{}",
                String::from_utf8_lossy(garbage)
            );
        }
    }
}
