//! Per-client connection limits shared by every worker: how many connections one client may hold at once, and how many it may open per minute.
//!
//! Modelled on Postfix's anvil(8), which smtpd asks at every connection:
//! `smtpd_client_connection_count_limit` (default 50) bounds the connections one client holds
//! at once, `smtpd_client_connection_rate_limit` (default off) the connection attempts it makes
//! per `anvil_rate_time_unit` (60 s). anvil is a separate process reached over a socket; here the
//! table lives in memory, one `Arc<ClientTable>` for all workers. It is touched only at accept and
//! at close, never per command, so a lock per shard is cheap enough and needs no lock-free map.
//!
//! - **Client.** An IPv4 address; an IPv6 prefix (default /64), since one host usually holds a
//!   whole /64 and per-address counting would give it 2^64 clients. An IPv4-mapped IPv6 address
//!   (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2, what a dual-stack socket reports for an IPv4 peer) is
//!   that IPv4 address.
//! - **Rate.** A fixed window, as anvil counts: the first attempt after a window has run its
//!   minute starts a new one, and every attempt in it counts, refused ones too (anvil counts the
//!   `connect` before smtpd compares the count with the limit). A client hammering at a limit is
//!   therefore also held to the rate; its window still ends a minute after it began.
//! - **Memory.** At most `max_tracked` clients, split evenly over the shards. A client with no
//!   connection left is forgotten at its release when no rate is counted; otherwise it is kept
//!   for its window (anvil keeps it a time unit too), and a full shard evicts the idle client
//!   whose window began first, an expired one if there is any. A client with live connections
//!   is never evicted: each of its connections is owed a release.
//! - **Full.** A shard full of clients that all hold connections admits the newcomer untracked,
//!   and counts it ([`ClientTable::admitted_untracked`]): refusing would let a flood from many
//!   addresses lock out every other client, which is what these limits are for. The global
//!   `max_connections` still bounds everything.
//!
//! Exemptions (relay networks) are the caller's decision: it does not ask the table.

use std::collections::hash_map::{Entry as Slot, HashMap, RandomState};
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// anvil's `anvil_rate_time_unit` default: the rate is counted per minute.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Independent locks, a power of two so that a mask picks one from the key's hash. With 64, two
/// of a few dozen workers accepting at the same instant rarely meet on one lock.
const SHARDS: usize = 64;

/// The smallest `max_tracked`: one client per shard.
pub const MIN_TRACKED: usize = SHARDS;

/// The limits, as the configuration gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Connections one client may hold at once; 0 = no limit. Postfix's
    /// `smtpd_client_connection_count_limit`, default 50.
    pub max_connections: u32,
    /// Connection attempts one client may make per minute; 0 = no limit. Postfix's
    /// `smtpd_client_connection_rate_limit`, default off.
    pub rate_per_minute: u32,
    /// IPv6 clients are counted per prefix of this length, 32..=128. Default 64: RFC 4291 §2.5.1
    /// gives unicast addresses 64-bit interface identifiers, so a /64 is one link, usually one host.
    pub ipv6_prefix: u8,
    /// Clients tracked at once over all shards, at least [`MIN_TRACKED`]. Each costs about 64
    /// octets, 112 with a rate (its place in the eviction order), plus the maps' spare room.
    /// Default 65536: six times the server's default `max_connections`, so connected clients
    /// fill no shard short of a flood.
    pub max_tracked: usize,
}

impl Default for ClientLimits {
    fn default() -> ClientLimits {
        ClientLimits {
            max_connections: 50,
            rate_per_minute: 0,
            ipv6_prefix: 64,
            max_tracked: 65536,
        }
    }
}

/// Why a connection was refused. Postfix answers both with `421 4.7.0 Error: too many
/// connections from <address>` and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client already holds `max_connections` connections.
    TooManyConnections,
    /// The client has made more than `rate_per_minute` attempts in its current minute.
    RateExceeded,
}

