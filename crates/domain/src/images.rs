//! Which agent images may run: image references, and the operator's allowlist of registries and
//! repositories they are checked against.
//!
//! A reference is normalised the way the Docker Engine resolves it (`ubuntu` is
//! `docker.io/library/ubuntu`, `acme/agent` is `docker.io/acme/agent`), so a rule cannot be
//! sidestepped by spelling the same image another way. A rule names a registry
//! (`registry.example.com/`), a repository prefix (`ghcr.io/acme/`, ending in `/`), or one
//! repository (`ghcr.io/openhands/agent-server`, any tag or digest of it); `*` allows every image.

use std::fmt;

const DEFAULT_REGISTRY: &str = "docker.io";

/// An image reference, normalised: `registry/repository` plus its tag or digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    /// `registry/repository`, what rules match against.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

fn is_registry(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

fn valid_path_component(component: &str) -> bool {
    !component.is_empty()
        && component.len() <= 128
        && component
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        && component
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
}

fn valid_registry(registry: &str) -> bool {
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        && port.is_none_or(|port| !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()))
}

/// Splits `registry/path` into the registry (defaulted) and the repository path, checking each
/// component.
fn split_name(name: &str) -> Result<(String, String), String> {
    let mut components: Vec<&str> = name.split('/').collect();
    let registry = if components.len() > 1 && is_registry(components[0]) {
        let registry = components.remove(0).to_ascii_lowercase();
        if !valid_registry(&registry) {
            return Err(format!("`{registry}` is not a registry host"));
        }
        registry
    } else {
        DEFAULT_REGISTRY.to_owned()
    };
    if let Some(bad) = components.iter().find(|c| !valid_path_component(c)) {
        return Err(format!(
            "`{bad}` is not a valid repository path component (lower-case letters, digits, `.`, `_`, `-`)"
        ));
    }
    if registry == "index.docker.io" || registry == "registry-1.docker.io" {
        return split_name(&format!("{DEFAULT_REGISTRY}/{}", components.join("/")));
    }
    if registry == DEFAULT_REGISTRY && components.len() == 1 {
        components.insert(0, "library");
    }
    Ok((registry, components.join("/")))
}

impl std::str::FromStr for ImageRef {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        if raw.is_empty() || raw.len() > 512 || raw.contains(char::is_whitespace) {
            return Err("an image reference is a name with a tag or digest, without spaces".into());
        }
        let (rest, digest) = match raw.split_once('@') {
            Some((rest, digest)) => {
                let valid = digest.split_once(':').is_some_and(|(algorithm, hex)| {
                    !algorithm.is_empty()
                        && hex.len() >= 32
                        && hex.chars().all(|c| c.is_ascii_hexdigit())
                });
                if !valid {
                    return Err(format!("`{digest}` is not a digest (`sha256:<hex>`)"));
                }
                (rest, Some(digest.to_owned()))
            }
            None => (raw, None),
        };
        // A tag follows the last `:` after the last `/` (a registry may have a port).
        let (name, tag) = match rest.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, Some(tag.to_owned())),
            _ => (rest, None),
        };
        if let Some(tag) = &tag {
            let valid = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                && !tag.starts_with(['.', '-']);
            if !valid {
                return Err(format!("`{tag}` is not a valid tag"));
            }
        }
        let (registry, repository) = split_name(name)?;
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

/// One allowlist entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRule {
    /// Every image.
    Any,
    /// Every repository under this `registry/path/` prefix (a registry alone: `registry/`).
    Prefix(String),
    /// Exactly this `registry/repository`.
    Repository(String),
}

