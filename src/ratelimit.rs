//! Rate-limit settings and buckets, shared by the HTTP layer (per route class) and the accounts (per account):
//! token buckets (governor's GCRA) keyed per client, with the number of keys bounded.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::str::FromStr;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// Requests per minute of each class (a burst of the same size, refilled evenly). `MARKETFLOW_RATE_LIMITS`
/// (`login=30,account=10,...`) overrides them: load tests and deployments behind a trusted gateway raise them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Log-ins per client address.
    pub login: u32,
    /// Log-ins per account (e-mail address), whatever the address.
    pub account: u32,
    /// Registrations per client address.
    pub register: u32,
    /// Console log-ins per client address.
    pub console_login: u32,
    /// Requests per bearer token.
    pub token: u32,
    /// Other requests per client address.
    pub address: u32,
    /// Connections open at once per client address (not per minute); trusted proxies are not capped.
    pub connections: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self { login: 30, account: 10, register: 30, console_login: 10, token: 6_000, address: 1_200, connections: 256 }
    }
}

impl FromStr for RateLimits {
    type Err = String;
    /// `class=per_minute,...`; unnamed classes keep their defaults.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut l = RateLimits::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, n) = part.split_once('=').ok_or_else(|| format!("`{part}` is not class=per_minute"))?;
            let n: u32 =
                n.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| format!("`{part}`: a positive count"))?;
            let slot = match name.trim() {
                "login" => &mut l.login,
                "account" => &mut l.account,
                "register" => &mut l.register,
                "console_login" => &mut l.console_login,
                "token" => &mut l.token,
                "address" => &mut l.address,
                "connections" => &mut l.connections,
                other => {
                    return Err(format!(
                        "unknown class `{other}` (login, account, register, console_login, token, address, connections)"
                    ))
                }
            };
            *slot = n;
        }
        Ok(l)
    }
}

/// Addresses and networks whose `X-Forwarded-For` names the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl FromStr for TrustedProxies {
    type Err = String;
    /// `10.0.0.1, 10.1.0.0/16, ::1`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (ip, len) = part.split_once('/').map_or((part, None), |(a, l)| (a, Some(l)));
            let given: IpAddr = ip.parse().map_err(|_| format!("`{part}` is not an address or a network"))?;
            let max = if given.is_ipv4() { 32 } else { 128 };
            let mut len = match len {
                None => max,
                Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| format!("`{part}`: bad prefix"))?,
            };
            // An IPv4-mapped network is matched as the IPv4 network it maps.
            let ip = canonical(given);
            if given.is_ipv6() && ip.is_ipv4() {
                len = len.checked_sub(96).ok_or_else(|| format!("`{part}`: an IPv4-mapped prefix is at least 96"))?;
            }
            nets.push((ip, len));
        }
        Ok(Self(nets))
    }
}

impl TrustedProxies {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|(net, len)| in_network(ip, canonical(*net), *len))
    }

    /// The client of a request that came from `peer` with these `X-Forwarded-For` values: the peer, unless it is
    /// trusted; then the nearest untrusted address of the header (right to left), or the last trusted one.
    pub fn client(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        if !self.contains(peer) {
            return canonical(peer);
        }
        let Some(header) = forwarded_for else { return canonical(peer) };
        // Right to left: the hops our proxies added come last. The first hop that is not a trusted proxy is the
        // client; one that does not parse ends the walk at the last trusted hop (never a value further left,
        // which the client wrote).
        let mut last = canonical(peer);
        for hop in header.split(',').map(str::trim).rev() {
            let Ok(ip) = hop.parse::<IpAddr>() else { return last };
            if !self.contains(ip) {
                return canonical(ip);
            }
            last = canonical(ip);
        }
        last
    }
}

/// IPv4 addresses mapped into IPv6 count as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The key of a client address in the buckets and the connection count: an IPv6 client is its /64 (one host
/// gets a whole /64 to pick addresses from), an IPv4 client its address.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    let (a, b, bits) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32u32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128u32),
        _ => return false,
    };
    if len == 0 {
        return true;
    }
    let Some(shift) = bits.checked_sub(u32::from(len)) else { return false };
    (a >> shift) == (b >> shift)
}

/// Keys kept per bucket before the idle ones are dropped: a flood of addresses costs bounded memory.
const MAX_KEYS: usize = 100_000;

/// One bucket per key, with the number of keys bounded.
pub struct Bucket<K: std::hash::Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    clock: DefaultClock,
}

