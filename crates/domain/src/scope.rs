//! What a caller may see. Every storage query that reads or changes tenant data takes a scope,
//! so forgetting to filter by org is a type error rather than a data leak.

use uuid::Uuid;

use crate::ids::OrgId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Instance administration and internal services: every org.
    Instance,
    /// One org's data only.
    Org(OrgId),
    /// Several orgs' data (e.g. the orgs where a user holds a permission). Empty means nothing.
    Orgs(Vec<OrgId>),
}

impl Scope {
    /// The org filter to bind into a query as `uuid[]`: `None` means no filter.
    pub fn org_filter(&self) -> Option<Vec<Uuid>> {
        match self {
            Scope::Instance => None,
            Scope::Org(org) => Some(vec![org.as_uuid()]),
            Scope::Orgs(orgs) => Some(orgs.iter().map(|org| org.as_uuid()).collect()),
        }
    }

    pub fn allows(&self, org: OrgId) -> bool {
        match self {
            Scope::Instance => true,
            Scope::Org(only) => *only == org,
            Scope::Orgs(orgs) => orgs.contains(&org),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_org_list_allows_nothing() {
        let scope = Scope::Orgs(Vec::new());
        assert!(!scope.allows(OrgId::new()));
        assert_eq!(scope.org_filter(), Some(Vec::new()));
        assert!(Scope::Instance.allows(OrgId::new()));
    }
}
