//! Runs one `bash -c` command with a deadline and a cancellation signal.
//!
//! Every command gets its own process group so that a timeout or an interrupt can kill the whole
//! tree: killing only `bash` would leave a grandchild (`sleep 30` inside a pipeline) holding the
//! output pipe, and the read would wait for it.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Output beyond this is dropped: a runaway command must not take the server's memory with it.
const MAX_CAPTURED_BYTES: usize = 8 * 1024 * 1024;

/// How long to keep reading after the command exits. A background job started with `&` inherits
/// the pipe and may keep it open for ever; its later output is not part of this command's result.
const OUTPUT_DRAIN_GRACE: Duration = Duration::from_secs(2);

pub(crate) struct ShellCommand<'a> {
    pub(crate) command: &'a str,
    pub(crate) cwd: &'a Path,
    pub(crate) env: &'a BTreeMap<String, String>,
    pub(crate) timeout: Duration,
    /// Interleave stderr into stdout, as a terminal shows them.
    pub(crate) merge_stderr: bool,
}

pub(crate) enum ShellOutcome {
    Exited {
        exit_code: i32,
        stdout: String,
        stderr: String,
        pid: Option<u32>,
    },
    TimedOut {
        stdout: String,
        stderr: String,
        pid: Option<u32>,
    },
    Cancelled,
}

pub(crate) async fn run_shell(
    request: ShellCommand<'_>,
    cancel: &CancellationToken,
) -> std::io::Result<ShellOutcome> {
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(request.command)
        .current_dir(request.cwd)
        .envs(request.env)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);

    let merged_reader = if request.merge_stderr {
        let (writer, reader) = tokio::net::unix::pipe::pipe()?;
        let stdout_fd: OwnedFd = writer.into_blocking_fd()?;
        let stderr_fd = stdout_fd.try_clone()?;
        command
            .stdout(Stdio::from(stdout_fd))
            .stderr(Stdio::from(stderr_fd));
        Some(reader)
    } else {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        None
    };

    let mut child = command.spawn()?;
    // The command object still owns the parent's copies of the pipe's write end; they must be
    // closed, or the reader never sees end-of-file.
    drop(command);
    let pid = child.id();

    let stdout = match merged_reader {
        Some(reader) => Collector::start(reader),
        None => Collector::start_optional(child.stdout.take()),
    };
    let stderr = Collector::start_optional(child.stderr.take());

    let finished = tokio::select! {
        status = child.wait() => Some(status?),
        () = tokio::time::sleep(request.timeout) => None,
        () = cancel.cancelled() => {
            kill_group(&mut child, pid).await;
            return Ok(ShellOutcome::Cancelled);
        }
    };

    let Some(status) = finished else {
        kill_group(&mut child, pid).await;
        return Ok(ShellOutcome::TimedOut {
            stdout: stdout.finish().await,
            stderr: stderr.finish().await,
            pid,
        });
    };
    Ok(ShellOutcome::Exited {
        exit_code: exit_code(status),
        stdout: stdout.finish().await,
        stderr: stderr.finish().await,
        pid,
    })
}

fn exit_code(status: ExitStatus) -> i32 {
    // Like a shell reports it: a signal-terminated command exits with 128 + signal number.
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(-1)
}

async fn kill_group(child: &mut Child, pid: Option<u32>) {
    let group = pid
        .and_then(|pid| i32::try_from(pid).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(group) = group {
        // ESRCH only means everything already exited.
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    }
    let _ = child.kill().await;
}

/// Reads a pipe to its end in the background into a bounded buffer.
struct Collector {
    buffer: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl Collector {
    fn start(mut reader: impl AsyncRead + Unpin + Send + 'static) -> Self {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buffer);
        let reader = tokio::spawn(async move {
            let mut chunk = vec![0_u8; 16 * 1024];
            while let Ok(read) = reader.read(&mut chunk).await {
                if read == 0 {
                    break;
                }
                let mut sink = sink.lock().unwrap_or_else(PoisonError::into_inner);
                let room = MAX_CAPTURED_BYTES.saturating_sub(sink.len());
                sink.extend_from_slice(&chunk[..read.min(room)]);
            }
        });
        Self {
            buffer,
            reader: Some(reader),
        }
    }

    fn start_optional(reader: Option<impl AsyncRead + Unpin + Send + 'static>) -> Self {
        match reader {
            Some(reader) => Self::start(reader),
            None => Self {
                buffer: Arc::default(),
                reader: None,
            },
        }
    }

    async fn finish(self) -> String {
        if let Some(reader) = self.reader {
            let _ = tokio::time::timeout(OUTPUT_DRAIN_GRACE, reader).await;
        }
        let bytes = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(
        command: &'a str,
        env: &'a BTreeMap<String, String>,
        timeout: Duration,
    ) -> ShellCommand<'a> {
        ShellCommand {
            command,
            cwd: Path::new("/"),
            env,
            timeout,
            merge_stderr: true,
        }
    }

    #[tokio::test]
    async fn merged_output_keeps_stdout_and_stderr_in_order() {
        let env = BTreeMap::from([("GREETING".to_owned(), "hi".to_owned())]);
        let outcome = run_shell(
            request(
                "echo $GREETING; echo oops >&2; exit 3",
                &env,
                Duration::from_secs(10),
            ),
            &CancellationToken::new(),
        )
        .await
        .expect("bash runs");
        let ShellOutcome::Exited {
            exit_code, stdout, ..
        } = outcome
        else {
            panic!("command should exit");
        };
        assert_eq!(exit_code, 3);
        assert_eq!(stdout, "hi\noops\n");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let env = BTreeMap::new();
        let started = std::time::Instant::now();
        let outcome = run_shell(
            request(
                "echo before; sleep 30 | cat",
                &env,
                Duration::from_millis(300),
            ),
            &CancellationToken::new(),
        )
        .await
        .expect("bash runs");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let ShellOutcome::TimedOut { stdout, .. } = outcome else {
            panic!("command should time out");
        };
        assert_eq!(stdout, "before\n");
    }
}
