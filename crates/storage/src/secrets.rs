//! Secrets: sealed values (envelope encryption, `cadenza-crypto`) per org, with per-project
//! overrides. Plaintext never reaches a row: values are sealed here, before the insert, under an
//! associated data that binds them to their org, project (or none), row id, name and version;
//! only the sealed bytes, their format and the id of the wrapping key are stored.
//!
//! Reading a value back is only possible through [`open`], which the worker calls at
//! provisioning. Everything else returns [`SecretMeta`].

use cadenza_crypto::{Aad, KeyRing, SealedSecret};
use cadenza_domain::{OrgId, ProjectId};
use secrecy::SecretString;
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{StorageError, StorageResult};

/// Where a secret lives: org-wide, or one project's override.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretScope {
    Org(OrgId),
    Project(OrgId, ProjectId),
}

impl SecretScope {
    pub fn org(self) -> OrgId {
        match self {
            SecretScope::Org(org) | SecretScope::Project(org, _) => org,
        }
    }

    pub fn project(self) -> Option<ProjectId> {
        match self {
            SecretScope::Org(_) => None,
            SecretScope::Project(_, project) => Some(project),
        }
    }

    fn project_uuid(self) -> Option<Uuid> {
        self.project().map(|project| project.as_uuid())
    }
}

/// Everything about a secret except its value.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretMeta {
    pub id: Uuid,
    pub org_id: OrgId,
    pub project_id: Option<ProjectId>,
    pub name: String,
    pub version: i32,
    pub kek_id: String,
    pub created_at: OffsetDateTime,
    pub created_by: Option<String>,
    pub updated_at: OffsetDateTime,
    pub updated_by: Option<String>,
    pub last_used_at: Option<OffsetDateTime>,
}

struct MetaRow {
    id: Uuid,
    org_id: Uuid,
    project_id: Option<Uuid>,
    name: String,
    version: i32,
    kek_id: String,
    created_at: OffsetDateTime,
    created_by: Option<String>,
    updated_at: OffsetDateTime,
    updated_by: Option<String>,
    last_used_at: Option<OffsetDateTime>,
}

impl From<MetaRow> for SecretMeta {
    fn from(row: MetaRow) -> Self {
        SecretMeta {
            id: row.id,
            org_id: row.org_id.into(),
            project_id: row.project_id.map(Into::into),
            name: row.name,
            version: row.version,
            kek_id: row.kek_id,
            created_at: row.created_at,
            created_by: row.created_by,
            updated_at: row.updated_at,
            updated_by: row.updated_by,
            last_used_at: row.last_used_at,
        }
    }
}

/// Whether a name is acceptable: an environment-variable name (`[A-Z_][A-Z0-9_]*`, at most
/// 64 characters), because shell secrets reach the agent as environment variables.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 64
}

