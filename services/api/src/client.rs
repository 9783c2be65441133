//! Who is on the other end of a request: the client's address and the request's id.
//!
//! Only a peer in `CADENZA_TRUSTED_PROXIES` is believed about the client behind it
//! (`Forwarded`, `X-Forwarded-For`) and about the request id (`X-Request-Id`). From any other
//! peer those headers are ignored: the socket peer is the client and the request gets a fresh id,
//! so nobody can pick their own rate-limit bucket or forge correlation ids in the audit log.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// Longest request id accepted from a trusted proxy.
const MAX_REQUEST_ID: usize = 128;

/// The networks whose peers are reverse proxies of this deployment.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses a comma-separated list of CIDRs or addresses (`10.0.0.0/8, 127.0.0.1`).
    pub fn parse(raw: &str) -> Result<Self, String> {
        raw.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{item}` is not an IP address or CIDR"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: walking the forwarding chain from the nearest hop, the first
    /// address that is not a trusted proxy. Without a trusted peer, the peer itself.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let mut chain = forwarded_for(headers);
        // Nearest hop last: walk back until an address we do not run.
        while let Some(hop) = chain.pop() {
            if !self.trusts(hop) {
                return hop;
            }
        }
        peer
    }
}

/// An IPv4 address mapped into IPv6 compares as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The `for=` addresses of `Forwarded` (RFC 7239) if present, else `X-Forwarded-For`, in order
/// (client first). An entry that is not an address (`unknown`, obfuscated ids) ends the chain
/// there: what came before it cannot be attributed.
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    let values: Vec<&str> = headers
        .get_all(FORWARDED)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    let entries: Vec<String> = if values.is_empty() {
        headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|item| item.trim().to_owned())
            .collect()
    } else {
        values
            .iter()
            .flat_map(|value| value.split(','))
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.trim().split_once('='))
                    .find(|(key, _)| key.eq_ignore_ascii_case("for"))
                    .map(|(_, value)| value.trim().trim_matches('"').to_owned())
                    .unwrap_or_default()
            })
            .collect()
    };
    let mut chain = Vec::new();
    for entry in entries {
        match parse_node(&entry) {
            Some(ip) => chain.push(canonical(ip)),
            None => chain.clear(),
        }
    }
    chain
}

/// `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]`, `[2001:db8::1]:80`, `2001:db8::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    node.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
}

/// The client as the rest of the API sees it (a request extension set by [`identify_client`]).
#[derive(Clone, Debug)]
pub struct ClientInfo {
    /// `None` only when the server was not given the peer address (in-process tests).
    pub ip: Option<IpAddr>,
    pub request_id: String,
}

fn acceptable_request_id(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let fine = !text.is_empty()
        && text.len() <= MAX_REQUEST_ID
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-_.:".contains(&byte));
    fine.then(|| text.to_owned())
}

/// Middleware: works out the client's address and the request id, records them as
/// [`ClientInfo`], and sets the `X-Request-Id` header the rest of the stack (trace span,
/// response) uses to the id it decided on.
pub async fn identify_client(
    State(proxies): State<Arc<TrustedProxies>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let trusted_peer = peer.is_some_and(|peer| proxies.trusts(peer));
    let ip = peer.map(|peer| proxies.client_ip(peer, request.headers()));
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .filter(|_| trusted_peer)
        .and_then(acceptable_request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        request.headers_mut().insert(REQUEST_ID, value);
    }
    request
        .extensions_mut()
        .insert(ClientInfo { ip, request_id });
    next.run(request).await
}

/// Which `Origin` counts as this site, for the same-origin check on cookie-authenticated
/// requests.
#[derive(Clone, Debug, Default)]
pub struct SiteOrigin {
    /// `scheme://host[:port]` of `CADENZA_PUBLIC_URL`; without it, an origin whose
    /// `host[:port]` is the request's `Host` counts.
    public: Option<String>,
}

