//! Versioned message bodies. A consumer that meets a newer `v` than it knows rejects the message
//! (it will be redelivered to a newer consumer) rather than misreading it.

use cadenza_domain::{OrgId, RunId, WorkerId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub const VERSION: u32 = 1;

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
