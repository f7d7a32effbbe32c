#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::ConnectInfo;
use http::{HeaderMap, HeaderValue};

use super::*;

const SEC: Duration = Duration::from_secs(1);

fn rate(per_second: f64, burst: u32) -> Rate {
    Rate {
        per_second,
        burst: f64::from(burst),
    }
}

#[test]
fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
    let map = BucketMap::new(64);
    let r = rate(2.0, 3);
    let t0 = Duration::from_secs(100);
    for _ in 0..3 {
        assert_eq!(map.take(&"a", r, t0), Ok(()));
    }
    // Empty: the next token comes in 1/2 s.
    assert_eq!(map.take(&"a", r, t0), Err(Duration::from_millis(500)));
    // Another key is not affected.
    assert_eq!(map.take(&"b", r, t0), Ok(()));
    // 250 ms later half a token is back: 250 ms to wait.
    let t1 = t0 + Duration::from_millis(250);
    assert_eq!(map.take(&"a", r, t1), Err(Duration::from_millis(250)));
    let t2 = t0 + Duration::from_millis(500);
    assert_eq!(map.take(&"a", r, t2), Ok(()));
    assert!(map.take(&"a", r, t2).is_err());
    // Long idle: refilled to the burst, not beyond.
    let t3 = t2 + 100 * SEC;
    for _ in 0..3 {
        assert_eq!(map.take(&"a", r, t3), Ok(()));
    }
    assert!(map.take(&"a", r, t3).is_err());
}

#[test]
fn peek_never_takes_nor_makes_a_bucket() {
    let map = BucketMap::new(64);
    let r = rate(1.0, 1);
    for _ in 0..10 {
        assert_eq!(map.peek(&"a", r, SEC), Ok(()));
    }
    assert!(map.is_empty());
    assert_eq!(map.take(&"a", r, SEC), Ok(()));
    assert_eq!(map.peek(&"a", r, SEC), Err(SEC));
    assert_eq!(map.peek(&"a", r, 2 * SEC), Ok(()));
}

#[test]
fn a_slow_rate_waits_whole_periods() {
    let map = BucketMap::new(64);
    // One request per 10 s.
    let r = rate(0.1, 1);
    assert_eq!(map.take(&1u8, r, SEC), Ok(()));
    let wait = map.take(&1u8, r, SEC).unwrap_err();
    assert_eq!(retry_after_secs(wait), 10);
    let wait = map
        .take(&1u8, r, SEC + Duration::from_millis(9_001))
        .unwrap_err();
    // 0.999 s left rounds up to 1.
    assert_eq!(retry_after_secs(wait), 1);
    assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
    assert_eq!(retry_after_secs(Duration::from_millis(2_000)), 2);
    assert_eq!(retry_after_secs(Duration::from_millis(2_001)), 3);
}

#[test]
fn rotating_keys_cannot_grow_a_map_past_its_bound() {
    let max = 1024;
    let map = BucketMap::new(max);
    // An attacker with a fresh key per request, each bucket left refilling (1 per 100 s).
    let r = rate(0.01, 5);
    let t = Duration::from_secs(10);
    for key in 0..50_000u32 {
        assert_eq!(map.take(&key, r, t), Ok(()));
        assert!(map.len() <= max, "{} buckets after {key}", map.len());
    }
    // The attacker's keys are all refilling, so eviction made room by the closest to full;
    // a key seen again after eviction starts full (its partly spent burst is handed back),
    // which is what the bound costs.
    assert!(map.len() > max / 2);
}

#[test]
fn eviction_drops_full_buckets_first_then_the_closest_to_full() {
    use super::bucket::{Bucket, make_room};
    use std::collections::HashMap;
    let now = 1_000;
    // Four buckets full again (full_at ≤ now) and four still refilling.
    let mut shard: HashMap<u32, Bucket> = (0..8u32)
        .map(|k| {
            (
                k,
                Bucket::refilling_until(if k < 4 { now - 10 } else { now + u64::from(k) }),
            )
        })
        .collect();
    make_room(&mut shard, 8, now);
    let mut kept: Vec<u32> = shard.keys().copied().collect();
    kept.sort_unstable();
    assert_eq!(kept, vec![4, 5, 6, 7]);
    // All refilling: an eighth goes, the ones full soonest.
    let mut shard: HashMap<u32, Bucket> = (0..16u32)
        .map(|k| (k, Bucket::refilling_until(now + 100 - u64::from(k))))
        .collect();
    make_room(&mut shard, 16, now);
    let mut kept: Vec<u32> = shard.keys().copied().collect();
    kept.sort_unstable();
    assert_eq!(
        kept,
        (0..14).collect::<Vec<_>>(),
        "keys 14 and 15 are full soonest"
    );
}

