//! Outgoing HTTP for plugins (`wasi:http/outgoing-handler`), through the
//! host's allow-list. A plugin with no `grants.http` entries gets
//! `HTTP-request-denied` for every request; one with entries may reach
//! exactly those hosts (and ports). A host name must resolve to public
//! addresses only: loopback, private, link-local (cloud metadata) and other
//! non-routable addresses are refused unless the policy lists that address
//! literally. The name is resolved once, every address checked, and the
//! connection made to a checked address ([`super::http_send`]), so a DNS
//! answer that changes between check and connect (rebinding) cannot reach
//! a private address. Redirects are never followed by the host (a plugin
//! that follows one makes a new request, checked like the first). Every
//! request is bounded by the plugin's call deadline, and response bodies by
//! `limits.max_http_response_bytes`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::state::PluginInfo;

/// One allow-list entry: `host`, `host:port`, `*.domain` or `*.domain:port`,
/// or an IP address (IPv6 in brackets when a port follows).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPattern {
    /// Lower-case host, without the `*.` of a wildcard.
    host: String,
    /// Matches subdomains of `host` (not `host` itself).
    wildcard: bool,
    /// Only this port (any port when absent).
    port: Option<u16>,
    /// The host is an IP address (private addresses allowed, since named).
    literal: Option<IpAddr>,
}

impl TryFrom<String> for HostPattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad =
            || format!("`{s}` is not a host pattern (host, host:port, *.domain, or an IP address)");
        if s.contains("://") || s.contains('/') {
            return Err(format!(
                "{}: give the host only, without scheme or path",
                bad()
            ));
        }
        let (host, port) = split_host_port(&s).ok_or_else(bad)?;
        let (wildcard, host) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host),
        };
        let host = host.to_ascii_lowercase();
        let literal = host.parse::<IpAddr>().ok();
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !(name_ok || literal.is_some()) || (wildcard && literal.is_some()) {
            return Err(bad());
        }
        Ok(HostPattern {
            host,
            wildcard,
            port,
            literal,
        })
    }
}

impl From<HostPattern> for String {
    fn from(p: HostPattern) -> String {
        let host = match p.literal {
            Some(IpAddr::V6(_)) => format!("[{}]", p.host),
            _ if p.wildcard => format!("*.{}", p.host),
            _ => p.host,
        };
        match p.port {
            Some(port) => format!("{host}:{port}"),
            None => host,
        }
    }
}

/// `host[:port]`, with IPv6 addresses in brackets.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            p => Some((host, Some(p.strip_prefix(':')?.parse().ok()?))),
        };
    }
    if s.matches(':').count() > 1 {
        return Some((s, None)); // a bare IPv6 address
    }
    match s.split_once(':') {
        Some((h, p)) => Some((h, Some(p.parse().ok()?))),
        None => Some((s, None)),
    }
}

impl HostPattern {
    fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Some(ip) = self.literal {
            return host.parse::<IpAddr>().is_ok_and(|h| h == ip);
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.wildcard {
            host.len() > self.host.len() + 1
                && host.ends_with(&self.host)
                && host.as_bytes()[host.len() - self.host.len() - 1] == b'.'
        } else {
            host == self.host
        }
    }
}

/// Whether `ip` is an address a plugin may reach by name: not loopback,
/// private, link-local, shared (CGNAT), multicast, documentation or
/// unspecified.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s & 0xfe00) == 0xfc00 // unique local
        || (s & 0xffc0) == 0xfe80 // link local
        || s == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || s == 0x0064) // NAT64 well-known prefix (embeds IPv4)
}

/// The `wasi:http` hooks of one plugin store: the allow-list check, the
/// address check and the deadline.
pub struct HttpGuard {
    info: Arc<PluginInfo>,
}

impl HttpGuard {
    /// The guard for a plugin: its `grants.http` allow-list, each request
    /// bounded by its call deadline.
    pub fn new(info: Arc<PluginInfo>) -> Self {
        HttpGuard { info }
    }

    /// The matching entry for `uri`, or why there is none.
    fn admit(&self, uri: &http::Uri) -> Result<(String, u16, &HostPattern), HttpError> {
        let host = uri.host().ok_or(HttpError::HttpRequestUriInvalid)?;
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("http") => 80,
            _ => 443,
        });
        match self.info.grants.http.iter().find(|p| p.matches(host, port)) {
            Some(p) => Ok((host.to_string(), port, p)),
            None => {
                tracing::warn!(plugin = %self.info.name, %host, port, "outgoing HTTP refused: not in the plugin's allow-list");
                Err(HttpError::HttpRequestDenied)
            }
        }
    }
}

