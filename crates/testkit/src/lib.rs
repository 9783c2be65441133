//! Cadenza's test kit: contract-faithful fakes of the systems we cannot reach from tests (the
//! agent-server), per-test infrastructure (databases, bus prefixes), and a harness that starts
//! every service as a real process. Never a dependency of a release binary.

pub mod chaos;
pub mod dns;
pub mod docker;
pub mod fixtures;
/// The scripted fake agent-server (its own crate, so its image builds without the rest).
pub use cadenza_fake_agent_server as fake_agent;
pub mod infra;
pub mod stack;