impl std::str::FromStr for ImageRule {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let raw = raw.trim();
        if raw == "*" {
            return Ok(ImageRule::Any);
        }
        if raw.is_empty() || raw.contains(['@', ' ']) {
            return Err(format!(
                "`{raw}` is not an image rule (`registry/`, `registry/path/` or `registry/repository`)"
            ));
        }
        if let Some(prefix) = raw.strip_suffix('/') {
            // A bare registry host, or a path under one (or under Docker Hub).
            if !prefix.contains('/') && is_registry(prefix) {
                let registry = prefix.to_ascii_lowercase();
                if !valid_registry(&registry) {
                    return Err(format!("`{registry}` is not a registry host"));
                }
                return Ok(ImageRule::Prefix(format!("{registry}/")));
            }
            let (registry, path) = split_name(prefix)?;
            // `acme/` means Docker Hub's `acme/…`, not `library/acme/…`.
            let path = match (registry.as_str(), prefix.contains('/')) {
                (DEFAULT_REGISTRY, false) => prefix.to_owned(),
                _ => path,
            };
            return Ok(ImageRule::Prefix(format!("{registry}/{path}/")));
        }
        let last = raw.rsplit('/').next().unwrap_or_default();
        if raw.contains('/') && last.contains(':') {
            return Err(format!(
                "`{raw}`: a rule names a repository, not a tag (drop `:{}`)",
                last.rsplit(':').next().unwrap_or_default()
            ));
        }
        let (registry, repository) = split_name(raw)?;
        Ok(ImageRule::Repository(format!("{registry}/{repository}")))
    }
}

impl fmt::Display for ImageRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRule::Any => f.write_str("*"),
            ImageRule::Prefix(prefix) => f.write_str(prefix),
            ImageRule::Repository(repository) => f.write_str(repository),
        }
    }
}

impl ImageRule {
    pub fn allows(&self, image: &ImageRef) -> bool {
        let name = image.name();
        match self {
            ImageRule::Any => true,
            ImageRule::Prefix(prefix) => name.starts_with(prefix.as_str()),
            ImageRule::Repository(repository) => name == *repository,
        }
    }
}

/// The images an org may use: the instance's rules, plus any an instance admin added for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImagePolicy {
    pub rules: Vec<ImageRule>,
}

