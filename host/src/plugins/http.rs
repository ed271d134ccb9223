//! Outgoing HTTP for plugins (`wasi:http/outgoing-handler`), through the
//! host's allow-list. A plugin with no `grants.http` entries gets
//! `HTTP-request-denied` for every request; one with entries may reach
//! exactly those hosts (and ports). A host name must resolve to public
//! addresses only: loopback, private, link-local (cloud metadata) and other
//! non-routable addresses are refused unless the policy lists that address
//! literally. Every request is bounded by the plugin's call deadline.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
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

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

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
        let (deadline, plugin) = (self.info.deadline, self.info.name.clone());
        Box::new(async move {
            let (host, port, literal) = admitted?;
            if !literal {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let addrs: Vec<SocketAddr> =
                    tokio::time::timeout(deadline, tokio::net::lookup_host((host, port)))
                        .await
                        .map_err(|_| HttpError::DnsTimeout)?
                        .map_err(|_| HttpError::DestinationNotFound)?
                        .collect();
                if let Some(a) = addrs.iter().find(|a| !is_public(a.ip())) {
                    tracing::warn!(%plugin, %host, addr = %a.ip(), "outgoing HTTP refused: the name resolves to a non-public address");
                    return Err(HttpError::DestinationIpProhibited);
                }
            }
            let cap = |t: Option<Duration>| Some(t.map_or(deadline, |t| t.min(deadline)));
            let o = options.unwrap_or_default();
            let options = RequestOptions {
                connect_timeout: cap(o.connect_timeout),
                first_byte_timeout: cap(o.first_byte_timeout),
                between_bytes_timeout: cap(o.between_bytes_timeout),
            };
            let sent = tokio::time::timeout(
                deadline,
                wasmtime_wasi_http::default_send_request(request, Some(options)),
            )
            .await
            .map_err(|_| HttpError::ConnectionTimeout)??;
            let (res, io) = sent;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            ))
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
