//! Configuration: defaults ← optional TOML file (`CADENZA_CONFIG_FILE`) ← `CADENZA_*` environment
//! variables. Errors name the setting and the variable that sets it.

use std::fmt;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::de::DeserializeOwned;

pub const ENV_PREFIX: &str = "CADENZA_";
pub const CONFIG_FILE_VARIABLE: &str = "CADENZA_CONFIG_FILE";

#[derive(Debug)]
pub struct ConfigError {
    problems: Vec<String>,
}

impl ConfigError {
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    pub fn new(problem: impl Into<String>) -> Self {
        Self {
            problems: vec![problem.into()],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.problems.join("; "))
    }
}

impl std::error::Error for ConfigError {}

fn variable_for(path: &[String]) -> String {
    format!("{ENV_PREFIX}{}", path.join("__").to_ascii_uppercase())
}

fn describe(error: figment::Error) -> ConfigError {
    let problems = error
        .into_iter()
        .map(|error| {
            use figment::error::Kind;
            let mut path = error.path.clone();
            match &error.kind {
                Kind::MissingField(field) => {
                    path.push(field.to_string());
                    format!(
                        "missing setting `{}` (set {})",
                        path.join("."),
                        variable_for(&path)
                    )
                }
                kind => format!(
                    "setting `{}` ({}) is invalid: {kind}",
                    path.join("."),
                    variable_for(&path)
                ),
            }
        })
        .collect();
    ConfigError { problems }
}

/// Builds the provider chain from the process environment. Only `main` calls this: tests build
/// configuration structs in code and never touch the environment.
pub fn figment_from_environment() -> Figment {
    let mut figment = Figment::new();
    if let Ok(path) = std::env::var(CONFIG_FILE_VARIABLE) {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment.merge(
        Env::prefixed(ENV_PREFIX)
            .ignore(&["CONFIG_FILE"])
            .split("__"),
    )
}

/// Extracts a typed configuration, turning every problem into a message that names the setting.
pub fn load_config<T: DeserializeOwned>(figment: Figment) -> Result<T, ConfigError> {
    figment.extract().map_err(describe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Serialized;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Sample {
        database_url: String,
        #[serde(default = "default_port")]
        port: u16,
    }

    fn default_port() -> u16 {
        8080
    }

    #[test]
    fn a_missing_setting_names_its_variable() {
        let err = load_config::<Sample>(Figment::new()).expect_err("missing");
        let message = err.to_string();
        assert!(message.contains("database_url"), "{message}");
        assert!(message.contains("CADENZA_DATABASE_URL"), "{message}");
    }

    #[test]
    fn an_invalid_value_names_its_variable() {
        let figment = Figment::new().merge(Serialized::defaults(serde_json::json!({
            "database_url": "postgres://x",
            "port": "not-a-number",
        })));
        let message = load_config::<Sample>(figment)
            .expect_err("invalid")
            .to_string();
        assert!(message.contains("CADENZA_PORT"), "{message}");
    }

    #[test]
    fn defaults_fill_what_is_not_set() {
        let figment = Figment::new().merge(Serialized::defaults(serde_json::json!({
            "database_url": "postgres://x",
        })));
        let sample: Sample = load_config(figment).expect("valid");
        assert_eq!(sample.port, 8080);
        assert_eq!(sample.database_url, "postgres://x");
    }
}
