//! Results of the workspace routes: shell commands and the git-delta archive.

use http::HeaderMap;
use serde_json::Value;

use crate::json::{i64_at, string_at};

/// Joined result of `POST /api/bash/execute_bash_command`.
#[derive(Debug, Clone, PartialEq)]
pub struct BashOutput {
    pub command_id: Option<String>,
    /// `-1` when the command timed out or produced no result; `None` when absent.
    pub exit_code: Option<i64>,
    pub stdout: String,
    pub stderr: String,
    pub raw: Value,
}

impl BashOutput {
    pub fn from_value(raw: Value) -> Self {
        Self {
            command_id: string_at(&raw, "command_id"),
            exit_code: i64_at(&raw, "exit_code"),
            stdout: string_at(&raw, "stdout").unwrap_or_default(),
            stderr: string_at(&raw, "stderr").unwrap_or_default(),
            raw,
        }
    }

    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// The workspace's changes as one git patch, from `GET /api/file/archive?format=git-delta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitDelta {
    /// Tracked edits, new untracked files and deletions against `base_commit`.
    pub patch: String,
    pub base_commit: Option<String>,
    pub base_ref: Option<String>,
    pub head_commit: Option<String>,
    pub branch: Option<String>,
    pub repo_remote: Option<String>,
    pub repo_root: Option<String>,
}

impl GitDelta {
    pub(crate) fn from_parts(headers: &HeaderMap, patch: String) -> Self {
        Self {
            patch,
            base_commit: archive_header(headers, "x-archive-base-commit"),
            base_ref: archive_header(headers, "x-archive-base-ref"),
            head_commit: archive_header(headers, "x-archive-head-commit"),
            branch: archive_header(headers, "x-archive-branch"),
            repo_remote: archive_header(headers, "x-archive-repo-remote"),
            repo_root: archive_header(headers, "x-archive-repo-root"),
        }
    }

    /// No change at all: nothing to review or apply.
    pub fn is_empty(&self) -> bool {
        self.patch.trim().is_empty()
    }
}

/// Empty or non-text header values read as absent: a detached HEAD, for one, has no branch.
fn archive_header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use serde_json::json;

    use super::*;

    #[test]
    fn git_delta_reads_archive_headers_case_insensitively_and_drops_empty_ones() {
        let mut headers = HeaderMap::new();
        headers.insert("X-Archive-Base-Commit", HeaderValue::from_static("abc123"));
        headers.insert(
            "x-archive-base-ref",
            HeaderValue::from_static("origin/main"),
        );
        headers.insert(
            "X-ARCHIVE-HEAD-COMMIT",
            HeaderValue::from_static(" def456 "),
        );
        headers.insert("X-Archive-Branch", HeaderValue::from_static(""));
        headers.insert(
            "X-Archive-Repo-Root",
            HeaderValue::from_static("/workspace/project"),
        );
        headers.insert(
            "X-Archive-Repo-Remote",
            HeaderValue::from_bytes(b"\xffnot-text").unwrap(),
        );
        let delta = GitDelta::from_parts(&headers, "diff --git a/x b/x\n".into());
        assert_eq!(delta.base_commit.as_deref(), Some("abc123"));
        assert_eq!(delta.base_ref.as_deref(), Some("origin/main"));
        assert_eq!(delta.head_commit.as_deref(), Some("def456"));
        assert_eq!(delta.branch, None);
        assert_eq!(delta.repo_remote, None);
        assert_eq!(delta.repo_root.as_deref(), Some("/workspace/project"));
        assert!(!delta.is_empty());
        assert!(GitDelta::from_parts(&HeaderMap::new(), "\n".into()).is_empty());
    }

    #[test]
    fn bash_output_reads_exit_code_and_streams() {
        let output = BashOutput::from_value(json!({
            "kind": "BashOutput",
            "id": "b1",
            "timestamp": "2026-11-22T10:00:00",
            "command_id": "c1",
            "order": 0,
            "exit_code": 0,
            "stdout": "hi\n",
            "stderr": null
        }));
        assert!(output.succeeded());
        assert_eq!(output.stdout, "hi\n");
        assert_eq!(output.stderr, "");

        let timed_out = BashOutput::from_value(json!({"exit_code": -1}));
        assert!(!timed_out.succeeded());
        assert_eq!(timed_out.exit_code, Some(-1));
    }
}
