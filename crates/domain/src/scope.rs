//! What a caller may see. Every storage query that reads or changes tenant data takes a scope,
//! so forgetting to filter by org is a type error rather than a data leak.

use crate::ids::OrgId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Instance administration and internal services: every org.
    Instance,
    /// One org's data only.
    Org(OrgId),
}

impl Scope {
    /// The org filter to bind into a query: `None` means no filter.
    pub fn org_filter(self) -> Option<uuid::Uuid> {
        match self {
            Scope::Instance => None,
            Scope::Org(org) => Some(org.as_uuid()),
        }
    }
}
