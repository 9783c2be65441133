//! Pure decisions about how a run ends: the event to record, whether its workspace stays, and
//! the failure reasons the driver gives.

use std::time::Duration;

use cadenza_agent_client::GitDelta;
use cadenza_domain::{TerminalCode, TerminalReason};

pub(crate) fn fail(code: TerminalCode, message: impl Into<String>) -> TerminalReason {
    TerminalReason::new(code, message)
}

pub(crate) fn internal(err: impl std::fmt::Display) -> TerminalReason {
    fail(TerminalCode::Internal, format!("worker error: {err}"))
}

/// A workspace whose agent finished stays for follow-up turns, if the worker keeps workspaces
/// (a non-zero idle time) and nobody stopped the run; any other end removes it.
pub(crate) fn keep_workspace(succeeded: bool, idle_ttl: Duration, stopped: bool) -> bool {
    succeeded && !idle_ttl.is_zero() && !stopped
}

/// The patch, preceded (when files were left out) by a note naming them and why. `git apply`
/// skips text before the first `diff --git`, so the patch still applies.
pub(crate) fn with_omissions_noted(delta: &GitDelta) -> String {
    if delta.omitted.is_empty() && delta.unread_after.is_none() {
        return delta.patch.clone();
    }
    let mut note = String::from("Cadenza left changes out of this diff:\n");
    for file in &delta.omitted {
        note.push_str(&format!("  {}: {}\n", file.path, file.reason));
    }
    if let Some(read) = delta.unread_after {
        note.push_str(&format!(
            "  the agent-server sent more than {read} bytes; changes after that are not listed\n"
        ));
    }
    note.push('\n');
    note + &delta.patch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_finished_unstopped_run_keeps_its_workspace_and_only_when_workspaces_are_kept() {
        let ttl = Duration::from_secs(900);
        assert!(keep_workspace(true, ttl, false));
        assert!(!keep_workspace(false, ttl, false));
        assert!(!keep_workspace(true, ttl, true));
        assert!(!keep_workspace(true, Duration::ZERO, false));
    }

    #[test]
    fn omitted_files_are_named_before_the_patch() {
        let mut delta = GitDelta {
            patch: "diff --git a/x b/x\n".into(),
            base_commit: None,
            base_ref: None,
            head_commit: None,
            branch: None,
            repo_remote: None,
            repo_root: None,
            omitted: Vec::new(),
            unread_after: None,
        };
        assert_eq!(with_omissions_noted(&delta), delta.patch);
        delta.unread_after = Some(1024);
        let noted = with_omissions_noted(&delta);
        assert!(noted.starts_with("Cadenza left changes out of this diff:\n"));
        assert!(noted.contains("more than 1024 bytes"));
        assert!(noted.ends_with(&delta.patch));
    }
}
