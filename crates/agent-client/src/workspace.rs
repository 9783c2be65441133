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
    /// Files whose diff is not in `patch`, and why.
    pub omitted: Vec<OmittedFile>,
    /// Set when the server sent more than the client reads: the bytes read before it stopped.
    /// Files after that point are unknown.
    pub unread_after: Option<u64>,
}

/// How much of a git-delta archive is kept and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiffLimits {
    /// The largest patch kept.
    pub max_bytes: usize,
    /// The largest diff of one file kept; a larger one is left out.
    pub max_file_bytes: usize,
    /// How much of the answer is read at all (the files past it stay unknown).
    pub max_read_bytes: u64,
}

impl Default for DiffLimits {
    fn default() -> Self {
        Self {
            max_bytes: 8 * 1024 * 1024,
            max_file_bytes: 2 * 1024 * 1024,
            max_read_bytes: 256 * 1024 * 1024,
        }
    }
}

/// A file left out of a patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OmittedFile {
    /// The path as the diff header names it (`a/…` side).
    pub path: String,
    pub reason: String,
}

/// The longest line still looked at as a possible `diff --git` header.
const MAX_HEADER_LINE: usize = 16 * 1024;

/// Splits a streamed patch into per-file sections and keeps those within the limits, holding at
/// most one file's diff (and one header line) beyond what it keeps.
pub(crate) struct DiffCollector {
    limits: DiffLimits,
    kept: Vec<u8>,
    section: Vec<u8>,
    path: Option<String>,
    oversized: bool,
    line: Vec<u8>,
    line_is_content: bool,
    omitted: Vec<OmittedFile>,
    unread_after: Option<u64>,
}

impl DiffCollector {
    pub(crate) fn new(limits: DiffLimits) -> Self {
        Self {
            limits,
            kept: Vec::new(),
            section: Vec::new(),
            path: None,
            oversized: false,
            line: Vec::new(),
            line_is_content: false,
            omitted: Vec::new(),
            unread_after: None,
        }
    }

    pub(crate) fn push(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            match chunk.iter().position(|byte| *byte == b'\n') {
                Some(end) => {
                    self.line_part(&chunk[..=end]);
                    self.end_line();
                    chunk = &chunk[end + 1..];
                }
                None => {
                    self.line_part(chunk);
                    break;
                }
            }
        }
    }

    fn line_part(&mut self, part: &[u8]) {
        if self.line_is_content {
            self.content(part);
            return;
        }
        self.line.extend_from_slice(part);
        if self.line.len() > MAX_HEADER_LINE {
            // Too long for a header: it is content, however long it grows.
            let line = std::mem::take(&mut self.line);
            self.content(&line);
            self.line_is_content = true;
        }
    }

    fn end_line(&mut self) {
        if !self.line_is_content {
            let line = std::mem::take(&mut self.line);
            if line.starts_with(b"diff --git ") {
                self.finish_section();
                self.path = Some(header_path(&line));
            }
            self.content(&line);
        }
        self.line_is_content = false;
    }

    fn content(&mut self, bytes: &[u8]) {
        if self.oversized {
            return;
        }
        if self.section.len() + bytes.len() > self.limits.max_file_bytes {
            self.oversized = true;
            self.section = Vec::new();
            return;
        }
        self.section.extend_from_slice(bytes);
    }

    fn finish_section(&mut self) {
        let section = std::mem::take(&mut self.section);
        let path = self.path.take();
        let oversized = std::mem::replace(&mut self.oversized, false);
        let reason = if oversized {
            Some(format!(
                "its diff is larger than the per-file limit of {} bytes",
                self.limits.max_file_bytes
            ))
        } else if self.kept.len() + section.len() > self.limits.max_bytes {
            Some(format!(
                "the patch had reached its limit of {} bytes",
                self.limits.max_bytes
            ))
        } else {
            None
        };
        match (reason, path) {
            (None, _) => self.kept.extend_from_slice(&section),
            (Some(reason), Some(path)) => self.omitted.push(OmittedFile { path, reason }),
            // Text before the first file that does not fit: nothing to name, nothing lost.
            (Some(_), None) => {}
        }
    }

    /// The server sent more than is read: what came so far is kept, the rest is unknown.
    pub(crate) fn stop_reading(&mut self, read: u64) {
        self.unread_after = Some(read);
        // The file being read is cut short: it cannot be kept.
        if self.path.is_some() {
            self.oversized = true;
        }
    }

    pub(crate) fn finish(mut self) -> (Vec<u8>, Vec<OmittedFile>, Option<u64>) {
        if !self.line.is_empty() && !self.line_is_content {
            let line = std::mem::take(&mut self.line);
            self.content(&line);
        }
        if let Some(read) = self.unread_after
            && self.path.is_some()
            && self.oversized
        {
            let path = self.path.take().unwrap_or_default();
            self.section.clear();
            self.oversized = false;
            self.omitted.push(OmittedFile {
                path,
                reason: format!("the archive was not read past {read} bytes"),
            });
        }
        self.finish_section();
        (self.kept, self.omitted, self.unread_after)
    }
}

