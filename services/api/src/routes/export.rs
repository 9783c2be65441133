//! `GET /runs/{id}/export`: a run as one archive a person can keep or hand on: its metadata,
//! its whole journal as JSON lines (with the agent's original events), and its patch.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use cadenza_domain::Scope;
use cadenza_storage::{diffs, journal};
use serde_json::json;

use crate::auth::{Authorized, perm};
use crate::error::{ApiError, ApiResult};
use crate::routes::runs::load_run;
use crate::routes::wire::{EventView, RunView};
use crate::state::AppState;

/// Journal entries read per query while exporting.
const BATCH: i64 = 1000;
/// The most an export holds before compression; a larger run is read through the events API.
const MAX_EXPORT_BYTES: usize = 256 * 1024 * 1024;

/// Adds one file to the archive.
fn add(archive: &mut tar::Builder<Vec<u8>>, name: &str, body: &[u8]) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs()),
    );
    header.set_cksum();
    archive.append_data(&mut header, name, body)
}

pub async fn export(
    State(state): State<AppState>,
    auth: Authorized<perm::RunsRead>,
    Path(run_id): Path<String>,
) -> ApiResult<Response> {
    let run = load_run(&state, &auth, &run_id).await?;
    let scope = Scope::Org(run.org_id);
    let mut conn = state.pool.acquire().await?;
    let mut lines = String::new();
    let mut entries = 0usize;
    let mut after = 0;
    loop {
        let batch = journal::list_after(&mut conn, &scope, run.id, after, BATCH).await?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        for event in batch {
            let line = serde_json::to_string(&EventView::from_journal(event, true))
                .map_err(|err| ApiError::Internal(Box::new(err)))?;
            lines.push_str(&line);
            lines.push('\n');
            entries += 1;
        }
        if lines.len() > MAX_EXPORT_BYTES {
            return Err(ApiError::PayloadTooLarge(format!(
                "run {} has more journal than an export holds ({} MiB); read it with GET /runs/{}/events",
                run.id,
                MAX_EXPORT_BYTES / (1024 * 1024),
                run.id
            )));
        }
    }
    let diff = diffs::get(&mut conn, &scope, run.id).await?;
    drop(conn);
    let id = run.id;
    let manifest = json!({
        "format": "cadenza-run-export",
        "version": 1,
        "run_id": id.to_string(),
        "exported_at": time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        "journal_entries": entries,
        "has_patch": diff.is_some(),
        "base_commit": diff.as_ref().and_then(|diff| diff.base_commit.clone()),
        "files": ["manifest.json", "run.json", "journal.jsonl", "patch.diff"],
    });
    let run_json = serde_json::to_vec_pretty(&RunView::from(run))
        .map_err(|err| ApiError::Internal(Box::new(err)))?;
    // Building and compressing the archive is CPU work: off the request threads.
    let archive = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        let mut archive = tar::Builder::new(Vec::new());
        let manifest = serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other)?;
        add(&mut archive, "manifest.json", &manifest)?;
        add(&mut archive, "run.json", &run_json)?;
        add(&mut archive, "journal.jsonl", lines.as_bytes())?;
        if let Some(diff) = &diff {
            add(&mut archive, "patch.diff", diff.patch.as_bytes())?;
        }
        let tar = archive.into_inner()?;
        let mut gzip = flate2::write::GzEncoder::new(
            Vec::with_capacity(tar.len() / 4),
            flate2::Compression::default(),
        );
        std::io::Write::write_all(&mut gzip, &tar)?;
        gzip.finish()
    })
    .await
    .map_err(|err| ApiError::Internal(Box::new(err)))?
    .map_err(|err| ApiError::Internal(Box::new(err)))?;
    let mut response = archive.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"run-{id}.tar.gz\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}
