//! Which address a request comes from: the socket's peer, or, when the peer is one of the
//! configured reverse proxies, the client its `X-Forwarded-For` names.
//!
//! `X-Forwarded-For` is a list each proxy appends its peer to, so only the entries our own
//! proxies appended can be believed: the list is read from the right, skipping trusted
//! proxies, and the first address that is not one of them is the client. Anything left of it
//! was written by the client and is ignored. From a peer that is not a trusted proxy the
//! header is ignored entirely (default: no proxy is trusted).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::extract::ConnectInfo;
use http::HeaderMap;

/// One `address[/prefix]` of `trusted_proxies`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1`, `192.168.1.7` (a single address is a full-length prefix).
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("trusted proxy {s:?} is not an address or address/prefix");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { net, prefix })
    }

    /// Whether `ip` is inside this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u128::from(u32::from(n)), self.prefix, 32)
                    == masked(u128::from(u32::from(a)), self.prefix, 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                masked(u128::from(n), self.prefix, 128) == masked(u128::from(a), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn masked(bits: u128, prefix: u8, width: u32) -> u128 {
    let host_bits = width - u32::from(prefix);
    if host_bits >= 128 {
        0
    } else {
        bits >> host_bits
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack socket reports) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: the peer, or the rightmost `X-Forwarded-For` entry not appended by
/// a trusted proxy when the peer is one. A request without a known peer (a router embedded
/// without connection info) is the unspecified address: all such requests share a bucket.
pub fn client_ip(extensions: &http::Extensions, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |c| canonical(c.0.ip()));
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    // Several header lines are one list, in order.
    let entries = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for entry in entries.iter().rev() {
        let Some(ip) = parse_entry(entry) else {
            // An entry we cannot read: whatever is left of it is not vouched for; the last
            // trusted hop is the best we know.
            return client;
        };
        client = ip;
        if !is_trusted(ip) {
            return ip;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly `[v6]:port` or `v4:port`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    e.parse::<SocketAddr>().ok().map(|s| canonical(s.ip()))
}

/// The bucket key of an address: IPv4 as is, IPv6 by its /64 (one subscriber usually holds
/// a whole /64; keyed by full address, rotating inside it would mint fresh buckets at will).
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}
