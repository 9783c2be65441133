//! The repository a run starts from, as its journal records it.

use cadenza_crypto::Redactor;
use cadenza_domain::{EventKind, TerminalReason};
use url::Url;

use super::control::RunControl;
use super::journal::RunJournal;

/// A repository URL without the `user:password@` of its authority, for the journal: the API
/// refuses such URLs, but a project saved before it did may still have one.
fn without_userinfo(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Journals the `workspace` entry: which repository and commit the run started from (the
/// repository's URL without user information, redacted).
pub(crate) async fn journal_workspace(
    journal: &RunJournal,
    control: &mut RunControl,
    url: &str,
    branch: Option<&str>,
    base_commit: &str,
    redactor: &Redactor,
) -> Result<(), TerminalReason> {
    let mut payload = serde_json::json!({
        "repository": without_userinfo(url),
        "branch": branch,
        "base_commit": base_commit,
    });
    redactor.redact_json(&mut payload);
    journal
        .append(control, journal.entry(EventKind::Workspace, payload))
        .await?;
    tracing::info!(repository = %redactor.redact(url), %base_commit, "repository cloned");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journaled_repository_url_carries_no_user_information() {
        assert_eq!(
            without_userinfo("https://user:ghp_token@git.example.com/acme/repo.git"),
            "https://git.example.com/acme/repo.git"
        );
        assert_eq!(
            without_userinfo("https://deploy@git.example.com/r.git"),
            "https://git.example.com/r.git"
        );
        for kept in [
            "https://git.example.com/r.git",
            "git@git.example.com:acme/r.git",
        ] {
            assert_eq!(without_userinfo(kept), kept);
        }
    }
}
