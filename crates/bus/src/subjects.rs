//! Subjects relative to the bus prefix. One function per subject so producers and consumers can
//! never disagree on a spelling.

use cadenza_domain::{RunId, WorkerId};

/// A run was stored as `queued` (API → scheduler).
pub const RUN_REQUESTED: &str = "runs.requested";

/// A run was leased to a worker (scheduler → that worker).
pub fn lease_offered(worker: WorkerId) -> String {
    format!("runs.lease.{worker}")
}

/// Live fan-out of one run's journal (worker, API, scheduler → stream readers).
pub fn live_events(run: RunId) -> String {
    format!("events.{run}")
}
