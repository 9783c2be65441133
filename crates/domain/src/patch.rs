//! Reading a run's patch (`git diff` output, as the agent-server's git-delta archive gives it)
//! as the files it changes, so clients can list them and show one file's diff at a time.

/// How a file changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileStatus {
    Added,
    Modified,
    Deleted,
    Renamed,
}

impl FileStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            FileStatus::Added => "added",
            FileStatus::Modified => "modified",
            FileStatus::Deleted => "deleted",
            FileStatus::Renamed => "renamed",
        }
    }
}

/// One file's part of a patch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDiff<'a> {
    /// The path after the change (before it, for a deleted file).
    pub path: String,
    /// The path before a rename.
    pub old_path: Option<String>,
    pub status: FileStatus,
    pub additions: usize,
    pub deletions: usize,
    /// A binary file: no lines to count.
    pub binary: bool,
    /// This file's section of the patch, from its `diff --git` line.
    pub text: &'a str,
}

/// The path a `diff --git a/<old> b/<new>` line names for one side. Paths with spaces are
/// split at the ` b/` that makes both sides equal when the file is not renamed.
fn header_paths(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix("diff --git ")?;
    let rest = rest.strip_prefix("a/")?;
    // Unrenamed files (the common case) have equal halves: find the split that makes them so.
    let candidates: Vec<usize> = rest.match_indices(" b/").map(|(at, _)| at).collect();
    for &at in &candidates {
        let (old, new) = (&rest[..at], &rest[at + 3..]);
        if old == new {
            return Some((old.to_owned(), new.to_owned()));
        }
    }
    let at = *candidates.first()?;
    Some((rest[..at].to_owned(), rest[at + 3..].to_owned()))
}

/// The files a patch changes, in order. Text before the first `diff --git` line (a note of what
/// was left out) is not a file.
pub fn files(patch: &str) -> Vec<FileDiff<'_>> {
    let mut starts: Vec<usize> = Vec::new();
    let mut offset = 0;
    for line in patch.split_inclusive('\n') {
        if line.starts_with("diff --git ") {
            starts.push(offset);
        }
        offset += line.len();
    }
    let mut files = Vec::with_capacity(starts.len());
    for (index, &start) in starts.iter().enumerate() {
        let end = starts.get(index + 1).copied().unwrap_or(patch.len());
        let text = &patch[start..end];
        if let Some(file) = file(text) {
            files.push(file);
        }
    }
    files
}

fn file(text: &str) -> Option<FileDiff<'_>> {
    let mut lines = text.lines();
    let (old, new) = header_paths(lines.next()?)?;
    let mut status = FileStatus::Modified;
    let mut binary = false;
    let mut rename_from = None;
    let mut rename_to = None;
    let (mut additions, mut deletions) = (0, 0);
    let mut in_hunk = false;
    for line in lines {
        if in_hunk {
            if line.starts_with('+') {
                additions += 1;
            } else if line.starts_with('-') {
                deletions += 1;
            }
            continue;
        }
        if line.starts_with("@@") {
            in_hunk = true;
        } else if line.starts_with("new file mode") {
            status = FileStatus::Added;
        } else if line.starts_with("deleted file mode") {
            status = FileStatus::Deleted;
        } else if let Some(from) = line.strip_prefix("rename from ") {
            rename_from = Some(from.to_owned());
        } else if let Some(to) = line.strip_prefix("rename to ") {
            rename_to = Some(to.to_owned());
        } else if line.starts_with("Binary files ") || line == "GIT binary patch" {
            binary = true;
        }
    }
    let (path, old_path) = match (rename_from, rename_to) {
        (Some(from), Some(to)) => {
            status = FileStatus::Renamed;
            (to, Some(from))
        }
        _ if status == FileStatus::Deleted => (old, None),
        _ => (new, None),
    };
    Some(FileDiff {
        path,
        old_path,
        status,
        additions,
        deletions,
        binary,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATCH: &str = r#"Cadenza left changes out of this diff:
  big.bin: larger than 1 MiB

diff --git a/src/main.rs b/src/main.rs
index 1111111..2222222 100644
--- a/src/main.rs
+++ b/src/main.rs
@@ -1,3 +1,4 @@
 fn main() {
-    println!("hi");
+    println!("hello");
+    println!("--- not a header");
 }
diff --git a/NEW file.md b/NEW file.md
new file mode 100644
index 0000000..3333333
--- /dev/null
+++ b/NEW file.md
@@ -0,0 +1,2 @@
+# Title
+
diff --git a/old.txt b/old.txt
deleted file mode 100644
index 4444444..0000000
--- a/old.txt
+++ /dev/null
@@ -1 +0,0 @@
-gone
diff --git a/a.txt b/b.txt
similarity index 90%
rename from a.txt
rename to b.txt
diff --git a/logo.png b/logo.png
new file mode 100644
index 0000000..5555555
Binary files /dev/null and b/logo.png differ
"#;

    #[test]
    fn a_patch_reads_as_the_files_it_changes_with_their_line_counts() {
        let files = files(PATCH);
        type Summary<'a> = (&'a str, Option<&'a str>, &'a str, usize, usize, bool);
        let summary: Vec<Summary<'_>> = files
            .iter()
            .map(|file| {
                (
                    file.path.as_str(),
                    file.old_path.as_deref(),
                    file.status.as_str(),
                    file.additions,
                    file.deletions,
                    file.binary,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("src/main.rs", None, "modified", 2, 1, false),
                ("NEW file.md", None, "added", 2, 0, false),
                ("old.txt", None, "deleted", 0, 1, false),
                ("b.txt", Some("a.txt"), "renamed", 0, 0, false),
                ("logo.png", None, "added", 0, 0, true),
            ]
        );
        assert!(files[0].text.starts_with("diff --git a/src/main.rs"));
        assert!(files[0].text.ends_with(" }\n"));
        let rejoined: String = files.iter().map(|file| file.text).collect();
        assert!(
            PATCH.ends_with(&rejoined),
            "the sections are the whole patch after the note"
        );
    }

    #[test]
    fn an_empty_patch_or_a_note_alone_changes_no_file() {
        assert!(files("").is_empty());
        assert!(files("Cadenza left changes out of this diff:\n  x: y\n").is_empty());
    }
}