impl SiteOrigin {
    pub fn new(public_url: Option<&url::Url>) -> Self {
        Self {
            public: public_url.map(|url| url.origin().ascii_serialization()),
        }
    }

    pub fn allows(&self, origin: &str, headers: &HeaderMap) -> bool {
        match &self.public {
            Some(public) => origin == public,
            None => {
                let host = headers
                    .get(axum::http::header::HOST)
                    .and_then(|value| value.to_str().ok());
                let origin_host = url::Url::parse(origin).ok().and_then(|url| {
                    let host = url.host_str()?.to_owned();
                    Some(match url.port() {
                        Some(port) => format!("{host}:{port}"),
                        None => host,
                    })
                });
                host.is_some() && origin_host.as_deref() == host
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").expect("cidrs");
        let claims = headers(&[("x-forwarded-for", "1.1.1.1"), ("forwarded", "for=2.2.2.2")]);
        assert_eq!(
            proxies.client_ip(ip("203.0.113.9"), &claims),
            ip("203.0.113.9")
        );
        assert_eq!(
            TrustedProxies::default().client_ip(ip("127.0.0.1"), &claims),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_first_untrusted_hop_from_the_right_is_the_client() {
        let proxies = TrustedProxies::parse("10.0.0.0/8, 192.168.1.1").expect("cidrs");
        // The client forged the first entry; the proxies appended the real ones.
        let chain = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.2.3")]);
        assert_eq!(
            proxies.client_ip(ip("10.0.0.1"), &chain),
            ip("198.51.100.7")
        );
        let forwarded = headers(&[(
            "forwarded",
            "for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https, for=192.168.1.1",
        )]);
        assert_eq!(
            proxies.client_ip(ip("10.0.0.1"), &forwarded),
            ip("2001:db8::7")
        );
        // Only proxies in the chain: the nearest one is all we know.
        let only_proxies = headers(&[("x-forwarded-for", "10.9.9.9")]);
        assert_eq!(
            proxies.client_ip(ip("10.0.0.1"), &only_proxies),
            ip("10.0.0.1")
        );
        // A mapped IPv4 peer is recognised as the IPv4 proxy it is.
        assert_eq!(
            proxies.client_ip(ip("::ffff:10.0.0.1"), &chain),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn unparseable_entries_cut_the_chain_and_bad_settings_are_named() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").expect("cidrs");
        let chain = headers(&[("x-forwarded-for", "198.51.100.7, unknown")]);
        assert_eq!(proxies.client_ip(ip("10.0.0.1"), &chain), ip("10.0.0.1"));
        let error = TrustedProxies::parse("10.0.0.0/8, nonsense").expect_err("refused");
        assert!(error.contains("nonsense"), "{error}");
    }

    #[test]
    fn the_site_origin_is_the_public_url_or_the_host_asked_for() {
        let public = SiteOrigin::new(Some(&"https://cadenza.example/app".parse().expect("url")));
        let none = HeaderMap::new();
        assert!(public.allows("https://cadenza.example", &none));
        for other in [
            "http://cadenza.example",
            "https://cadenza.example.evil",
            "null",
            "",
        ] {
            assert!(!public.allows(other, &none), "{other}");
        }
        let by_host = SiteOrigin::default();
        let host = headers(&[("host", "127.0.0.1:8080")]);
        assert!(by_host.allows("http://127.0.0.1:8080", &host));
        assert!(!by_host.allows("http://127.0.0.1:9090", &host));
        assert!(!by_host.allows("http://127.0.0.1:8080", &none));
    }

    #[test]
    fn request_ids_from_proxies_must_be_short_and_plain() {
        assert_eq!(
            acceptable_request_id(&HeaderValue::from_static("abc-123_x.y:z")),
            Some("abc-123_x.y:z".into())
        );
        for bad in ["", "has space", "quote\"", &"x".repeat(129)] {
            assert_eq!(
                acceptable_request_id(&HeaderValue::from_str(bad).expect("value")),
                None,
                "{bad}"
            );
        }
    }
}
