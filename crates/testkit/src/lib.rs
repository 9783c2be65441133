//! Cadenza's test kit: contract-faithful fakes of the systems we cannot reach from tests (the
//! agent-server), per-test infrastructure (databases, bus prefixes), and a harness that starts
//! every service as a real process. Never a dependency of a release binary.

pub mod docker;
pub mod fake_agent;
pub mod infra;
pub mod stack;
