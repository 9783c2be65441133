//! A run's secrets: decrypted once, at provisioning, from the project's references; handed to
//! the agent-server (LLM key in the create payload, shell secrets in `secrets`, Git credentials
//! for the clone); and a redactor built from every value, through which everything the worker
//! records or logs about the run passes.

use std::sync::Arc;

use cadenza_crypto::{KeyRing, Redactor, StreamRedactor};
use cadenza_domain::{Project, Run, TerminalCode, TerminalReason};
use cadenza_storage::secrets;
use cadenza_storage::{PgPool, StorageError};
use secrecy::SecretString;

/// The decrypted secrets of one run. `Debug` shows names only.
#[derive(Default)]
pub(crate) struct RunSecrets {
    pub(crate) llm_api_key: Option<SecretString>,
    pub(crate) git_credentials: Option<SecretString>,
    /// The project's `agent.secrets`, for the agent's shell.
    pub(crate) shell: Vec<(String, SecretString)>,
    pub(crate) redactor: Arc<Redactor>,
}

impl std::fmt::Debug for RunSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunSecrets")
            .field("llm_api_key", &self.llm_api_key.is_some())
            .field("git_credentials", &self.git_credentials.is_some())
            .field(
                "shell",
                &self.shell.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn unavailable(message: String) -> TerminalReason {
    TerminalReason::new(TerminalCode::SecretUnavailable, message)
}

/// The name the agent-server's session key is redacted as.
pub(crate) const SESSION_KEY_NAME: &str = "AGENT_SESSION_KEY";

/// Decrypts every secret `project` references. The worker-wide LLM key (when the project names
/// none) and the agent-server's session key are redacted too. Fails with `secret_unavailable`
/// naming the secret when one is missing or cannot be decrypted (altered, moved, or its key is
/// not configured).
pub(crate) async fn load(
    pool: &PgPool,
    keyring: &KeyRing,
    run: &Run,
    project: &Project,
    default_llm_api_key: Option<&SecretString>,
    session_key: Option<&SecretString>,
) -> Result<RunSecrets, TerminalReason> {
    let session_key = session_key.map(|key| (SESSION_KEY_NAME.to_owned(), key.clone()));
    let mut names: Vec<String> = Vec::new();
    let mut wanted = |name: &String| {
        if !names.contains(name) {
            names.push(name.clone());
        }
    };
    project
        .agent
        .llm_api_key_secret
        .iter()
        .chain(project.repository.credentials_secret.iter())
        .chain(project.agent.secrets.iter())
        .for_each(&mut wanted);
    if names.is_empty() {
        return Ok(RunSecrets {
            llm_api_key: default_llm_api_key.cloned(),
            redactor: Arc::new(Redactor::new(
                default_llm_api_key
                    .cloned()
                    .map(|key| ("LLM_API_KEY".to_owned(), key))
                    .into_iter()
                    .chain(session_key),
            )),
            ..Default::default()
        });
    }
    let stored = async {
        let mut conn = pool.acquire().await?;
        secrets::resolve(&mut conn, run.org_id, run.project_id, &names).await
    }
    .await
    .map_err(|err: StorageError| {
        TerminalReason::new(
            TerminalCode::Internal,
            format!("worker error: reading the project's secrets: {err}"),
        )
    })?;
    let mut values: Vec<(String, SecretString)> = Vec::with_capacity(names.len());
    for name in &names {
        let Some(secret) = stored.iter().find(|secret| &secret.name == name) else {
            return Err(unavailable(format!(
                "the project refers to secret `{name}`, which is set neither for the project \
                 nor for the org"
            )));
        };
        let value = secrets::open(keyring, secret)
            .map_err(|err| unavailable(format!("secret `{name}` cannot be used: {err}")))?;
        values.push((name.clone(), value));
    }
    let used: Vec<uuid::Uuid> = stored.iter().map(|secret| secret.id).collect();
    let marked = async {
        let mut conn = pool.acquire().await?;
        secrets::mark_used(&mut conn, &used).await
    }
    .await;
    if let Err(err) = marked {
        tracing::warn!(error = %err, "recording secret use failed");
    }
    let value_of = |name: &Option<String>| {
        name.as_ref().and_then(|name| {
            values
                .iter()
                .find(|(candidate, _)| candidate == name)
                .map(|(_, value)| value.clone())
        })
    };
    let llm_api_key =
        value_of(&project.agent.llm_api_key_secret).or_else(|| default_llm_api_key.cloned());
    let git_credentials = value_of(&project.repository.credentials_secret);
    let shell = project
        .agent
        .secrets
        .iter()
        .filter_map(|name| value_of(&Some(name.clone())).map(|value| (name.clone(), value)))
        .collect();
    let mut redacted = values.clone();
    if project.agent.llm_api_key_secret.is_none()
        && let Some(key) = default_llm_api_key
    {
        redacted.push(("LLM_API_KEY".to_owned(), key.clone()));
    }
    redacted.extend(session_key);
    Ok(RunSecrets {
        llm_api_key,
        git_credentials,
        shell,
        redactor: Arc::new(Redactor::new(redacted)),
    })
}

/// Turns a stream of output chunks (container logs) into redacted, complete lines. A secret
/// value split across chunks is still found: the stream redactor holds back only what could be
/// the start of one.
pub(crate) struct LogLines {
    redactor: StreamRedactor,
    /// Bytes of a UTF-8 character cut by the chunk boundary.
    pending_bytes: Vec<u8>,
    /// Redacted text after the last newline.
    partial: String,
}

/// Lines longer than this are emitted in pieces.
const MAX_LINE: usize = 8 * 1024;

impl LogLines {
    pub(crate) fn new(redactor: &Redactor) -> Self {
        Self {
            redactor: redactor.stream(),
            pending_bytes: Vec::new(),
            partial: String::new(),
        }
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.pending_bytes.extend_from_slice(chunk);
        let text = match std::str::from_utf8(&self.pending_bytes) {
            Ok(text) => {
                let text = text.to_owned();
                self.pending_bytes.clear();
                text
            }
            Err(err) if err.error_len().is_none() => {
                // An incomplete character at the end: keep it for the next chunk.
                let valid = err.valid_up_to();
                let text = String::from_utf8_lossy(&self.pending_bytes[..valid]).into_owned();
                self.pending_bytes.drain(..valid);
                text
            }
            Err(_) => {
                let text = String::from_utf8_lossy(&self.pending_bytes).into_owned();
                self.pending_bytes.clear();
                text
            }
        };
        let safe = self.redactor.push(&text);
        self.lines(&safe)
    }

    pub(crate) fn finish(self) -> Vec<String> {
        let LogLines {
            mut redactor,
            pending_bytes,
            mut partial,
        } = self;
        let mut safe = redactor.push(&String::from_utf8_lossy(&pending_bytes));
        safe.push_str(&redactor.finish());
        let mut lines = split_lines(&mut partial, &safe);
        if !partial.is_empty() {
            lines.push(partial);
        }
        lines
    }

    fn lines(&mut self, safe: &str) -> Vec<String> {
        split_lines(&mut self.partial, safe)
    }
}

/// Appends `safe` to `partial` and takes out every complete line (and an over-long partial one).
fn split_lines(partial: &mut String, safe: &str) -> Vec<String> {
    partial.push_str(safe);
    let mut lines = Vec::new();
    while let Some(end) = partial.find('\n') {
        let line: String = partial.drain(..=end).collect();
        lines.push(line.trim_end_matches(['\n', '\r']).to_owned());
    }
    if partial.len() > MAX_LINE {
        lines.push(std::mem::take(partial));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor() -> Redactor {
        Redactor::new([("CANARY".to_owned(), SecretString::from("canary-9f2e4d71b3"))])
    }

    #[test]
    fn a_value_split_across_chunks_is_redacted_in_lines() {
        let redactor = redactor();
        let mut lines = LogLines::new(&redactor);
        let mut out = Vec::new();
        for chunk in [
            "starting\nkey=cana",
            "ry-9f2",
            "e4d71b3 done\nhex: ",
            "63616e617279",
        ] {
            out.extend(lines.push(chunk.as_bytes()));
        }
        out.extend(lines.push(b"2d3966326534643731623"));
        out.extend(lines.push(b"3\n"));
        out.extend(lines.finish());
        assert_eq!(
            out,
            [
                "starting",
                "key=[REDACTED:CANARY] done",
                "hex: [REDACTED:CANARY]"
            ]
        );
    }

    #[test]
    fn a_character_cut_by_a_chunk_boundary_survives() {
        let redactor = redactor();
        let mut lines = LogLines::new(&redactor);
        let text = "naïve café\n".as_bytes();
        let mut out = Vec::new();
        for byte in text {
            out.extend(lines.push(std::slice::from_ref(byte)));
        }
        out.extend(lines.finish());
        assert_eq!(out, ["naïve café"]);
    }

    #[test]
    fn the_unterminated_last_line_is_flushed_at_the_end() {
        let redactor = redactor();
        let mut lines = LogLines::new(&redactor);
        assert!(lines.push(b"no newline canary-9f2e").is_empty());
        assert_eq!(lines.finish(), ["no newline canary-9f2e"]);
    }
}