fn ext(peer: &str) -> http::Extensions {
    let mut e = http::Extensions::new();
    e.insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
    e
}

fn xff(values: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
    }
    h
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let trusted = vec![
        Cidr::parse("10.0.0.0/8").unwrap(),
        Cidr::parse("::1").unwrap(),
    ];
    let forged = xff(&["1.2.3.4"]);
    // Default (no trusted proxy): the socket's address, whatever the header says.
    assert_eq!(
        client_ip(&ext("198.51.100.7:5000"), &forged, &[]),
        ip("198.51.100.7")
    );
    // From an untrusted peer the header is ignored even with proxies configured.
    assert_eq!(
        client_ip(&ext("198.51.100.7:5000"), &forged, &trusted),
        ip("198.51.100.7")
    );
    // From a trusted proxy: the rightmost entry not appended by a trusted proxy. The client
    // wrote "6.6.6.6" itself; our proxies appended 203.0.113.9 and 10.1.1.1.
    let chain = xff(&["6.6.6.6, 203.0.113.9", "10.1.1.1"]);
    assert_eq!(
        client_ip(&ext("10.0.0.2:443"), &chain, &trusted),
        ip("203.0.113.9")
    );
    assert_eq!(
        client_ip(&ext("[::1]:443"), &chain, &trusted),
        ip("203.0.113.9")
    );
    // A trusted proxy without the header: the proxy itself.
    assert_eq!(
        client_ip(&ext("10.0.0.2:443"), &HeaderMap::new(), &trusted),
        ip("10.0.0.2")
    );
    // Garbage right of the client: the last trusted hop, not something further left.
    let garbage = xff(&["6.6.6.6, nonsense"]);
    assert_eq!(
        client_ip(&ext("10.0.0.2:443"), &garbage, &trusted),
        ip("10.0.0.2")
    );
    // Ports and brackets are read; a mapped IPv4 peer counts as IPv4.
    let ported = xff(&["[2001:db8::1]:1234"]);
    assert_eq!(
        client_ip(&ext("[::ffff:10.0.0.3]:443"), &ported, &trusted),
        ip("2001:db8::1")
    );
    // No connection info: one shared key.
    assert_eq!(
        client_ip(&http::Extensions::new(), &forged, &trusted),
        ip("::")
    );
}

#[test]
fn cidrs_parse_and_match() {
    let net = Cidr::parse("192.168.0.0/16").unwrap();
    assert!(net.contains(ip("192.168.200.1")));
    assert!(!net.contains(ip("192.169.0.1")));
    assert!(!net.contains(ip("::1")));
    assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
    assert!(
        Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains(ip("2001:db8:ffff::1"))
    );
    for bad in ["10.0.0.0/33", "::/129", "example.com", "10.0.0.0/x", ""] {
        assert!(Cidr::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn ipv6_clients_are_keyed_by_their_64() {
    assert_eq!(ip_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
    assert_eq!(
        ip_key(ip("2001:db8:1:2:ffff::9")),
        ip_key(ip("2001:db8:1:2::77"))
    );
    assert_ne!(ip_key(ip("2001:db8:1:3::1")), ip_key(ip("2001:db8:1:2::1")));
    assert_eq!(ip_key(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
    assert_eq!(ip_key(ip("1.2.3.4")), ip("1.2.3.4"));
}

#[test]
fn knobs_are_checked() {
    let ok = RateKnobs {
        rate: 0.5,
        burst: 1,
    };
    assert!(ok.check("x").is_ok());
    for bad in [
        RateKnobs {
            rate: 0.0,
            burst: 1,
        },
        RateKnobs {
            rate: -1.0,
            burst: 1,
        },
        RateKnobs {
            rate: f64::NAN,
            burst: 1,
        },
        RateKnobs {
            rate: 1.0,
            burst: 0,
        },
    ] {
        assert!(bad.check("x").is_err(), "{bad:?}");
    }
    let free = FreeTierKnobs {
        requests: 3,
        period_secs: 60,
    };
    assert!(check_route("/a/", None, Some(free), true).is_ok());
    assert!(check_route("/a/", None, Some(free), false).is_err());
    let none = FreeTierKnobs {
        requests: 0,
        period_secs: 60,
    };
    assert!(check_route("/a/", None, Some(none), true).is_err());
    let knobs = LimitKnobs {
        trusted_proxies: vec!["10.0.0.0/40".into()],
        ..LimitKnobs::default()
    };
    assert!(knobs.check().is_err());
}
