//! Where the CLI keeps the server and token (`$XDG_CONFIG_HOME/cadenza/config.toml`, else
//! `~/.config/cadenza/config.toml`, mode 0600), and how `CADENZA_SERVER` / `CADENZA_TOKEN`
//! override it.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::CliError;

/// The environment the CLI reads, captured once, so the rest never looks at the process's.
#[derive(Clone, Default)]
pub struct Env {
    pub xdg_config_home: Option<String>,
    pub home: Option<String>,
    pub server: Option<String>,
    pub token: Option<Zeroizing<String>>,
}

impl Env {
    pub fn from_process() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let non_empty = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        Env {
            xdg_config_home: non_empty("XDG_CONFIG_HOME"),
            home: non_empty("HOME"),
            server: non_empty("CADENZA_SERVER"),
            token: non_empty("CADENZA_TOKEN").map(Zeroizing::new),
        }
    }

    /// The config file's path: `$XDG_CONFIG_HOME/cadenza/config.toml`, else
    /// `$HOME/.config/cadenza/config.toml`.
    pub fn config_path(&self) -> Result<PathBuf, CliError> {
        let base = match (&self.xdg_config_home, &self.home) {
            // The XDG spec says relative paths are to be ignored.
            (Some(xdg), _) if Path::new(xdg).is_absolute() => PathBuf::from(xdg),
            (_, Some(home)) => Path::new(home).join(".config"),
            _ => {
                return Err(CliError::Config(
                    "neither XDG_CONFIG_HOME nor HOME is set, so there is no config directory; \
                     set CADENZA_SERVER and CADENZA_TOKEN instead"
                        .into(),
                ));
            }
        };
        Ok(base.join("cadenza").join("config.toml"))
    }
}

/// The file's contents.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub server: Option<String>,
    pub token: Option<String>,
}

impl std::fmt::Debug for ConfigFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigFile")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            drop(Zeroizing::new(token));
        }
    }
}

/// What a command talks to.
#[derive(Clone)]
pub struct Settings {
    /// The server's base URL, without a trailing `/` or `/api/v1`.
    pub server: String,
    pub token: Zeroizing<String>,
}

/// Reads the file; a missing file is an empty config.
pub fn load(path: &Path) -> Result<ConfigFile, CliError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => Zeroizing::new(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
        Err(err) => return Err(CliError::io(format!("reading {}", path.display()), err)),
    };
    toml::from_str(&text).map_err(|err| {
        CliError::Config(format!(
            "{} is not a valid config file: {}",
            path.display(),
            err.message()
        ))
    })
}

/// Writes the file with mode 0600 (its directory 0700), replacing any earlier one at once: a
/// temporary file in the same directory, then a rename.
pub fn save(path: &Path, config: &ConfigFile) -> Result<(), CliError> {
    let dir = path
        .parent()
        .ok_or_else(|| CliError::Config(format!("{} has no directory", path.display())))?;
    std::fs::create_dir_all(dir)
        .map_err(|err| CliError::io(format!("creating {}", dir.display()), err))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|err| CliError::io(format!("restricting {}", dir.display()), err))?;
    let text = Zeroizing::new(toml::to_string(config).map_err(|err| {
        CliError::Config(format!("the config could not be written as TOML: {err}"))
    })?);
    let temporary = dir.join(format!(".config.toml.{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        // `mode` applies only to a file it creates: a leftover one keeps its mode otherwise.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    written.map_err(|err| {
        let _ = std::fs::remove_file(&temporary);
        CliError::io(format!("writing {}", path.display()), err)
    })
}

/// Removes the file; whether there was one.
pub fn remove(path: &Path) -> Result<bool, CliError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(CliError::io(format!("removing {}", path.display()), err)),
    }
}

/// The server and token to use: each environment variable wins over the file.
pub fn resolve(file: &ConfigFile, env: &Env) -> Result<Settings, CliError> {
    let server = env.server.clone().or_else(|| file.server.clone());
    let token = env
        .token
        .clone()
        .or_else(|| file.token.clone().map(Zeroizing::new));
    match (server, token) {
        (Some(server), Some(token)) => Ok(Settings {
            server: normalize_server(&server)?,
            token,
        }),
        _ => Err(CliError::NotLoggedIn),
    }
}