type SendFuture = Box<dyn Future<Output = Result<super::http_send::Sent, HttpError>> + Send>;

/// The addresses a request to `host:port` may connect to: the literal
/// address itself when the URI names one, otherwise every address the name
/// resolves to (looked up once, here), all of which must be public unless
/// `listed_literal` (the policy names this very address). The connection
/// then goes to one of exactly these addresses.
pub async fn checked_addrs(
    host: &str,
    port: u16,
    listed_literal: bool,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, HttpError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| HttpError::DnsTimeout)?
            .map_err(|_| HttpError::DestinationNotFound)?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(HttpError::DestinationNotFound);
    }
    if !listed_literal && let Some(a) = addrs.iter().find(|a| !is_public(a.ip())) {
        tracing::warn!(%host, addr = %a.ip(), "outgoing HTTP refused before connecting: the destination is a non-public address");
        return Err(HttpError::DestinationIpProhibited);
    }
    Ok(addrs)
}

impl WasiHttpHooks for HttpGuard {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        drop(fut);
        let admitted = self
            .admit(request.uri())
            .map(|(h, port, p)| (h, port, p.literal.is_some()));
        let tls = request.uri().scheme_str() != Some("http");
        let info = self.info.clone();
        Box::new(async move {
            let (host, port, literal) = admitted?;
            let deadline = info.deadline;
            let until = tokio::time::Instant::now() + deadline;
            let addrs = checked_addrs(&host, port, literal, deadline)
                .await
                .inspect_err(|_| {
                    tracing::warn!(plugin = %info.name, %host, port, "outgoing HTTP refused");
                })?;
            let o = options.unwrap_or_default();
            let step_timeout = [
                o.connect_timeout,
                o.first_byte_timeout,
                o.between_bytes_timeout,
            ]
            .into_iter()
            .flatten()
            .fold(deadline, Duration::min);
            let target = super::http_send::Target {
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                addrs,
                tls,
                step_timeout,
                deadline: until,
                max_body: info.max_http_response_bytes,
            };
            super::http_send::send(request, target).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> HostPattern {
        HostPattern::try_from(s.to_string()).unwrap()
    }

    #[test]
    fn patterns_parse_and_match() {
        assert!(pat("api.example.com").matches("API.example.com", 443));
        assert!(!pat("api.example.com").matches("evil.api.example.com", 443));
        assert!(pat("*.example.com").matches("a.b.example.com", 80));
        assert!(!pat("*.example.com").matches("example.com", 80));
        assert!(!pat("*.example.com").matches("badexample.com", 80));
        assert!(pat("example.com:8443").matches("example.com", 8443));
        assert!(!pat("example.com:8443").matches("example.com", 443));
        assert!(pat("127.0.0.1:9000").matches("127.0.0.1", 9000));
        assert!(pat("[::1]:9000").matches("[::1]", 9000));
        assert!(pat("::1").matches("::1", 1));
        for bad in [
            "http://x.com",
            "x.com/path",
            "",
            "*.1.2.3.4",
            "a..b",
            "x.com:99999",
            "a b",
        ] {
            assert!(HostPattern::try_from(bad.to_string()).is_err(), "{bad}");
        }
        assert_eq!(String::from(pat("*.Example.com:81")), "*.example.com:81");
    }

    fn block<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn only_checked_addresses_are_returned() {
        let t = Duration::from_secs(5);
        // A name resolving to loopback is refused unless the address is listed.
        let e = block(checked_addrs("localhost", 80, false, t)).unwrap_err();
        assert!(matches!(e, HttpError::DestinationIpProhibited), "{e:?}");
        for ip in ["10.0.0.1", "169.254.169.254", "[::1]", "100.64.0.1"] {
            let e = block(checked_addrs(ip, 80, false, t)).unwrap_err();
            assert!(
                matches!(e, HttpError::DestinationIpProhibited),
                "{ip}: {e:?}"
            );
        }
        // A listed literal address is exactly what will be connected to.
        let a = block(checked_addrs("127.0.0.1", 9000, true, t)).unwrap();
        assert_eq!(a, vec!["127.0.0.1:9000".parse::<SocketAddr>().unwrap()]);
        let a = block(checked_addrs("[::1]", 9000, true, t)).unwrap();
        assert_eq!(a, vec!["[::1]:9000".parse::<SocketAddr>().unwrap()]);
        // A public literal needs no lookup and passes.
        let a = block(checked_addrs("1.1.1.1", 443, false, t)).unwrap();
        assert_eq!(a, vec!["1.1.1.1:443".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn non_public_addresses_are_recognised() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!is_public(a.parse().unwrap()), "{a}");
        }
        for a in ["1.1.1.1", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(a.parse().unwrap()), "{a}");
        }
    }
}