/// Proof that a connection was admitted, handed back to [`ClientTable::release`] at its close.
///
/// Neither `Copy` nor `Clone`: `release` takes it by value, so a connection cannot be released
/// twice. Dropping it instead leaks one of the client's connections until the process ends.
#[derive(Debug)]
#[must_use = "an admission must be released at close, or the client keeps the connection forever"]
pub struct Admitted {
    /// The shard and key it was counted under; `None` when it was not counted (no limits, or a
    /// shard full of connected clients).
    counted: Option<(u8, Key)>,
}

/// The connection counts of every client, shared by all workers.
pub struct ClientTable {
    /// The limits at creation; the two counts below replace its `max_connections` and
    /// `rate_per_minute`, which a reload may change ([`ClientTable::set_limits`]).
    limits: ClientLimits,
    max_connections: AtomicU32,
    rate_per_minute: AtomicU32,
    /// Keeps an IPv6 address's first `ipv6_prefix` bits.
    ipv6_mask: u128,
    /// Clients one shard may hold: `max_tracked / SHARDS`, so all together hold no more.
    per_shard: usize,
    /// Picks the shard. Keyed at random per process, as each shard's map is, so a client cannot
    /// choose addresses that all land in one shard (or one bucket).
    hasher: RandomState,
    shards: Box<[Shard]>,
    /// Connections admitted uncounted because their shard was full of connected clients.
    untracked: AtomicU64,
}

/// One lock and its clients, on cache lines of its own: workers locking neighbouring shards do
/// not contend for a line (128 octets, as x86 prefetches lines in pairs).
#[repr(align(128))]
struct Shard(Mutex<Clients>);

/// The clients of one shard.
#[derive(Default)]
struct Clients {
    by_key: HashMap<Key, Client>,
    /// With a rate only (without one, every client tracked is connected and none can be evicted):
    /// each client once, with the start of its window when it was queued, roughly oldest first.
    /// The eviction order, O(1) per newcomer: a scan of a full shard (1024 clients) for its
    /// oldest idle one measured 37 µs per newcomer, against 1.2 µs with this queue.
    by_age: VecDeque<(Key, Instant)>,
}

/// A client: an IPv4 address, or an IPv6 address cut to the configured prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    V4(u32),
    V6(u128),
}

/// What the table knows of one client.
struct Client {
    /// Connections admitted and not yet released.
    live: u32,
    /// When the current rate window began, and the attempts counted in it.
    window_start: Instant,
    attempts: u32,
}

impl Client {
    /// A client's first attempt, which is within both limits (each at least 1 when on).
    fn first(now: Instant) -> Client {
        Client {
            live: 1,
            window_start: now,
            attempts: 1,
        }
    }

    /// Counts an attempt at `now` and admits it if the limits allow.
    fn attempt(&mut self, limits: &ClientLimits, now: Instant) -> Result<(), Refusal> {
        // Saturating: workers cache their clocks per turn, so one may pass a `now` a little
        // before the window another has just started; that attempt falls in the window.
        if now.saturating_duration_since(self.window_start) >= RATE_WINDOW {
            self.window_start = now;
            self.attempts = 0;
        }
        self.attempts = self.attempts.saturating_add(1);
        if limits.max_connections != 0 && self.live >= limits.max_connections {
            return Err(Refusal::TooManyConnections);
        }
        if limits.rate_per_minute != 0 && self.attempts > limits.rate_per_minute {
            return Err(Refusal::RateExceeded);
        }
        self.live += 1;
        Ok(())
    }
}

impl Clients {
    /// Evicts, from a full shard, the idle client whose window began first: it is the next to
    /// expire (or has), so forgetting it loses the least of the rate. A connected client, or one
    /// whose window has started again since it was queued, goes to the back with its window's
    /// start instead; after one round without an idle client, there is none.
    ///
    /// So a newcomer costs O(1), unless the clients at the front hold connections; a whole round
    /// needs a shard full of connected clients, which `max_tracked` well above the server's
    /// `max_connections` rules out.
    fn evict(&mut self) -> bool {
        for _ in 0..self.by_age.len() {
            let Some((key, queued)) = self.by_age.pop_front() else {
                break;
            };
            let client = &self.by_key[&key];
            if client.live == 0 && client.window_start == queued {
                self.by_key.remove(&key);
                return true;
            }
            self.by_age.push_back((key, client.window_start));
        }
        false
    }
}