/// `https://host/` and `https://host/api/v1` both mean `https://host`.
pub fn normalize_server(raw: &str) -> Result<String, CliError> {
    let trimmed = raw.trim();
    let parsed = url::Url::parse(trimmed).map_err(|err| {
        CliError::Usage(format!(
            "`{trimmed}` is not a server URL ({err}); expected e.g. https://cadenza.example.com"
        ))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(CliError::Usage(format!(
            "`{trimmed}` is not an http(s) server URL"
        )));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(CliError::Usage(format!(
            "`{trimmed}`: a server URL takes no query or fragment"
        )));
    }
    let mut server = trimmed.trim_end_matches('/').to_owned();
    if let Some(base) = server.strip_suffix("/api/v1") {
        server = base.trim_end_matches('/').to_owned();
    }
    Ok(server)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> Env {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        Env::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn the_config_lives_under_xdg_config_home_else_under_home() {
        let xdg = env_of(&[("XDG_CONFIG_HOME", "/x/conf"), ("HOME", "/home/a")]);
        assert_eq!(
            xdg.config_path().expect("path"),
            PathBuf::from("/x/conf/cadenza/config.toml")
        );
        let home = env_of(&[("HOME", "/home/a")]);
        assert_eq!(
            home.config_path().expect("path"),
            PathBuf::from("/home/a/.config/cadenza/config.toml")
        );
        let relative = env_of(&[("XDG_CONFIG_HOME", "conf"), ("HOME", "/home/a")]);
        assert_eq!(
            relative.config_path().expect("path"),
            PathBuf::from("/home/a/.config/cadenza/config.toml")
        );
        assert!(env_of(&[]).config_path().is_err());
    }

    #[test]
    fn a_saved_config_is_private_and_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cadenza").join("config.toml");
        let config = ConfigFile {
            server: Some("http://127.0.0.1:1".into()),
            token: Some("cdz_secret".into()),
        };
        save(&path, &config).expect("saved");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().expect("dir"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(load(&path).expect("loaded"), config);
        assert!(!format!("{config:?}").contains("cdz_secret"));

        // A second save replaces the first and leaves no temporary file behind.
        let other = ConfigFile {
            server: Some("https://example.test".into()),
            token: Some("cdz_other".into()),
        };
        save(&path, &other).expect("saved again");
        assert_eq!(load(&path).expect("loaded"), other);
        let entries = std::fs::read_dir(path.parent().expect("dir"))
            .expect("dir")
            .count();
        assert_eq!(entries, 1);

        assert!(remove(&path).expect("removed"));
        assert!(!remove(&path).expect("nothing to remove"));
        assert_eq!(
            load(&path).expect("missing is empty"),
            ConfigFile::default()
        );
    }

    #[test]
    fn a_broken_config_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "server = [").expect("write");
        let err = load(&path).expect_err("invalid");
        assert!(err.to_string().contains("config.toml"), "{err}");
    }

    #[test]
    fn environment_variables_override_the_file() {
        let file = ConfigFile {
            server: Some("https://file.test/".into()),
            token: Some("cdz_file".into()),
        };
        let settings = resolve(&file, &env_of(&[])).expect("from file");
        assert_eq!(settings.server, "https://file.test");
        assert_eq!(settings.token.as_str(), "cdz_file");

        let env = env_of(&[("CADENZA_SERVER", "http://env.test/api/v1")]);
        let settings = resolve(&file, &env).expect("server from env");
        assert_eq!(settings.server, "http://env.test");
        assert_eq!(settings.token.as_str(), "cdz_file");

        let env = env_of(&[("CADENZA_TOKEN", "cdz_env")]);
        let settings = resolve(&file, &env).expect("token from env");
        assert_eq!(settings.token.as_str(), "cdz_env");

        assert!(matches!(
            resolve(
                &ConfigFile::default(),
                &env_of(&[("CADENZA_TOKEN", "cdz_env")])
            ),
            Err(CliError::NotLoggedIn)
        ));
    }

    #[test]
    fn only_http_server_urls_are_accepted() {
        assert_eq!(
            normalize_server(" https://a.test/base/ ").expect("ok"),
            "https://a.test/base"
        );
        assert!(normalize_server("a.test").is_err());
        assert!(normalize_server("ftp://a.test").is_err());
        assert!(normalize_server("https://a.test/?x=1").is_err());
    }
}