/// Writes a secret: creates it at version 1, or seals the value as the next version of the
/// existing one (the previous ciphertext is overwritten). Returns the metadata and whether it
/// was created. Concurrent writers of the same name serialize on the row.
pub async fn put(
    conn: &mut PgConnection,
    keyring: &KeyRing,
    scope: SecretScope,
    name: &str,
    value: &SecretString,
    actor: &str,
) -> StorageResult<(SecretMeta, bool)> {
    if !valid_name(name) {
        return Err(StorageError::Conflict(format!(
            "invalid secret name `{name}`"
        )));
    }
    let org = scope.org().as_uuid();
    let project = scope.project_uuid();
    // Two creators of the same new name: the loser's insert hits the unique index, and its
    // second pass finds the winner's row and writes the next version.
    for _ in 0..3 {
        let existing = sqlx::query!(
            r#"select id, version from secrets
               where org_id = $1 and project_id is not distinct from $2 and name = $3
               for update"#,
            org,
            project,
            name
        )
        .fetch_optional(&mut *conn)
        .await?;
        match existing {
            Some(row) => {
                let version = row.version + 1;
                let sealed = seal(keyring, scope, row.id, name, version, value)?;
                let updated = sqlx::query_as!(
                    MetaRow,
                    r#"update secrets
                       set version = $2, kek_id = $3, sealed = $4, format = $5, updated_at = now(),
                           updated_by = $6
                       where id = $1
                       returning id, org_id, project_id, name, version, kek_id, created_at,
                                 created_by, updated_at, updated_by, last_used_at"#,
                    row.id,
                    version,
                    sealed.kek_id(),
                    sealed.to_bytes(),
                    i16::from(sealed.format()),
                    actor
                )
                .fetch_one(&mut *conn)
                .await?;
                return Ok((updated.into(), false));
            }
            None => {
                let id = Uuid::now_v7();
                let sealed = seal(keyring, scope, id, name, 1, value)?;
                let inserted = sqlx::query_as!(
                    MetaRow,
                    r#"insert into secrets (id, org_id, project_id, name, version, kek_id, sealed,
                                            format, created_by, updated_by)
                       values ($1, $2, $3, $4, 1, $5, $6, $7, $8, $8)
                       on conflict do nothing
                       returning id, org_id, project_id, name, version, kek_id, created_at,
                                 created_by, updated_at, updated_by, last_used_at"#,
                    id,
                    org,
                    project,
                    name,
                    sealed.kek_id(),
                    sealed.to_bytes(),
                    i16::from(sealed.format()),
                    actor
                )
                .fetch_optional(&mut *conn)
                .await?;
                if let Some(inserted) = inserted {
                    return Ok((inserted.into(), true));
                }
            }
        }
    }
    Err(StorageError::Conflict(format!(
        "secret `{name}` is being written concurrently; retry"
    )))
}

/// The binding of a secret's ciphertext: everything that says which secret it is.
fn aad(org: Uuid, project: Option<Uuid>, id: Uuid, name: &str, version: i32) -> Aad {
    Aad::new(org, project, id, name, version)
}

fn seal(
    keyring: &KeyRing,
    scope: SecretScope,
    id: Uuid,
    name: &str,
    version: i32,
    value: &SecretString,
) -> StorageResult<SealedSecret> {
    let aad = aad(
        scope.org().as_uuid(),
        scope.project_uuid(),
        id,
        name,
        version,
    );
    cadenza_crypto::seal(keyring, &aad, value).map_err(StorageError::Crypto)
}

pub async fn get(
    conn: &mut PgConnection,
    scope: SecretScope,
    name: &str,
) -> StorageResult<SecretMeta> {
    let row = sqlx::query_as!(
        MetaRow,
        r#"select id, org_id, project_id, name, version, kek_id, created_at, created_by,
                  updated_at, updated_by, last_used_at
           from secrets
           where org_id = $1 and project_id is not distinct from $2 and name = $3"#,
        scope.org().as_uuid(),
        scope.project_uuid(),
        name
    )
    .fetch_optional(conn)
    .await?
    .ok_or(StorageError::NotFound("secret"))?;
    Ok(row.into())
}

