//! Cadenza's domain: identifiers, entities, the run state machine and input rules. No I/O.

pub mod entities;
pub mod error_kind;
pub mod ids;
pub mod images;
pub mod journal;
pub mod lifecycle;
pub mod patch;
pub mod run;
pub mod validation;
pub mod workspace;

pub use entities::{
    AgentSettings, JournalEvent, OnLostWorkspace, Org, OrgEvent, Project, Repository, Run, Worker,
};
pub use error_kind::ErrorKind;
pub use ids::{InvitationId, OrgId, ProjectId, RunId, TokenId, UserId, WorkerId};
pub use images::{ImagePolicy, ImageRef, ImageRule};
pub use journal::EventKind;
pub use lifecycle::{
    CancelDisposition, LeaseExpiry, end_event, lease_expired_event, lost_workspace_event,
};
pub use run::{
    AttemptEffect, Fence, LeaseEffect, Milestone, RunEvent, RunState, TerminalCode, TerminalReason,
    Transition, apply, transition,
};
pub mod scope;
pub use scope::Scope;
pub use workspace::{WorkspaceEvent, WorkspaceState};
pub mod access;
pub use access::{Permission, Role};
