//! Proof that an org controls an email domain: a TXT record at `_cadenza-challenge.<domain>`
//! whose value is `cadenza-domain-verification=<the rule's token>`, looked up through a real
//! resolver (the system's, or the name servers of `CADENZA_DNS_NAMESERVERS`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;

const CHALLENGE_LABEL: &str = "_cadenza-challenge";
const VALUE_PREFIX: &str = "cadenza-domain-verification=";

/// The name the org publishes its TXT record at.
pub fn record_name(domain: &str) -> String {
    format!("{CHALLENGE_LABEL}.{domain}")
}

/// The TXT record value that proves control of a rule's domain.
pub fn record_value(token: &str) -> String {
    format!("{VALUE_PREFIX}{token}")
}

/// What a lookup of a rule's challenge name found.
#[derive(Debug)]
pub enum Proof {
    /// A TXT record with the expected value is published.
    Found,
    /// The name has TXT records, none with the expected value.
    WrongValue { records: usize },
    /// The name does not exist or has no TXT record.
    NoRecord,
}

pub struct DnsVerifier {
    resolver: TokioResolver,
}

impl DnsVerifier {
    /// A resolver asking `name_servers` (each over UDP and TCP), or the system's configuration
    /// when the list is empty. Nothing is cached: an org that has just published its record is
    /// not told an old answer.
    pub fn new(name_servers: &[SocketAddr]) -> anyhow::Result<Self> {
        let mut builder = if name_servers.is_empty() {
            TokioResolver::builder_tokio().context(
                "reading the system resolver configuration (or set CADENZA_DNS_NAMESERVERS)",
            )?
        } else {
            let mut config = ResolverConfig::new();
            for address in name_servers {
                for protocol in [Protocol::Udp, Protocol::Tcp] {
                    config.add_name_server(NameServerConfig::new(*address, protocol));
                }
            }
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.cache_size = 0;
        // Domains often carry many TXT records (SPF, other services' proofs): without EDNS an
        // answer over 512 bytes is lost instead of arriving, or being retried over TCP.
        options.edns0 = true;
        options.timeout = Duration::from_secs(3);
        options.attempts = 2;
        Ok(Self {
            resolver: builder.build(),
        })
    }

    /// Looks up the TXT records at `record_name(domain)` and checks for `record_value(token)`.
    /// A record's value is its character strings joined, as DNS providers split long values.
    pub async fn check(
        &self,
        domain: &str,
        token: &str,
    ) -> Result<Proof, hickory_resolver::ResolveError> {
        let expected = record_value(token);
        let name = format!("{}.", record_name(domain));
        let lookup = match self.resolver.txt_lookup(name).await {
            Ok(lookup) => lookup,
            Err(err) if err.is_no_records_found() || err.is_nx_domain() => {
                return Ok(Proof::NoRecord);
            }
            Err(err) => return Err(err),
        };
        let values: Vec<String> = lookup
            .iter()
            .map(|txt| {
                txt.iter()
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect::<String>()
            })
            .collect();
        if values.iter().any(|value| value.trim() == expected) {
            Ok(Proof::Found)
        } else if values.is_empty() {
            Ok(Proof::NoRecord)
        } else {
            Ok(Proof::WrongValue {
                records: values.len(),
            })
        }
    }
}

/// Parses `CADENZA_DNS_NAMESERVERS`: `ip:port` entries separated by commas or spaces.
pub fn parse_name_servers(raw: &str) -> anyhow::Result<Vec<SocketAddr>> {
    raw.split([',', ' '])
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry.parse().with_context(|| {
                format!("CADENZA_DNS_NAMESERVERS: `{entry}` is not an `ip:port` address")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_servers_are_ip_and_port_lists() {
        let parsed = parse_name_servers("127.0.0.1:5353, [::1]:53").expect("valid");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].port(), 5353);
        assert!(parse_name_servers("").expect("empty").is_empty());
        let err = parse_name_servers("127.0.0.1").expect_err("no port");
        assert!(err.to_string().contains("CADENZA_DNS_NAMESERVERS"), "{err}");
    }

    #[test]
    fn the_record_to_publish_names_the_domain_and_carries_the_token() {
        assert_eq!(record_name("acme.test"), "_cadenza-challenge.acme.test");
        assert_eq!(record_value("abc"), "cadenza-domain-verification=abc");
    }
}
