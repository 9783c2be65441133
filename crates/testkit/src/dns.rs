//! A small authoritative DNS server on loopback whose records a test sets, so code that looks
//! names up through a real resolver (email-domain verification) can be tested without the
//! internet. It answers for every name (its zone is the root) over UDP and TCP on one port, and
//! stops when dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hickory_server::ServerFuture;
use hickory_server::authority::{Catalog, ZoneType};
use hickory_server::proto::rr::rdata::{SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryAuthority;

/// Records are served with a zero TTL, so a change is seen by the next lookup.
const TTL: u32 = 0;
const SERIAL: u32 = 1;

pub struct TestDnsServer {
    address: SocketAddr,
    zone: Arc<InMemoryAuthority>,
    /// Dropping the server future aborts its listener tasks.
    _server: ServerFuture<Catalog>,
}

impl TestDnsServer {
    /// Starts the server on `127.0.0.1` with a random port (the same for UDP and TCP, which is
    /// how resolvers address a name server).
    pub async fn start() -> anyhow::Result<Self> {
        let (udp, tcp) = bind_udp_and_tcp().await?;
        let address = udp.local_addr()?;
        let origin = Name::root();
        let mut zone = InMemoryAuthority::empty(origin.clone(), ZoneType::Primary, false);
        let soa = SOA::new(
            Name::from_ascii("ns.test.")?,
            Name::from_ascii("hostmaster.test.")?,
            SERIAL,
            3600,
            600,
            86400,
            TTL,
        );
        zone.upsert_mut(
            Record::from_rdata(origin.clone(), TTL, RData::SOA(soa)),
            SERIAL,
        );
        let zone = Arc::new(zone);
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![zone.clone()]);
        let mut server = ServerFuture::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5));
        Ok(Self {
            address,
            zone,
            _server: server,
        })
    }

    /// Where the server listens (give it to the resolver under test as `ip:port`).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Replaces the TXT records of `name` with one record per value (none: the name has no TXT
    /// record any more).
    pub async fn set_txt(&self, name: &str, values: &[&str]) -> anyhow::Result<()> {
        let name = fully_qualified(name)?;
        self.zone
            .records_mut()
            .await
            .remove(&RrKey::new(LowerName::new(&name), RecordType::TXT));
        for value in values {
            self.add_txt_to(&name, value).await?;
        }
        Ok(())
    }

    /// Adds one TXT record to `name`, keeping the ones it has.
    pub async fn add_txt(&self, name: &str, value: &str) -> anyhow::Result<()> {
        self.add_txt_to(&fully_qualified(name)?, value).await
    }

    async fn add_txt_to(&self, name: &Name, value: &str) -> anyhow::Result<()> {
        let record = Record::from_rdata(
            name.clone(),
            TTL,
            RData::TXT(TXT::new(vec![value.to_owned()])),
        );
        anyhow::ensure!(
            self.zone.upsert(record, SERIAL).await,
            "the test DNS server refused a TXT record for {name}"
        );
        Ok(())
    }
}

fn fully_qualified(name: &str) -> anyhow::Result<Name> {
    let mut name = Name::from_ascii(name).with_context(|| format!("`{name}` is not a DNS name"))?;
    name.set_fqdn(true);
    Ok(name)
}

/// A UDP socket and a TCP listener on the same random loopback port. Another process may take the
/// TCP port between the two binds, so a few ports are tried.
async fn bind_udp_and_tcp() -> anyhow::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let mut last_error = None;
    for _ in 0..20 {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        match tokio::net::TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(err) => last_error = Some(err),
        }
    }
    Err(last_error.map_or_else(
        || anyhow::anyhow!("no loopback port for the test DNS server"),
        anyhow::Error::from,
    ))
}
