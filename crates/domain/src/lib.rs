//! Cadenza's domain: identifiers, entities, the run state machine and input rules. No I/O.

pub mod entities;
pub mod ids;
pub mod images;
pub mod journal;
pub mod run;
pub mod validation;

pub use entities::{
    AgentSettings, JournalEvent, OnLostWorkspace, Org, Project, Repository, Run, Worker,
};
pub use ids::{InvitationId, OrgId, ProjectId, RunId, TokenId, UserId, WorkerId};
pub use images::{ImagePolicy, ImageRef, ImageRule};
pub use journal::EventKind;
pub use run::{Fence, RunEvent, RunState, TerminalCode, TerminalReason, apply};
pub mod scope;
pub use scope::Scope;
pub mod access;
pub use access::{Permission, Role};
