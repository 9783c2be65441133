use serde_json::Value;

use crate::json::{f64_at, string_at, string_list_at};

/// Capability announced by servers that answer 200 with the existing conversation when a
/// create reuses an id.
pub const CAPABILITY_IDEMPOTENT_CREATE: &str = "idempotent_conversation_create_v1";

/// `GET /server_info`: what the server is and can do. Gate features on `version` and
/// `capabilities`, since the API changes between releases.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerInfo {
    pub version: Option<String>,
    pub sdk_version: Option<String>,
    pub capabilities: Vec<String>,
    pub usable_tools: Vec<String>,
    pub uptime_seconds: Option<f64>,
    /// Reset by bash, file and git calls and by agent activity; useful for idle culling.
    pub idle_time_seconds: Option<f64>,
    pub conversation_runtime: Option<String>,
    pub raw: Value,
}

impl ServerInfo {
    pub fn from_value(raw: Value) -> Self {
        Self {
            version: string_at(&raw, "version"),
            sdk_version: string_at(&raw, "sdk_version"),
            capabilities: string_list_at(&raw, "capabilities"),
            usable_tools: string_list_at(&raw, "usable_tools"),
            uptime_seconds: f64_at(&raw, "uptime"),
            idle_time_seconds: f64_at(&raw, "idle_time"),
            conversation_runtime: string_at(&raw, "conversation_runtime"),
            raw,
        }
    }

    pub fn has_capability(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|known| known == capability)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn server_info_reads_version_capabilities_and_tools() {
        let info = ServerInfo::from_value(json!({
            "uptime": 12.5,
            "idle_time": 3,
            "title": "OpenHands Agent Server",
            "version": "1.58.0",
            "sdk_version": "1.58.0",
            "usable_tools": ["terminal", "file_editor", "task_tracker"],
            "conversation_runtime": "local",
            "capabilities": ["idempotent_conversation_create_v1", "conversation_runtime_routes_v1"],
            "docs": "/docs"
        }));
        assert_eq!(info.version.as_deref(), Some("1.58.0"));
        assert!(info.has_capability(CAPABILITY_IDEMPOTENT_CREATE));
        assert!(!info.has_capability("time_travel_v1"));
        assert_eq!(info.usable_tools.len(), 3);
        assert_eq!(info.uptime_seconds, Some(12.5));
        assert_eq!(info.idle_time_seconds, Some(3.0));
        assert_eq!(info.raw["docs"], "/docs");
    }
}
