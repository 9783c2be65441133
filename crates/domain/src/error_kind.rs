//! What kind of failure an error is, independent of the crate that raised it: one small
//! vocabulary for the HTTP status the API answers with, and for a consumer to tell a failure
//! worth a redelivery (`is_transient`) from one that will not go away.

/// The kind of an error. Each crate's error type says which kind each of its errors is
/// (`kind()`); callers decide on the kind, never on a crate's variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The thing asked for does not exist (or is not visible to the caller).
    NotFound,
    /// The request conflicts with the current state: a uniqueness rule, a compare-and-set guard,
    /// a stale lease.
    Conflict,
    /// The input is malformed or breaks a rule; repeating it cannot succeed.
    Invalid,
    /// No valid credentials.
    Unauthenticated,
    /// Valid credentials without the permission needed.
    Forbidden,
    /// Too many requests for now.
    RateLimited,
    /// A dependency (Postgres, NATS) is unreachable or overloaded for now.
    Unavailable,
    /// A bug or a broken invariant.
    Internal,
}

impl ErrorKind {
    /// Whether the same operation may succeed if tried again later, unchanged.
    pub const fn is_transient(self) -> bool {
        matches!(self, ErrorKind::RateLimited | ErrorKind::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorKind;

    #[test]
    fn only_waiting_helps_with_rate_limits_and_unavailable_dependencies() {
        let transient: Vec<ErrorKind> = [
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::Invalid,
            ErrorKind::Unauthenticated,
            ErrorKind::Forbidden,
            ErrorKind::RateLimited,
            ErrorKind::Unavailable,
            ErrorKind::Internal,
        ]
        .into_iter()
        .filter(|kind| kind.is_transient())
        .collect();
        assert_eq!(transient, [ErrorKind::RateLimited, ErrorKind::Unavailable]);
    }
}
