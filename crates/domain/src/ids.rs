//! Typed identifiers. Each entity has its own newtype so an org id can never be passed where a
//! run id is expected. Run ids are UUIDv7, so they sort by creation time and make good cursors.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new time-ordered identifier.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }
    };
}

id_type!(
    /// A tenant.
    OrgId
);
id_type!(
    /// A project: a repository plus agent settings, owned by one org.
    ProjectId
);
id_type!(
    /// One run of the agent on one task.
    RunId
);
id_type!(
    /// A worker process (a pool member that runs workspace containers).
    WorkerId
);
id_type!(
    /// An API token.
    TokenId
);
id_type!(
    /// A person who signs in.
    UserId
);
id_type!(
    /// An invitation to join an org.
    InvitationId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_strings_and_json() {
        let id = RunId::new();
        let parsed: RunId = id.to_string().parse().expect("parses");
        assert_eq!(id, parsed);
        let json = serde_json::to_string(&id).expect("serializes");
        assert_eq!(json, format!("\"{id}\""));
    }

    #[test]
    fn new_ids_sort_by_creation_time() {
        let first = RunId::new();
        let second = RunId::new();
        assert!(first < second);
    }
}