/// The secrets of one scope, by name. An org scope lists only org-wide secrets.
pub async fn list(conn: &mut PgConnection, scope: SecretScope) -> StorageResult<Vec<SecretMeta>> {
    let rows = sqlx::query_as!(
        MetaRow,
        r#"select id, org_id, project_id, name, version, kek_id, created_at, created_by,
                  updated_at, updated_by, last_used_at
           from secrets
           where org_id = $1 and project_id is not distinct from $2
           order by name"#,
        scope.org().as_uuid(),
        scope.project_uuid()
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

pub async fn delete(
    conn: &mut PgConnection,
    scope: SecretScope,
    name: &str,
) -> StorageResult<SecretMeta> {
    let row = sqlx::query_as!(
        MetaRow,
        r#"delete from secrets
           where org_id = $1 and project_id is not distinct from $2 and name = $3
           returning id, org_id, project_id, name, version, kek_id, created_at, created_by,
                     updated_at, updated_by, last_used_at"#,
        scope.org().as_uuid(),
        scope.project_uuid(),
        name
    )
    .fetch_optional(conn)
    .await?
    .ok_or(StorageError::NotFound("secret"))?;
    Ok(row.into())
}

/// A stored secret as a run needs it: enough to open it, nothing decrypted yet.
#[derive(Clone)]
pub struct StoredSecret {
    pub id: Uuid,
    pub org_id: OrgId,
    pub project_id: Option<ProjectId>,
    pub name: String,
    pub version: i32,
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSecret")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// The secrets named `names` as a run of `project` sees them: a project secret wins over the org
/// secret of the same name. Names with no secret are missing from the result.
pub async fn resolve(
    conn: &mut PgConnection,
    org: OrgId,
    project: ProjectId,
    names: &[String],
) -> StorageResult<Vec<StoredSecret>> {
    let rows = sqlx::query!(
        r#"select distinct on (name) id, org_id, project_id, name, version, sealed
           from secrets
           where org_id = $1 and (project_id = $2 or project_id is null) and name = any($3)
           order by name, project_id nulls last"#,
        org.as_uuid(),
        project.as_uuid(),
        names
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| StoredSecret {
            id: row.id,
            org_id: row.org_id.into(),
            project_id: row.project_id.map(Into::into),
            name: row.name,
            version: row.version,
            sealed: row.sealed,
        })
        .collect())
}

/// Decrypts a stored secret. Fails (without a panic, and without any value in the error) when
/// the bytes were altered, moved to another org, project or secret, renamed, or wrapped by a
/// key not in `keyring`. A secret still in format 1 (written before project and name were
/// bound) opens until the re-wrap upgrades it.
pub fn open(keyring: &KeyRing, secret: &StoredSecret) -> cadenza_crypto::Result<SecretString> {
    let sealed = SealedSecret::from_bytes(&secret.sealed)?;
    let aad = aad(
        secret.org_id.as_uuid(),
        secret.project_id.map(|project| project.as_uuid()),
        secret.id,
        &secret.name,
        secret.version,
    );
    cadenza_crypto::open(keyring, &aad, &sealed)
}

/// Records that a run used these secrets (the `last_used_at` of the metadata).
pub async fn mark_used(conn: &mut PgConnection, ids: &[Uuid]) -> StorageResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        "update secrets set last_used_at = now() where id = any($1)",
        ids
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// How many secrets each key-encryption key wraps, by key id.
pub async fn count_by_kek(conn: &mut PgConnection) -> StorageResult<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        r#"select kek_id, count(*) as "count!" from secrets group by kek_id order by kek_id"#
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.kek_id, row.count))
        .collect())
}

/// How many secrets are sealed in a format older than the one this build writes: they open,
/// but are bound only to their org, id and version until the re-wrap upgrades them.
pub async fn count_outdated_format(conn: &mut PgConnection) -> StorageResult<i64> {
    let count = sqlx::query_scalar!(
        r#"select count(*) as "count!" from secrets where format < $1"#,
        i16::from(cadenza_crypto::FORMAT_VERSION)
    )
    .fetch_one(conn)
    .await?;
    Ok(count)
}

/// Refuses a key ring that lacks a key some stored secret needs: the error names the missing
/// ids. Services call this at start-up, so removing a key too early stops a deployment instead
/// of breaking runs later.
pub async fn check_keyring(conn: &mut PgConnection, keyring: &KeyRing) -> StorageResult<()> {
    let ids = count_by_kek(conn).await?;
    keyring
        .check_known(ids.iter().map(|(id, _)| id.as_str()))
        .map_err(StorageError::Crypto)
}

/// What one re-wrap batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RewrapBatch {
    pub rewrapped: u64,
    /// Rows that could not be re-wrapped (altered, or their key is missing), by id, with why.
    pub failed: Vec<(Uuid, String)>,
    /// The largest id looked at, where the next batch of the same pass starts.
    pub last_id: Option<Uuid>,
}

