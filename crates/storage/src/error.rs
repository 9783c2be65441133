use cadenza_domain::ErrorKind;
use thiserror::Error;

pub type StorageResult<T> = Result<T, StorageError>;

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A uniqueness rule or a compare-and-set guard rejected the write.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A worker's write for a run carried a lease epoch that is no longer current: another
    /// holder (a retry, or a worker that adopted the run) owns the run now.
    #[error("the run is held by a newer lease: {0}")]
    Fenced(String),
    /// A stored value does not decode into the domain type (a bug or a manual edit).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// Sealing, opening or re-wrapping a secret failed; the message never holds a value.
    #[error("secret cryptography failed: {0}")]
    Crypto(#[source] cadenza_crypto::Error),
    #[error("migration failed")]
    Migration(#[source] sqlx::migrate::MigrateError),
    /// A message for the outbox does not encode (a bug in its type).
    #[error("an outbox message does not encode")]
    Encode(#[source] serde_json::Error),
}

impl StorageError {
    /// The kind of failure, for callers that decide on it (an HTTP status, a redelivery).
    pub fn kind(&self) -> ErrorKind {
        match self {
            StorageError::NotFound(_) => ErrorKind::NotFound,
            StorageError::Conflict(_) | StorageError::Fenced(_) => ErrorKind::Conflict,
            err if err.is_transient() => ErrorKind::Unavailable,
            StorageError::Database(_)
            | StorageError::Corrupt(_)
            | StorageError::Crypto(_)
            | StorageError::Migration(_)
            | StorageError::Encode(_) => ErrorKind::Internal,
        }
    }

    /// Whether retrying the same operation later may succeed (connection loss, timeouts,
    /// serialization failures), as opposed to a permanent rejection.
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::Database(err) => match err {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                sqlx::Error::Database(db) => db.code().as_deref().is_some_and(is_transient_code),
                _ => false,
            },
            _ => false,
        }
    }
}

/// SQLSTATEs worth a retry: serialization failure and deadlock, a lock or statement timeout, the
/// connection exceptions (class 08), too many connections, and the server shutting down or
/// starting (57P01-57P03), as during a failover or restart.
fn is_transient_code(code: &str) -> bool {
    matches!(
        code,
        "40001" | "40P01" | "55P03" | "57014" | "53300" | "57P01" | "57P02" | "57P03"
    ) || code.starts_with("08")
}

impl From<sqlx::Error> for StorageError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::RowNotFound => StorageError::NotFound("row"),
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StorageError::Conflict(db.constraint().unwrap_or("unique").to_owned())
            }
            _ => StorageError::Database(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use cadenza_domain::ErrorKind;

    use super::StorageError;

    #[test]
    fn each_storage_error_has_the_kind_its_callers_act_on() {
        let cases = [
            (StorageError::NotFound("run"), ErrorKind::NotFound),
            (StorageError::Conflict("taken".into()), ErrorKind::Conflict),
            (StorageError::Fenced("stale".into()), ErrorKind::Conflict),
            (StorageError::Corrupt("bad".into()), ErrorKind::Internal),
            (
                StorageError::Database(sqlx::Error::PoolTimedOut),
                ErrorKind::Unavailable,
            ),
            (
                StorageError::Database(sqlx::Error::ColumnNotFound("x".into())),
                ErrorKind::Internal,
            ),
            (
                StorageError::from(sqlx::Error::RowNotFound),
                ErrorKind::NotFound,
            ),
        ];
        for (err, kind) in cases {
            assert_eq!(err.kind(), kind, "{err:?}");
        }
    }
}
