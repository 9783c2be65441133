//! `GET /api/file/archive`: the workspace's changes as a git patch (`format=git-delta`) or a
//! tarball (`format=tar.gz`).
//!
//! The patch is computed with a throw-away index (`GIT_INDEX_FILE`) seeded from the real one, so
//! untracked files can be staged for the diff without touching what the agent or a person staged.

use std::path::{Path, PathBuf};
use std::process::Output;

use tokio::process::Command;

/// Git's empty tree: the base when nothing better is known, so the patch adds every file.
const EMPTY_TREE: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";

/// Directories the real server leaves out of archives unless `use_default_excludes=false`.
const DEFAULT_EXCLUDES: &[&str] = &[
    "node_modules",
    ".venv",
    "venv",
    "__pycache__",
    ".mypy_cache",
    ".pytest_cache",
    ".tox",
];

#[derive(Debug, thiserror::Error)]
pub(crate) enum ArchiveError {
    #[error("path must be absolute: {0}")]
    RelativePath(String),
    #[error("path does not exist: {0}")]
    Missing(String),
    #[error("not a git repository: {0}")]
    NotARepository(String),
    #[error("unknown base_ref: {0}")]
    UnknownBaseRef(String),
    #[error("unsupported archive format: {0}")]
    UnsupportedFormat(String),
    #[error("`{command}` failed: {stderr}")]
    CommandFailed { command: String, stderr: String },
    #[error("could not run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) struct ArchiveRequest {
    pub(crate) path: String,
    pub(crate) format: String,
    pub(crate) base_ref: Option<String>,
    pub(crate) use_default_excludes: bool,
    pub(crate) excludes: Vec<String>,
}

pub(crate) struct GitDelta {
    pub(crate) patch: Vec<u8>,
    pub(crate) repo_root: String,
    pub(crate) base_commit: String,
    pub(crate) base_ref: String,
    pub(crate) head_commit: String,
    pub(crate) branch: String,
    pub(crate) remote: Option<String>,
}

pub(crate) enum Archive {
    GitDelta(GitDelta),
    TarGz { bytes: Vec<u8>, name: String },
}

pub(crate) async fn build(request: &ArchiveRequest) -> Result<Archive, ArchiveError> {
    let path = PathBuf::from(&request.path);
    if !path.is_absolute() {
        return Err(ArchiveError::RelativePath(request.path.clone()));
    }
    if !path.exists() {
        return Err(ArchiveError::Missing(request.path.clone()));
    }
    let excludes = excludes(request);
    match request.format.as_str() {
        "git-delta" => git_delta(&path, request.base_ref.as_deref(), &excludes)
            .await
            .map(Archive::GitDelta),
        "tar.gz" => tar_gz(&path, &excludes).await,
        other => Err(ArchiveError::UnsupportedFormat(other.to_owned())),
    }
}

fn excludes(request: &ArchiveRequest) -> Vec<String> {
    let mut excludes: Vec<String> = if request.use_default_excludes {
        DEFAULT_EXCLUDES
            .iter()
            .map(|&name| name.to_owned())
            .collect()
    } else {
        Vec::new()
    };
    excludes.extend(request.excludes.iter().cloned());
    excludes
}

async fn git_delta(
    path: &Path,
    base_ref: Option<&str>,
    excludes: &[String],
) -> Result<GitDelta, ArchiveError> {
    let repo_root = git_stdout(path, &["rev-parse", "--show-toplevel"], None)
        .await
        .map_err(|_| ArchiveError::NotARepository(path.display().to_string()))?;
    let root = PathBuf::from(&repo_root);

    let head_commit = git_optional(&root, &["rev-parse", "--verify", "--quiet", "HEAD"]).await;
    let branch = git_optional(&root, &["symbolic-ref", "--quiet", "--short", "HEAD"]).await;
    let remote = git_optional(&root, &["remote", "get-url", "origin"]).await;

    let (base_commit, base_ref) =
        resolve_base(&root, base_ref, head_commit.as_deref(), branch.as_deref()).await?;

    let scratch = tempfile::Builder::new()
        .prefix("cadenza-archive-")
        .tempdir()
        .map_err(|source| ArchiveError::Spawn {
            command: "mktemp".into(),
            source,
        })?;
    let index = scratch.path().join("index");
    let real_index = git_stdout(&root, &["rev-parse", "--git-path", "index"], None).await?;
    let real_index = root.join(real_index);
    if real_index.exists() {
        tokio::fs::copy(&real_index, &index)
            .await
            .map_err(|source| ArchiveError::Spawn {
                command: "copy the git index".into(),
                source,
            })?;
    }

    let mut add = vec!["add", "--all", "--", "."];
    let exclude_specs: Vec<String> = excludes
        .iter()
        .flat_map(|pattern| {
            // A name alone matches neither the files below it nor nested copies of it.
            [
                format!(":(exclude,glob){pattern}"),
                format!(":(exclude,glob){pattern}/**"),
                format!(":(exclude,glob)**/{pattern}"),
                format!(":(exclude,glob)**/{pattern}/**"),
            ]
        })
        .collect();
    add.extend(exclude_specs.iter().map(String::as_str));
    git_run(&root, &add, Some(&index)).await?;

    let patch = git_run(
        &root,
        &[
            "diff",
            "--cached",
            "--binary",
            "--full-index",
            "--no-color",
            "--no-ext-diff",
            "--no-renames",
            &base_commit,
        ],
        Some(&index),
    )
    .await?
    .stdout;

    Ok(GitDelta {
        patch,
        repo_root,
        base_commit,
        base_ref,
        head_commit: head_commit.unwrap_or_default(),
        branch: branch.unwrap_or_else(|| "HEAD".into()),
        remote,
    })
}