impl std::fmt::Debug for ClientTable {
    /// The limits and the size, not the clients (which would mean taking every lock).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTable")
            .field("limits", &self.current())
            .field("tracked", &self.tracked())
            .finish()
    }
}

impl ClientTable {
    /// # Panics
    ///
    /// If `ipv6_prefix` is outside 32..=128 or `max_tracked` is below [`MIN_TRACKED`]; the
    /// configuration checks both first.
    pub fn new(limits: ClientLimits) -> ClientTable {
        assert!(
            (32..=128).contains(&limits.ipv6_prefix),
            "ipv6_prefix {} is outside 32..=128",
            limits.ipv6_prefix
        );
        assert!(
            limits.max_tracked >= MIN_TRACKED,
            "max_tracked {} is below {MIN_TRACKED}",
            limits.max_tracked
        );
        ClientTable {
            limits,
            max_connections: AtomicU32::new(limits.max_connections),
            rate_per_minute: AtomicU32::new(limits.rate_per_minute),
            ipv6_mask: u128::MAX << (128 - u32::from(limits.ipv6_prefix)),
            per_shard: limits.max_tracked / SHARDS,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Shard(Mutex::default())).collect(),
            untracked: AtomicU64::new(0),
        }
    }

    /// At accept: counts the connection of `ip` at `now` if the limits allow it. The caller
    /// passes its cached clock (the table reads none, so tests control time).
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<Admitted, Refusal> {
        let limits = &self.current();
        if limits.max_connections == 0 && limits.rate_per_minute == 0 {
            // Nothing to enforce, so nothing to count or lock.
            return Ok(Admitted { counted: None });
        }
        let key = self.key(ip);
        let shard = self.hasher.hash_one(key) as usize & (SHARDS - 1);
        let mut guard = self.lock(shard);
        let clients = &mut *guard;
        let full = clients.by_key.len() >= self.per_shard;
        match clients.by_key.entry(key) {
            Slot::Occupied(mut slot) => slot.get_mut().attempt(limits, now)?,
            Slot::Vacant(slot) if !full => {
                slot.insert(Client::first(now));
                self.queue(clients, key, now);
            }
            Slot::Vacant(_) => {
                if limits.rate_per_minute == 0 || !clients.evict() {
                    drop(guard);
                    self.untracked.fetch_add(1, Ordering::Relaxed);
                    return Ok(Admitted { counted: None });
                }
                clients.by_key.insert(key, Client::first(now));
                self.queue(clients, key, now);
            }
        }
        Ok(Admitted {
            counted: Some((shard as u8, key)),
        })
    }

    /// At close, from any thread: gives the connection's place back.
    pub fn release(&self, admitted: Admitted) {
        let Some((shard, key)) = admitted.counted else {
            return;
        };
        let mut clients = self.lock(usize::from(shard));
        let Slot::Occupied(mut slot) = clients.by_key.entry(key) else {
            panic!("released a client that is not tracked: one with live connections is never evicted");
        };
        let client = slot.get_mut();
        assert!(client.live > 0, "released more connections than were admitted");
        client.live -= 1;
        // Without a rate to remember, a client with no connection is worth nothing: dropping it
        // now keeps the table to the clients connected.
        if client.live == 0 && self.rate_per_minute.load(Ordering::Relaxed) == 0 {
            slot.remove();
        }
    }

    /// The limits in force now.
    pub fn current(&self) -> ClientLimits {
        ClientLimits {
            max_connections: self.max_connections.load(Ordering::Relaxed),
            rate_per_minute: self.rate_per_minute.load(Ordering::Relaxed),
            ..self.limits
        }
    }

    /// A reload's new limits, for the connections admitted from now on. The rate may change
    /// but not be turned on or off: the eviction order exists only with a rate, and clients
    /// tracked without it are not in it (so that switch waits for a restart).
    pub fn set_limits(&self, max_connections: u32, rate_per_minute: u32) -> Result<(), &'static str> {
        let rate = self.rate_per_minute.load(Ordering::Relaxed);
        if (rate == 0) != (rate_per_minute == 0) {
            return Err("connection_rate_per_client cannot be turned on or off without a restart");
        }
        self.max_connections.store(max_connections, Ordering::Relaxed);
        self.rate_per_minute.store(rate_per_minute, Ordering::Relaxed);
        Ok(())
    }

    /// Clients tracked now, over all shards (locks each in turn: for metrics and tests).
    pub fn tracked(&self) -> usize {
        (0..SHARDS).map(|shard| self.lock(shard).by_key.len()).sum()
    }

    /// Connections admitted without being counted because their shard was full of clients that
    /// all held connections, since the table was made.
    pub fn admitted_untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }

    fn key(&self, ip: IpAddr) -> Key {
        // `to_canonical` turns an IPv4-mapped address into its IPv4 address (and only that: the
        // deprecated IPv4-compatible form `::a.b.c.d` stays IPv6).
        match ip.to_canonical() {
            IpAddr::V4(v4) => Key::V4(u32::from(v4)),
            IpAddr::V6(v6) => Key::V6(u128::from(v6) & self.ipv6_mask),
        }
    }

    /// Puts a client just tracked at the back of the eviction order, if there is one.
    fn queue(&self, clients: &mut Clients, key: Key, now: Instant) {
        if self.rate_per_minute.load(Ordering::Relaxed) != 0 {
            clients.by_age.push_back((key, now));
        }
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Clients> {
        // A panic under the lock is a broken invariant caught before it does harm (a release of
        // an untracked client, a client missing from the eviction order), so a poisoned shard is
        // still usable; one failed worker must not stop the others' accepts.
        self.shards[shard]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(last: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0xC000_0200 + last)) // 192.0.2.0/24 and on (RFC 5737)
    }

    fn v6(text: &str) -> IpAddr {
        IpAddr::V6(text.parse::<Ipv6Addr>().unwrap())
    }

    fn table(max_connections: u32, rate_per_minute: u32) -> ClientTable {
        ClientTable::new(ClientLimits {
            max_connections,
            rate_per_minute,
            ..ClientLimits::default()
        })
    }

    /// Admits `n` connections of `ip` at `now`, all of which must be allowed.
    fn hold(table: &ClientTable, ip: IpAddr, now: Instant, n: usize) -> Vec<Admitted> {
        (0..n)
            .map(|i| {
                table
                    .admit(ip, now)
                    .unwrap_or_else(|r| panic!("{ip} #{}: {r:?}", i + 1))
            })
            .collect()
    }

    fn release_all(table: &ClientTable, held: Vec<Admitted>) {
        held.into_iter().for_each(|a| table.release(a));
    }

    /// Admits one connection of `ip` at `now` and releases it at once.
    fn once(table: &ClientTable, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        table.admit(ip, now).map(|a| table.release(a))
    }

    /// The connections the table counts for `ip`'s client, read under its lock; `None` if it
    /// does not track the client.
    fn live(table: &ClientTable, ip: IpAddr) -> Option<u32> {
        let key = table.key(ip);
        let shard = table.hasher.hash_one(key) as usize & (SHARDS - 1);
        table.lock(shard).by_key.get(&key).map(|c| c.live)
    }

    #[test]
    fn is_shared_by_threads() {
        fn shared<T: Send + Sync>() {}
        fn sent<T: Send>() {}
        shared::<ClientTable>();
        sent::<Admitted>();
    }

    #[test]
    fn the_51st_connection_of_an_address_is_refused_and_another_address_is_not() {
        let table = ClientTable::new(ClientLimits::default());
        let now = Instant::now();
        let held = hold(&table, v4(1), now, 50);
        assert_eq!(table.admit(v4(1), now).unwrap_err(), Refusal::TooManyConnections);
        let other = hold(&table, v4(2), now, 50);
        assert_eq!((live(&table, v4(1)), live(&table, v4(2))), (Some(50), Some(50)));
        release_all(&table, held);
        release_all(&table, other);
        assert_eq!(table.tracked(), 0);
    }

    #[test]
    fn a_release_frees_a_place() {
        let table = table(2, 0);
        let now = Instant::now();
        let mut held = hold(&table, v4(1), now, 2);
        assert_eq!(table.admit(v4(1), now).unwrap_err(), Refusal::TooManyConnections);
        table.release(held.pop().unwrap());
        held.extend(hold(&table, v4(1), now, 1));
        assert_eq!(live(&table, v4(1)), Some(2));
        release_all(&table, held);
        assert_eq!(live(&table, v4(1)), None);
    }

    #[test]
    fn ipv6_addresses_of_one_64_share_a_count_and_another_64_does_not() {
        let table = table(2, 0);
        let now = Instant::now();
        let held = [
            table.admit(v6("2001:db8:1:2::1"), now).unwrap(),
            table.admit(v6("2001:db8:1:2:ffff:ffff:ffff:ffff"), now).unwrap(),
        ];
        assert_eq!(
            table.admit(v6("2001:db8:1:2:abcd::7"), now).unwrap_err(),
            Refusal::TooManyConnections
        );
        let other = hold(&table, v6("2001:db8:1:3::1"), now, 2);
        assert_eq!(table.tracked(), 2);
        release_all(&table, held.into());
        release_all(&table, other);
    }

    #[test]
    fn the_ipv6_prefix_is_configurable() {
        let table = ClientTable::new(ClientLimits {
            max_connections: 1,
            ipv6_prefix: 48,
            ..ClientLimits::default()
        });
        let now = Instant::now();
        let held = table.admit(v6("2001:db8:1:2::1"), now).unwrap();
        // Another /64 of the same /48.
        assert_eq!(
            table.admit(v6("2001:db8:1:3::1"), now).unwrap_err(),
            Refusal::TooManyConnections
        );
        let other = table.admit(v6("2001:db8:2::1"), now).unwrap();
        table.release(held);
        table.release(other);

        let per_address = ClientTable::new(ClientLimits {
            max_connections: 1,
            ipv6_prefix: 128,
            ..ClientLimits::default()
        });
        let held = hold(&per_address, v6("2001:db8::1"), now, 1);
        assert!(per_address.admit(v6("2001:db8::2"), now).is_ok());
        assert!(per_address.admit(v6("2001:db8::1"), now).is_err());
        release_all(&per_address, held);
    }

    #[test]
    fn an_ipv4_mapped_address_counts_as_the_ipv4_address() {
        let table = table(2, 0);
        let now = Instant::now();
        let ip = v4(9);
        let IpAddr::V4(plain) = ip else { unreachable!() };
        let mapped = IpAddr::V6(plain.to_ipv6_mapped());
        let held = [table.admit(ip, now).unwrap(), table.admit(mapped, now).unwrap()];
        assert_eq!(table.admit(mapped, now).unwrap_err(), Refusal::TooManyConnections);
        assert_eq!(table.admit(ip, now).unwrap_err(), Refusal::TooManyConnections);
        assert_eq!((table.tracked(), live(&table, ip)), (1, Some(2)));
        // The deprecated IPv4-compatible form (RFC 4291 §2.5.5.1) is IPv6, and so is its /64.
        let compatible = IpAddr::V6(plain.to_ipv6_compatible());
        assert_eq!(live(&table, compatible), None);
        release_all(&table, held.into());
    }

    #[test]
    fn the_rate_is_counted_in_a_fixed_minute_window() {
        let table = table(0, 3);
        let start = Instant::now();
        let ip = v4(1);
        let at = |s: u64, ms: u64| start + Duration::from_secs(s) + Duration::from_millis(ms);
        for s in [0, 10, 59] {
            assert_eq!(once(&table, ip, at(s, 0)), Ok(()));
        }
        assert_eq!(once(&table, ip, at(59, 999)), Err(Refusal::RateExceeded));
        assert_eq!(once(&table, v4(2), at(59, 999)), Ok(()));
        // The window began at the first attempt; the next minute starts fresh.
        let again = hold(&table, ip, at(60, 0), 3);
        assert_eq!(once(&table, ip, at(119, 0)), Err(Refusal::RateExceeded));
        release_all(&table, again);
        assert_eq!(once(&table, ip, at(120, 0)), Ok(()));
    }

    #[test]
    fn a_refused_attempt_counts_toward_the_rate_as_in_anvil() {
        let table = table(1, 2);
        let now = Instant::now();
        let held = table.admit(v4(1), now).unwrap();
        assert_eq!(table.admit(v4(1), now).unwrap_err(), Refusal::TooManyConnections);
        table.release(held);
        assert_eq!(table.admit(v4(1), now).unwrap_err(), Refusal::RateExceeded);
    }

    #[test]
    fn a_clock_a_little_behind_another_workers_counts_in_the_current_window() {
        let table = table(0, 1);
        let now = Instant::now() + Duration::from_secs(1);
        assert_eq!(once(&table, v4(1), now), Ok(()));
        let earlier = now - Duration::from_millis(5);
        assert_eq!(table.admit(v4(1), earlier).unwrap_err(), Refusal::RateExceeded);
    }

    #[test]
    fn without_limits_nothing_is_tracked() {
        let table = table(0, 0);
        let now = Instant::now();
        let held = hold(&table, v4(1), now, 1000);
        assert_eq!((table.tracked(), table.admitted_untracked()), (0, 0));
        release_all(&table, held);
    }

    #[test]
    fn a_client_with_no_connection_is_forgotten_at_once_unless_a_rate_is_counted() {
        let now = Instant::now();
        let counts = table(5, 0);
        assert_eq!(once(&counts, v4(1), now), Ok(()));
        assert_eq!(counts.tracked(), 0);
        let rate = table(5, 10);
        assert_eq!(once(&rate, v4(1), now), Ok(()));
        assert_eq!(rate.tracked(), 1);
    }

    #[test]
    fn the_table_stays_bounded_under_100k_distinct_addresses() {
        let limits = ClientLimits {
            max_connections: 50,
            rate_per_minute: 100,
            ipv6_prefix: 64,
            max_tracked: 1024,
        };
        let table = ClientTable::new(limits);
        let start = Instant::now();
        // A connected client that the flood must not push out.
        let kept = hold(&table, v6("2001:db8:ffff::1"), start, 50);
        for i in 0..100_000u32 {
            // Within one minute, so no window expires: every new client evicts an idle one.
            let now = start + Duration::from_millis(u64::from(i / 2));
            assert_eq!(once(&table, v4(i), now), Ok(()));
            if i % 64 == 0 {
                assert!(table.tracked() <= limits.max_tracked);
            }
        }
        assert_eq!(table.tracked(), limits.max_tracked);
        assert_eq!(table.admitted_untracked(), 0);
        assert_eq!(live(&table, v6("2001:db8:ffff::2")), Some(50));
        assert_eq!(
            once(&table, v6("2001:db8:ffff::3"), start),
            Err(Refusal::TooManyConnections)
        );
        // The newest clients are still tracked, the oldest evicted.
        assert_eq!((live(&table, v4(99_999)), live(&table, v4(0))), (Some(0), None));
        release_all(&table, kept);
    }

    #[test]
    fn a_full_shard_evicts_the_idle_client_whose_window_began_first() {
        let table = ClientTable::new(ClientLimits {
            max_connections: 50,
            rate_per_minute: 100,
            ipv6_prefix: 64,
            max_tracked: 2 * MIN_TRACKED,
        });
        // Four addresses of one shard, which holds two clients.
        let shard_of = |ip| table.hasher.hash_one(table.key(ip)) as usize & (SHARDS - 1);
        let same = (0..).map(v4).filter(|&ip| shard_of(ip) == shard_of(v4(0)));
        let [a, b, c, d] = <[IpAddr; 4]>::try_from(same.take(4).collect::<Vec<_>>()).unwrap();
        let start = Instant::now();
        let t = |s| start + Duration::from_secs(s);
        assert_eq!((once(&table, a, t(0)), once(&table, b, t(1))), (Ok(()), Ok(())));
        // a's window starts again, later than b's: b is now the older one.
        assert_eq!(once(&table, a, t(70)), Ok(()));
        assert_eq!(once(&table, c, t(71)), Ok(()));
        assert_eq!(
            (live(&table, a), live(&table, b), live(&table, c)),
            (Some(0), None, Some(0))
        );
        // A connected client is passed over, however old its window.
        let held = table.admit(a, t(72)).unwrap();
        assert_eq!(once(&table, d, t(200)), Ok(()));
        assert_eq!(
            (live(&table, a), live(&table, c), live(&table, d)),
            (Some(1), None, Some(0))
        );
        table.release(held);
    }

    #[test]
    fn a_shard_full_of_connected_clients_admits_newcomers_untracked() {
        let table = ClientTable::new(ClientLimits {
            max_connections: 1,
            rate_per_minute: 0,
            ipv6_prefix: 64,
            max_tracked: MIN_TRACKED,
        });
        let now = Instant::now();
        // One client per shard fills the table; the rest are let in uncounted.
        let held = hold(&table, v4(0), now, 1)
            .into_iter()
            .chain((1..2000).map(|i| table.admit(v4(i), now).unwrap()))
            .collect::<Vec<_>>();
        assert_eq!(table.tracked(), MIN_TRACKED);
        assert_eq!(table.admitted_untracked(), 2000 - MIN_TRACKED as u64);
        // Tracked clients are still limited.
        let tracked = (0..2000)
            .filter(|&i| live(&table, v4(i)) == Some(1))
            .collect::<Vec<_>>();
        assert_eq!(tracked.len(), MIN_TRACKED);
        assert!(tracked.iter().all(|&i| table.admit(v4(i), now).is_err()));
        release_all(&table, held);
        assert_eq!(table.tracked(), 0);
    }

    #[test]
    fn two_threads_admitting_and_releasing_the_same_clients_keep_exact_counts() {
        const ROUNDS: usize = 100_000;
        for rate in [0, u32::MAX] {
            // Each thread holds at most one connection of each client, so with exact counts
            // a limit of 2 never refuses.
            let table = table(2, rate);
            let now = Instant::now();
            let clients = [v4(1), v4(2), v6("2001:db8:0:1::1"), v6("2001:db8:0:2::1")];
            std::thread::scope(|s| {
                for t in 0..2 {
                    let (table, clients) = (&table, &clients);
                    s.spawn(move || {
                        for i in 0..ROUNDS {
                            let first = clients[(i + t) % 4];
                            let second = clients[(i + t + 1) % 4];
                            let a = table.admit(first, now).expect("exact counts never refuse");
                            let b = table.admit(second, now).expect("exact counts never refuse");
                            table.release(a);
                            table.release(b);
                        }
                    });
                }
            });
            // With a rate, the idle clients stay for their window.
            let expected = if rate == 0 { None } else { Some(0) };
            assert!(clients.iter().all(|&ip| live(&table, ip) == expected));
            assert_eq!(table.tracked(), if rate == 0 { 0 } else { 4 });
        }
    }

    #[test]
    #[should_panic(expected = "ipv6_prefix 31")]
    fn a_prefix_shorter_than_32_is_refused() {
        ClientTable::new(ClientLimits {
            ipv6_prefix: 31,
            ..ClientLimits::default()
        });
    }

    #[test]
    #[should_panic(expected = "max_tracked 63")]
    fn fewer_tracked_clients_than_shards_is_refused() {
        ClientTable::new(ClientLimits {
            max_tracked: 63,
            ..ClientLimits::default()
        });
    }
}