/// Re-wraps up to `limit` data keys not wrapped by the active key or sealed in an older format,
/// in id order after `after`, in one transaction of the caller's. Rows another transaction holds
/// are skipped (they are picked up by a later pass). Secret values are never decrypted: only
/// each row's data key is unwrapped and wrapped again, with the active key and the current
/// format's binding. A row that fails is reported and left as it was.
pub async fn rewrap_batch(
    conn: &mut PgConnection,
    keyring: &KeyRing,
    after: Option<Uuid>,
    limit: i64,
) -> StorageResult<RewrapBatch> {
    let rows = sqlx::query!(
        r#"select id, org_id, project_id, name, version, kek_id, format, sealed from secrets
           where (kek_id <> $1 or format < $4) and id > $2
           order by id
           limit $3
           for update skip locked"#,
        keyring.active_id(),
        after.unwrap_or(Uuid::nil()),
        limit,
        i16::from(cadenza_crypto::FORMAT_VERSION)
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut batch = RewrapBatch::default();
    for row in rows {
        batch.last_id = Some(row.id);
        let aad = aad(row.org_id, row.project_id, row.id, &row.name, row.version);
        let rewrapped = SealedSecret::from_bytes(&row.sealed)
            .and_then(|sealed| cadenza_crypto::rewrap(keyring, &aad, &sealed));
        match rewrapped {
            Ok(sealed) => {
                sqlx::query!(
                    r#"update secrets set kek_id = $3, sealed = $4, format = $6
                       where id = $1 and kek_id = $2 and format = $5"#,
                    row.id,
                    row.kek_id,
                    sealed.kek_id(),
                    sealed.to_bytes(),
                    row.format,
                    i16::from(sealed.format())
                )
                .execute(&mut *conn)
                .await?;
                batch.rewrapped += 1;
            }
            Err(err) => batch.failed.push((row.id, err.to_string())),
        }
    }
    Ok(batch)
}

/// Progress of a re-wrap job, reported after every batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RewrapProgress {
    pub batches: u64,
    pub rewrapped: u64,
    pub failed: u64,
}

/// The outcome of [`rewrap_all`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RewrapReport {
    pub progress: RewrapProgress,
    /// Rows that could not be re-wrapped, by id, with why (never a value).
    pub failed: Vec<(Uuid, String)>,
    /// How many secrets each key wraps afterwards.
    pub by_kek: Vec<(String, i64)>,
    /// The job was stopped before it finished; running it again continues.
    pub interrupted: bool,
}

/// Re-wraps every data key not wrapped by the active key or sealed in an older format (the
/// upgrade step after the migration that introduced format 2), `batch_size` rows per
/// transaction.
/// The rows are the progress marker: the job can be interrupted (`stop` is asked between
/// batches), crash, or run on several processes at once, and a later run continues. Passes
/// repeat until one re-wraps nothing (rows locked by a concurrent writer during one pass are
/// taken by the next); rows that fail are reported, not retried forever.
pub async fn rewrap_all(
    pool: &sqlx::PgPool,
    keyring: &KeyRing,
    batch_size: i64,
    mut on_progress: impl FnMut(&RewrapProgress),
    stop: impl Fn() -> bool,
) -> StorageResult<RewrapReport> {
    const MAX_PASSES: u32 = 100;
    let batch_size = batch_size.clamp(1, 10_000);
    let mut report = RewrapReport::default();
    let mut failed = std::collections::BTreeMap::new();
    'passes: for _ in 0..MAX_PASSES {
        let mut after = None;
        let mut rewrapped_this_pass = 0;
        loop {
            if stop() {
                report.interrupted = true;
                break 'passes;
            }
            let mut tx = pool.begin().await?;
            let batch = rewrap_batch(&mut tx, keyring, after, batch_size).await?;
            tx.commit().await?;
            let Some(last) = batch.last_id else { break };
            after = Some(last);
            rewrapped_this_pass += batch.rewrapped;
            report.progress.batches += 1;
            report.progress.rewrapped += batch.rewrapped;
            for (id, why) in batch.failed {
                failed.insert(id, why);
            }
            report.progress.failed = failed.len() as u64;
            on_progress(&report.progress);
        }
        if rewrapped_this_pass == 0 {
            break;
        }
    }
    report.failed = failed.into_iter().collect();
    let mut conn = pool.acquire().await?;
    report.by_kek = count_by_kek(&mut conn).await?;
    Ok(report)
}