/// The diff base and the ref it came from: `base_ref` when given; otherwise HEAD when detached,
/// the merge-base with the branch's origin counterpart or origin's default branch, and finally
/// the empty tree.
async fn resolve_base(
    root: &Path,
    base_ref: Option<&str>,
    head: Option<&str>,
    branch: Option<&str>,
) -> Result<(String, String), ArchiveError> {
    if let Some(base_ref) = base_ref.filter(|reference| !reference.is_empty()) {
        let commit = git_optional(
            root,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("{base_ref}^{{commit}}"),
            ],
        )
        .await
        .ok_or_else(|| ArchiveError::UnknownBaseRef(base_ref.to_owned()))?;
        return Ok((commit, base_ref.to_owned()));
    }
    let Some(head) = head else {
        return Ok((EMPTY_TREE.to_owned(), String::new()));
    };
    let Some(branch) = branch else {
        return Ok((head.to_owned(), "HEAD".to_owned()));
    };
    let mut candidates = vec![format!("origin/{branch}")];
    if let Some(default) = git_optional(
        root,
        &[
            "symbolic-ref",
            "--quiet",
            "--short",
            "refs/remotes/origin/HEAD",
        ],
    )
    .await
    {
        candidates.push(default);
    }
    candidates.extend(["origin/main".to_owned(), "origin/master".to_owned()]);
    for candidate in candidates {
        if let Some(merge_base) = git_optional(root, &["merge-base", "HEAD", &candidate]).await {
            return Ok((merge_base, candidate));
        }
    }
    Ok((EMPTY_TREE.to_owned(), String::new()))
}

async fn tar_gz(path: &Path, excludes: &[String]) -> Result<Archive, ArchiveError> {
    let mut command = Command::new("tar");
    command.arg("-czf").arg("-");
    for pattern in excludes {
        command.arg(format!("--exclude={pattern}"));
    }
    command.arg("-C").arg(path).arg(".");
    let output = run(command, "tar").await?;
    let name = path.file_name().map_or_else(
        || "archive".into(),
        |name| name.to_string_lossy().into_owned(),
    );
    Ok(Archive::TarGz {
        bytes: output.stdout,
        name,
    })
}

fn git_command(root: &Path, args: &[&str], index: Option<&Path>) -> Command {
    let mut command = Command::new("git");
    command
        .arg("-C")
        .arg(root)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_OPTIONAL_LOCKS", "0");
    if let Some(index) = index {
        command.env("GIT_INDEX_FILE", index);
    }
    command
}

async fn git_run(root: &Path, args: &[&str], index: Option<&Path>) -> Result<Output, ArchiveError> {
    run(
        git_command(root, args, index),
        &format!("git {}", args.join(" ")),
    )
    .await
}

async fn git_stdout(
    root: &Path,
    args: &[&str],
    index: Option<&Path>,
) -> Result<String, ArchiveError> {
    let output = git_run(root, args, index).await?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A git query whose failure only means "no such thing" (no HEAD yet, no remote, ...).
async fn git_optional(root: &Path, args: &[&str]) -> Option<String> {
    git_stdout(root, args, None)
        .await
        .ok()
        .filter(|value| !value.is_empty())
}

async fn run(mut command: Command, description: &str) -> Result<Output, ArchiveError> {
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|source| ArchiveError::Spawn {
            command: description.to_owned(),
            source,
        })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(ArchiveError::CommandFailed {
            command: description.to_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}