impl ImagePolicy {
    /// Parses a comma-separated list of rules.
    pub fn parse(list: &str) -> Result<Self, String> {
        let rules = list
            .split(',')
            .map(str::trim)
            .filter(|rule| !rule.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<ImageRule>, String>>()?;
        Ok(Self { rules })
    }

    /// This policy with more rules (an org's own).
    pub fn with(&self, more: impl IntoIterator<Item = ImageRule>) -> Self {
        let mut rules = self.rules.clone();
        rules.extend(more);
        Self { rules }
    }

    pub fn allows(&self, image: &ImageRef) -> bool {
        self.rules.iter().any(|rule| rule.allows(image))
    }

    /// Checks a reference: why it is refused, in words for the person who set it.
    pub fn check(&self, raw: &str) -> Result<ImageRef, String> {
        let image: ImageRef = raw
            .parse()
            .map_err(|err| format!("`agent.image` `{raw}`: {err}"))?;
        if self.allows(&image) {
            return Ok(image);
        }
        let allowed = if self.rules.is_empty() {
            "none are configured".to_owned()
        } else {
            self.rules
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(format!(
            "`agent.image` `{raw}` ({}) is not an image this instance allows; allowed: {allowed}. \
             An instance administrator can allow more for your org",
            image.name()
        ))
    }
}

/// Who a container runs as, from the image's `User`: a non-zero numeric user (and group) is kept;
/// anything else (empty, root by name or number, a user name whose number the image alone
/// knows) runs as `fallback`. The result is always numeric and never UID 0.
pub fn container_user(image_user: &str, fallback: (u32, u32)) -> (u32, u32) {
    let image_user = image_user.trim();
    let (user, group) = match image_user.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (image_user, None),
    };
    match user.parse::<u32>() {
        Ok(uid) if uid != 0 => {
            // A numeric non-root group is kept; a named or root group becomes the UID's own.
            let gid = group
                .and_then(|group| group.parse::<u32>().ok())
                .filter(|gid| *gid != 0)
                .unwrap_or(uid);
            (uid, gid)
        }
        _ => fallback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(raw: &str) -> ImageRef {
        raw.parse().expect(raw)
    }

    #[test]
    fn references_are_normalised_like_the_engine_does() {
        assert_eq!(image("ubuntu").name(), "docker.io/library/ubuntu");
        assert_eq!(image("ubuntu:24.04").tag.as_deref(), Some("24.04"));
        assert_eq!(image("acme/agent:1").name(), "docker.io/acme/agent");
        assert_eq!(
            image("index.docker.io/acme/agent").name(),
            "docker.io/acme/agent"
        );
        assert_eq!(
            image("ghcr.io/openhands/agent-server:1.58.0-python").name(),
            "ghcr.io/openhands/agent-server"
        );
        assert_eq!(image("localhost:5000/x/y:z").name(), "localhost:5000/x/y");
        let pinned = image(&format!("ghcr.io/a/b@sha256:{}", "a".repeat(64)));
        assert_eq!(pinned.name(), "ghcr.io/a/b");
        assert!(pinned.digest.is_some());
        for bad in [
            "",
            "a b",
            "UPPER/case",
            "x@sha256:zz",
            "x:",
            "ghcr.io/",
            "-x",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_allow_exactly_what_they_name() {
        let policy =
            ImagePolicy::parse("ghcr.io/openhands/agent-server, registry.example.com/, cadenza/")
                .expect("policy");
        for allowed in [
            "ghcr.io/openhands/agent-server:1.58.0-python",
            "registry.example.com/anything/at/all:1",
            "cadenza/fake-agent-server:dev",
            "docker.io/cadenza/openhands-agent-server:1.58.0",
        ] {
            assert!(policy.check(allowed).is_ok(), "{allowed}");
        }
        for refused in [
            // Same name under another registry or as a longer repository.
            "ghcr.io/openhands/agent-server-evil:1",
            "evil.example/openhands/agent-server:1",
            "ghcr.io/openhands/other:1",
            // A registry on the worker's loopback or network.
            "127.0.0.1:5432/x:y",
            "10.0.3.7:8080/x:y",
            "localhost:5000/cadenza/x",
            // Docker Hub's library is not `cadenza/`.
            "ubuntu",
            "cadenzaevil/x",
            "registry.example.com.evil.io/x",
        ] {
            let err = policy.check(refused).expect_err(refused);
            assert!(err.contains("not an image this instance allows"), "{err}");
        }
        assert!(
            ImagePolicy::parse("*")
                .expect("any")
                .check("ubuntu")
                .is_ok()
        );
        assert!(ImagePolicy::default().check("ubuntu").is_err());
        assert!(
            ImagePolicy::parse("localhost:5000/x").is_ok(),
            "a registry port is no tag"
        );
        assert!(
            ImagePolicy::parse("ghcr.io/a/b:1").is_err(),
            "a tag is not a rule"
        );
        assert!(
            ImagePolicy::parse("acme/agent:1").is_err(),
            "a tag is not a rule"
        );
    }

    #[test]
    fn an_org_override_adds_to_the_instance_rules() {
        let instance = ImagePolicy::parse("ghcr.io/openhands/agent-server").expect("policy");
        let org = instance.with(["ghcr.io/acme/".parse::<ImageRule>().expect("rule")]);
        assert!(instance.check("ghcr.io/acme/agent:1").is_err());
        assert!(org.check("ghcr.io/acme/agent:1").is_ok());
        assert!(org.check("ghcr.io/openhands/agent-server:2").is_ok());
    }

    #[test]
    fn containers_never_run_as_root() {
        let fallback = (10001, 10001);
        for root in [
            "",
            "root",
            "0",
            "0:0",
            "root:root",
            "root:0",
            "0:1000",
            " 0 ",
            "openhands",
            "openhands:openhands",
            "-1",
            "abc:5",
        ] {
            assert_eq!(container_user(root, fallback), fallback, "{root:?}");
        }
        assert_eq!(container_user("1000", fallback), (1000, 1000));
        assert_eq!(container_user("1000:1001", fallback), (1000, 1001));
        assert_eq!(container_user("1000:0", fallback), (1000, 1000));
        assert_eq!(container_user("1000:staff", fallback), (1000, 1000));
    }
}
