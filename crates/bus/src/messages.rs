//! Versioned message bodies. Every body carries its version as `v`. A consumer that meets a newer
//! `v` than it knows does not try to read it: it hands the message back for redelivery after a
//! pause (`consume::NEWER_VERSION_DELAY`), so a newer consumer (as during a rolling deploy) takes
//! it, rather than misreading it. A body that does not decode at its version is rejected for good.

use cadenza_domain::{OrgId, RunId, WorkerId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::subjects;

pub const VERSION: u32 = 1;

/// A durable message body: its version and the subject it travels on, so a body can never be
/// published on (or enqueued for) another message's subject.
pub trait Message: Serialize + DeserializeOwned {
    /// The newest version of the body this build writes and reads.
    const VERSION: u32;

    /// The subject, relative to the bus prefix.
    fn subject(&self) -> String;
}

impl RunRequested {
    pub fn new(run_id: RunId, org_id: OrgId) -> Self {
        Self {
            v: <Self as Message>::VERSION,
            run_id,
            org_id,
        }
    }
}

impl Message for RunRequested {
    const VERSION: u32 = VERSION;

    fn subject(&self) -> String {
        subjects::RUN_REQUESTED.to_owned()
    }
}

impl LeaseOffered {
    pub fn new(run_id: RunId, org_id: OrgId, worker_id: WorkerId, attempt: i32) -> Self {
        Self {
            v: <Self as Message>::VERSION,
            run_id,
            org_id,
            worker_id,
            attempt,
        }
    }
}

impl Message for LeaseOffered {
    const VERSION: u32 = VERSION;

    /// Each worker consumes only its own offers.
    fn subject(&self) -> String {
        subjects::lease_offered(self.worker_id)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRequested {
    pub v: u32,
    pub run_id: RunId,
    pub org_id: OrgId,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseOffered {
    pub v: u32,
    pub run_id: RunId,
    pub org_id: OrgId,
    pub worker_id: WorkerId,
    pub attempt: i32,
}

/// One journal entry, as published for live readers after it was committed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiveEvent {
    pub v: u32,
    pub run_id: RunId,
    pub org_id: OrgId,
    pub seq: i64,
    pub kind: String,
    pub payload: serde_json::Value,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
}

impl LiveEvent {
    pub fn from_journal(event: &cadenza_domain::JournalEvent) -> Self {
        Self {
            v: VERSION,
            run_id: event.run_id,
            org_id: event.org_id,
            seq: event.seq,
            kind: event.kind.clone(),
            payload: event.payload.clone(),
            occurred_at: event.occurred_at,
        }
    }
}