impl<K: std::hash::Hash + Eq + Clone> Bucket<K> {
    pub fn new(per_minute: u32) -> Self {
        let n = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_minute(n).allow_burst(n)),
            clock: DefaultClock::default(),
        }
    }

    /// `Ok`, or the whole seconds to wait (at least one).
    pub fn check(&self, key: &K) -> Result<(), u32> {
        if self.limiter.len() > MAX_KEYS {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            u32::try_from(wait.as_secs() + 1).unwrap_or(u32::MAX)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let t: TrustedProxies = "10.0.0.0/8, ::1".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(t.client(ip("203.0.113.9"), Some("198.51.100.1")), ip("203.0.113.9"));
        // Through a trusted proxy: the nearest untrusted hop.
        assert_eq!(t.client(ip("10.1.2.3"), Some("198.51.100.1, 203.0.113.7, 10.9.9.9")), ip("203.0.113.7"));
        assert_eq!(t.client(ip("::1"), Some("198.51.100.1")), ip("198.51.100.1"));
        assert_eq!(t.client(ip("10.1.2.3"), Some("garbage")), ip("10.1.2.3"));
        assert_eq!(t.client(ip("10.1.2.3"), None), ip("10.1.2.3"));
        assert_eq!(t.client(ip("::ffff:10.1.2.3"), Some("198.51.100.1")), ip("198.51.100.1"));
        // A hop that does not parse ends the walk: what the client wrote to its left is not believed.
        assert_eq!(t.client(ip("10.1.2.3"), Some("198.51.100.1, 203.0.113.7:443")), ip("10.1.2.3"));
        assert_eq!(t.client(ip("10.1.2.3"), Some("198.51.100.1, 10.9.9.9, junk, 10.8.8.8")), ip("10.8.8.8"));
        let mapped: TrustedProxies = "::ffff:10.0.0.0/104".parse().unwrap();
        assert!(mapped.contains(ip("10.1.2.3")) && !mapped.contains(ip("11.1.2.3")));
        assert!("::ffff:10.0.0.0/95".parse::<TrustedProxies>().is_err());
        assert_eq!(client_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("192.0.2.9")), ip("192.0.2.9"));
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("nope".parse::<TrustedProxies>().is_err());
    }

    #[test]
    fn connections_are_counted_per_address_and_released() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let table = Connections::new(2, "10.0.0.1".parse().unwrap());
        let a = table.accept(ip("192.0.2.1"));
        let b = table.accept(ip("192.0.2.1"));
        let c = table.accept(ip("192.0.2.1"));
        assert!(!a.over && !b.over && c.over);
        assert!(!table.accept(ip("192.0.2.2")).over, "per address");
        let proxied: Vec<_> = (0..10).map(|_| table.accept(ip("10.0.0.1"))).collect();
        assert!(proxied.iter().all(|s| !s.over), "trusted proxies are not capped");
        drop((b, c));
        assert!(!table.accept(ip("192.0.2.1")).over, "released on close");
        drop(a);
        assert!(table.open.lock().unwrap().is_empty());
    }

    #[test]
    fn limits_parse_by_class_and_a_bucket_refuses_past_its_burst() {
        let l: RateLimits = "login=5, token=100".parse().unwrap();
        assert_eq!((l.login, l.token, l.account), (5, 100, RateLimits::default().account));
        assert!("login=0".parse::<RateLimits>().is_err());
        assert!("logins=3".parse::<RateLimits>().is_err());
        let b = Bucket::<u8>::new(3);
        assert!((0..3).all(|_| b.check(&1).is_ok()));
        let wait = b.check(&1).unwrap_err();
        assert!((1..=21).contains(&wait), "{wait}");
        assert!(b.check(&2).is_ok(), "buckets are per key");
    }
}

/// Connections open per client address, counted as they are accepted and released as they close.
#[derive(Debug)]
pub struct Connections {
    /// Open connections per address; an address leaves the map with its last connection.
    open: std::sync::Mutex<std::collections::HashMap<IpAddr, u32>>,
    /// At most this many per address.
    max: u32,
    /// Proxies carry many clients' connections: not capped.
    trusted: TrustedProxies,
}

/// One accepted connection, kept in the connection's data: released when the connection closes.
#[derive(Debug)]
pub struct ConnectionSlot {
    addr: Option<IpAddr>,
    /// The address had `max` connections open already: every request on this one is refused.
    pub over: bool,
    table: std::sync::Arc<Connections>,
}

impl Connections {
    pub fn new(max: u32, trusted: TrustedProxies) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self { open: Default::default(), max, trusted })
    }

    /// Counts a connection accepted from `peer`.
    pub fn accept(self: &std::sync::Arc<Self>, peer: IpAddr) -> ConnectionSlot {
        if self.trusted.contains(peer) {
            return ConnectionSlot { addr: None, over: false, table: self.clone() };
        }
        let Ok(mut open) = self.open.lock() else {
            return ConnectionSlot { addr: None, over: false, table: self.clone() };
        };
        let key = client_key(peer);
        let n = open.entry(key).or_default();
        *n += 1;
        ConnectionSlot { addr: Some(key), over: *n > self.max, table: self.clone() }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let Some(addr) = self.addr else { return };
        if let Ok(mut open) = self.table.open.lock() {
            if let Some(n) = open.get_mut(&addr) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&addr);
                }
            }
        }
    }
}