/// `diff --git a/PATH b/PATH` → `PATH` (the `a/` side; quoted paths stay quoted).
fn header_path(line: &[u8]) -> String {
    let line = String::from_utf8_lossy(line);
    let rest = line.trim_end().trim_start_matches("diff --git ");
    let path = rest
        .strip_prefix("a/")
        .and_then(|rest| rest.split(" b/").next())
        .unwrap_or(rest);
    path.to_owned()
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
            omitted: Vec::new(),
            unread_after: None,
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

#[cfg(test)]
mod collector_tests {
    use super::*;

    fn file(path: &str, body_lines: usize) -> String {
        let mut diff = format!(
            "diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n@@ -0,0 +1,{body_lines} @@\n"
        );
        for i in 0..body_lines {
            diff.push_str(&format!("+line {i}\n"));
        }
        diff
    }

    /// Feeds `patch` in chunks of `size` bytes.
    fn collect(patch: &str, limits: DiffLimits, size: usize) -> (String, Vec<OmittedFile>) {
        let mut collector = DiffCollector::new(limits);
        for chunk in patch.as_bytes().chunks(size) {
            collector.push(chunk);
        }
        let (kept, omitted, _) = collector.finish();
        (String::from_utf8(kept).expect("utf-8"), omitted)
    }

    #[test]
    fn files_over_the_limits_are_left_out_and_named() {
        let small = file("small.txt", 3);
        let big = file("big.txt", 10_000);
        let after = file("after.txt", 3);
        let patch = format!("{small}{big}{after}");
        let limits = DiffLimits {
            max_bytes: 1024,
            max_file_bytes: 512,
            max_read_bytes: u64::MAX,
        };
        for size in [1, 7, 64, 4096, patch.len()] {
            let (kept, omitted) = collect(&patch, limits, size);
            assert_eq!(kept, format!("{small}{after}"), "chunks of {size}");
            assert_eq!(omitted.len(), 1);
            assert_eq!(omitted[0].path, "big.txt");
            assert!(omitted[0].reason.contains("per-file limit of 512"));
        }
        // Under the total limit, later files give way once the patch is full.
        let limits = DiffLimits {
            max_bytes: small.len() + 10,
            max_file_bytes: 1 << 20,
            max_read_bytes: u64::MAX,
        };
        let (kept, omitted) = collect(&format!("{small}{after}"), limits, 13);
        assert_eq!(kept, small);
        assert_eq!(omitted[0].path, "after.txt");
        assert!(omitted[0].reason.contains("reached its limit"));
        // Within the limits, nothing changes.
        let (kept, omitted) = collect(&patch, DiffLimits::default(), 100);
        assert_eq!(kept, patch);
        assert!(omitted.is_empty());
    }

    #[test]
    fn one_endless_line_costs_no_more_than_the_file_limit() {
        let limits = DiffLimits {
            max_bytes: 4096,
            max_file_bytes: 1024,
            max_read_bytes: u64::MAX,
        };
        let mut collector = DiffCollector::new(limits);
        collector.push(file("a.txt", 1).as_bytes());
        collector.push(b"diff --git a/huge b/huge\n+");
        let block = vec![b'x'; 64 * 1024];
        for _ in 0..64 {
            collector.push(&block);
            assert!(
                collector.section.len() <= 1024
                    && collector.line.len() <= MAX_HEADER_LINE + block.len()
            );
        }
        collector.push(b"\n");
        collector.push(file("b.txt", 1).as_bytes());
        let (kept, omitted, _) = collector.finish();
        let kept = String::from_utf8(kept).expect("utf-8");
        assert_eq!(kept, format!("{}{}", file("a.txt", 1), file("b.txt", 1)));
        assert_eq!(omitted[0].path, "huge");
    }
}
