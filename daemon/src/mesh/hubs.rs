//! The hubs of `[mesh] signaling`, one [`Hub`] each, named by a [`HubId`].
//!
//! A hub is served by one task, its channel (registration and heartbeats,
//! pushed lists, signals, relay offers: `hub_channel.rs`); peer tasks send
//! through that channel and the control socket reports on it. Everything
//! they share about one hub lives in its `Hub`, its trusted key included,
//! so there are no parallel per-hub lists to keep in step and no index that
//! can be out of range.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use meshd_ipc::HubStatus;
use tokio::sync::{Notify, mpsc};

use crate::hub_wire::{HubUrl, PeerHub, ToHub};
use crate::public_key::PublicKey;
use crate::sync::lock;

/// A hub's device list counts for this long until it has said its TTL.
const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// A hub of `[mesh] signaling`, by its place in that list. Only [`Hubs`]
/// makes them, so every `HubId` names a hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HubId(usize);

impl HubId {
    /// The hub's place in `[mesh] signaling`, from 0.
    pub fn index(self) -> usize {
        self.0
    }

    /// The id of the hub at `index`, for unit tests of code that is handed
    /// ids (the peer state machine).
    #[cfg(test)]
    pub fn for_test(index: usize) -> HubId {
        HubId(index)
    }
}

/// The hubs whose channels are open, in config order: the ones a peer
/// task's state machine may send through, handed to it at each step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenHubs(Vec<HubId>);

impl OpenHubs {
    /// These hubs (tests name them; meshd asks [`Hubs::open_into`]).
    #[cfg(test)]
    pub fn of(ids: &[HubId]) -> OpenHubs {
        let mut ids = ids.to_vec();
        ids.sort();
        OpenHubs(ids)
    }

    /// No channel is open.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first open hub, in config order.
    pub fn first(&self) -> Option<HubId> {
        self.0.first().copied()
    }

    /// The open hubs after `after` in config order, then the rest from the
    /// start: the order a request goes round in, so that the hub that
    /// refused it is asked last.
    pub fn after(&self, after: Option<HubId>) -> impl Iterator<Item = HubId> + '_ {
        let split = after.map_or(0, |after| self.0.partition_point(|id| *id <= after));
        let (before, rest) = self.0.split_at(split);
        rest.iter().chain(before).copied()
    }
}

/// What the channel last learnt from a hub.
#[derive(Debug)]
struct Registration {
    /// The last attempt got this device registered.
    reachable: bool,
    /// This device's address as the hub saw it.
    observed: Option<String>,
    /// Why the last round failed.
    error: Option<String>,
    /// How long the hub keeps a registration.
    ttl: Duration,
    /// The endpoint on the route to this hub (the local address of the
    /// connection, with the mesh port).
    route: Option<SocketAddr>,
    /// The open channel's local and remote addresses, for netcheck.
    connection: Option<(SocketAddr, SocketAddr)>,
}

/// The key a hub must prove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// `http://HOST:PORT#KEY` in the config.
    Configured(PublicKey),
    /// Pinned on first contact (`state_dir/known-hubs`).
    Known(PublicKey),
    /// Never met: the first key it proves is pinned.
    FirstUse,
}

impl Trust {
    /// The key in force, if there is one.
    pub fn key(self) -> Option<PublicKey> {
        match self {
            Trust::Configured(key) | Trust::Known(key) => Some(key),
            Trust::FirstUse => None,
        }
    }
}

/// A hub of a cluster that one of this device's hubs vouched for, over its
/// authenticated channel (docs/cluster.md): where to join a relay it runs,
/// or where to move when this device's own hubs stop answering. Its key is
/// the one the vouching hub gave, so trust carries from hub to hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VouchedHub {
    /// Its node id.
    pub id: String,
    /// Where it listens.
    pub url: HubUrl,
    /// The key it must prove.
    pub key: PublicKey,
}

impl VouchedHub {
    /// From what a hub sent; `None` (and the reason) when the URL or key
    /// does not parse, or the URL pins another key.
    pub fn from_wire(hub: &PeerHub) -> Result<VouchedHub, String> {
        let url = HubUrl::parse(&hub.url).map_err(|error| error.to_string())?;
        let key = PublicKey::from_base64(&hub.hub_key).map_err(|error| error.to_string())?;
        if url.pin().is_some_and(|pinned| pinned != key) {
            return Err(format!("{} pins another key than {}", hub.url, hub.hub_key));
        }
        Ok(VouchedHub {
            id: hub.id.clone(),
            url,
            key,
        })
    }
}

/// One hub and all this node holds about it.
#[derive(Debug)]
pub struct Hub {
    id: HubId,
    url: HubUrl,
    /// The open channel's queue; `None` while it is closed.
    outgoing: Mutex<Option<mpsc::Sender<ToHub>>>,
    /// Channels opened so far: tells one registered channel from the next
    /// (a link report must be sent again on a new one).
    channels_opened: std::sync::atomic::AtomicU64,
    /// The channel's last measured round trip.
    rtt: Mutex<Option<Duration>>,
    registration: Mutex<Registration>,
    /// The key the hub must prove.
    trust: Mutex<Trust>,
    /// Wakes the channel task to register at once.
    register_now: Notify,
    /// Wakes the channel task to reopen without waiting out its backoff
    /// (an operator forgot the hub's key).
    retry_now: Notify,
    /// While this hub is down and no other is up: the hub of its cluster
    /// the channel goes to instead (docs/cluster.md, "When a hub dies").
    stand_in: Mutex<Option<VouchedHub>>,
}

/// Where a hub's channel goes now: the hub itself, or its stand-in.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its URL.
    pub url: HubUrl,
    /// The key it must prove (`None`: pin the first, only for the hub
    /// itself).
    pub key: Option<PublicKey>,
    /// A stand-in's id, when this is one.
    pub stand_in: Option<String>,
}

impl Hub {
    fn new(id: HubId, url: HubUrl) -> Hub {
        let trust = match url.pin() {
            Some(key) => Trust::Configured(key),
            None => Trust::FirstUse,
        };
        Hub {
            id,
            trust: Mutex::new(trust),
            url,
            outgoing: Mutex::new(None),
            channels_opened: std::sync::atomic::AtomicU64::new(0),
            rtt: Mutex::new(None),
            registration: Mutex::new(Registration {
                reachable: false,
                observed: None,
                error: None,
                ttl: DEFAULT_TTL,
                route: None,
                connection: None,
            }),
            register_now: Notify::new(),
            retry_now: Notify::new(),
            stand_in: Mutex::new(None),
        }
    }

    /// Where the channel goes now, and the key it must find there.
    pub fn target(&self) -> Target {
        match &*lock(&self.stand_in) {
            Some(stand_in) => Target {
                url: stand_in.url.clone(),
                key: Some(stand_in.key),
                stand_in: Some(stand_in.id.clone()),
            },
            None => Target {
                url: self.url.clone(),
                key: self.trust().key(),
                stand_in: None,
            },
        }
    }

    /// Sends the channel to `stand_in` instead of this hub (`None`: back
    /// to the hub itself).
    pub fn set_stand_in(&self, stand_in: Option<VouchedHub>) {
        *lock(&self.stand_in) = stand_in;
    }

    /// The key this hub must prove.
    pub fn trust(&self) -> Trust {
        *lock(&self.trust)
    }

    /// Changes the key this hub must prove (pinned on first contact, read
    /// from known-hubs, or forgotten by an operator).
    pub fn set_trust(&self, trust: Trust) {
        *lock(&self.trust) = trust;
    }

    /// Asks the channel task to reopen now.
    pub fn retry_now(&self) {
        self.retry_now.notify_one();
    }

    /// Resolves when [`Hub::retry_now`] was called.
    pub async fn retry_asked(&self) {
        self.retry_now.notified().await;
    }

    /// Its id.
    pub fn id(&self) -> HubId {
        self.id
    }

    /// Its URL, as the config wrote it.
    pub fn url(&self) -> &HubUrl {
        &self.url
    }

    /// Queues a message on the channel; false when it is closed or full.
    pub fn send(&self, message: ToHub) -> bool {
        lock(&self.outgoing)
            .as_ref()
            .is_some_and(|outgoing| outgoing.try_send(message).is_ok())
    }

    /// The channel is open.
    pub fn is_open(&self) -> bool {
        lock(&self.outgoing)
            .as_ref()
            .is_some_and(|outgoing| !outgoing.is_closed())
    }

    /// The channel opened and registered (`Some`, with its queue) or
    /// closed.
    pub fn set_channel(&self, outgoing: Option<mpsc::Sender<ToHub>>) {
        // Not under the queue's lock: `status` takes the registration's
        // lock, then the queue's.
        match outgoing {
            None => lock(&self.registration).connection = None,
            Some(_) => {
                self.channels_opened
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        *lock(&self.outgoing) = outgoing;
    }

    /// The number of the open, registered channel (it changes with every
    /// channel); `None` while there is none.
    pub fn open_channel(&self) -> Option<u64> {
        let current = lock(&self.outgoing);
        let open = current
            .as_ref()
            .is_some_and(|outgoing| !outgoing.is_closed());
        open.then(|| {
            self.channels_opened
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// The open channel's local and remote addresses.
    pub fn set_connection(&self, local: SocketAddr, remote: SocketAddr) {
        lock(&self.registration).connection = Some((local, remote));
    }

    /// The open channel's local and remote addresses, and the address the
    /// hub observed it come from: what netcheck reads.
    pub fn connection(&self) -> Option<(SocketAddr, SocketAddr, Option<String>)> {
        let registration = lock(&self.registration);
        registration
            .connection
            .map(|(local, remote)| (local, remote, registration.observed.clone()))
    }

    /// A round trip measured over the channel.
    pub fn set_rtt(&self, rtt: Duration) {
        *lock(&self.rtt) = Some(rtt);
    }

    /// The hub registered this device: it sees it at `observed` and keeps
    /// the registration for `ttl`.
    pub fn registered(&self, observed: String, ttl: Duration) {
        let mut registration = lock(&self.registration);
        registration.observed = Some(observed);
        registration.ttl = ttl;
    }

    /// The outcome of an attempt: `None` when the hub registered us.
    pub fn answered(&self, error: Option<String>) {
        let mut registration = lock(&self.registration);
        registration.reachable = error.is_none();
        registration.error = error;
    }

    /// How long this hub's device list counts.
    pub fn ttl(&self) -> Duration {
        lock(&self.registration).ttl
    }

    /// The endpoint on the route to this hub, once a connection learnt it.
    pub fn route(&self) -> Option<SocketAddr> {
        lock(&self.registration).route
    }

    /// Remembers the endpoint on the route to this hub.
    pub fn set_route(&self, endpoint: SocketAddr) {
        lock(&self.registration).route = Some(endpoint);
    }

    /// Asks the channel task to register now (the hub's list lacks us).
    pub fn register_now(&self) {
        self.register_now.notify_one();
    }

    /// Resolves when [`Hub::register_now`] was called.
    pub async fn register_asked(&self) {
        self.register_now.notified().await;
    }

    /// For `meshctl status`.
    pub fn status(&self) -> HubStatus {
        let registration = lock(&self.registration);
        let target = self.target();
        HubStatus {
            cluster_hubs: Vec::new(),
            via: target.stand_in.map(|_| target.url.to_string()),
            url: self.url.to_string(),
            reachable: registration.reachable,
            observed: registration.observed.clone(),
            error: registration.error.clone(),
            channel: self.is_open(),
            rtt_ms: (*lock(&self.rtt)).map(super::millis),
            hub_key: target.key.map(PublicKey::to_base64),
        }
    }
}

/// Every hub of `[mesh] signaling`, in its order.
#[derive(Debug)]
pub struct Hubs {
    hubs: Box<[Hub]>,
    /// The other hubs of their clusters that these hubs vouched for last,
    /// by the hub (or stand-in) that said so.
    vouched: Mutex<Vec<(HubId, Vec<VouchedHub>)>>,
    /// Held while a hub's channel picks a stand-in.
    moving: Mutex<()>,
}

impl Hubs {
    /// One hub per URL, each to prove the key its URL pins or, failing
    /// that, the key `known` holds for it.
    pub fn new(urls: &[HubUrl], known: &super::KnownHubs) -> Hubs {
        let hubs: Box<[Hub]> = urls
            .iter()
            .enumerate()
            .map(|(index, url)| Hub::new(HubId(index), url.clone()))
            .collect();
        for hub in &hubs {
            if hub.trust() == Trust::FirstUse
                && let Some(key) = known.key_of(&hub.url.to_string())
            {
                hub.set_trust(Trust::Known(key));
            }
        }
        Hubs {
            hubs,
            vouched: Mutex::new(Vec::new()),
            moving: Mutex::new(()),
        }
    }

    /// Hub `id`'s status, with the hubs of its cluster it vouched for.
    pub fn status(&self, id: HubId) -> HubStatus {
        let mut status = self.get(id).status();
        if let Some((_, hubs)) = lock(&self.vouched).iter().find(|(by, _)| *by == id) {
            status.cluster_hubs = hubs.iter().map(|hub| hub.url.to_string()).collect();
        }
        status
    }

    /// Hub `id`'s channel named the other hubs of its cluster (the whole
    /// list, replacing what it said before).
    pub fn vouched_by(&self, id: HubId, hubs: Vec<VouchedHub>) {
        let mut vouched = lock(&self.vouched);
        vouched.retain(|(by, _)| *by != id);
        if !hubs.is_empty() {
            vouched.push((id, hubs));
        }
    }

    /// Sends hub `id`'s channel to the stand-in after its current one
    /// (see [`Hubs::next_stand_in`]), skipping stand-ins the other hubs'
    /// channels went to, so that two hubs that failed together do not
    /// take turns replacing each other's channel at one stand-in. Returns
    /// the new stand-in (`None`: back to the hub itself).
    pub fn move_on(&self, id: HubId) -> Option<VouchedHub> {
        // One hub moves at a time.
        let _moving = lock(&self.moving);
        let hub = self.get(id);
        let taken: Vec<String> = self
            .hubs
            .iter()
            .filter(|other| other.id != id)
            .filter_map(|other| other.target().stand_in)
            .collect();
        let mut current = hub.target().stand_in;
        let next = loop {
            match self.next_stand_in(current.as_deref()) {
                Some(next) if taken.contains(&next.id) => current = Some(next.id),
                next => break next,
            }
        };
        hub.set_stand_in(next.clone());
        next
    }

    /// The hub to try after `current` (`None`: the hub itself) when every
    /// hub of `[mesh] signaling` is down: the next one vouched for, in
    /// order, skipping the configured hubs themselves; after the last, the
    /// hub itself again.
    pub fn next_stand_in(&self, current: Option<&str>) -> Option<VouchedHub> {
        let configured: Vec<String> = self.hubs.iter().map(|hub| hub.url.to_string()).collect();
        let mut candidates: Vec<VouchedHub> = Vec::new();
        for (_, hubs) in lock(&self.vouched).iter() {
            for hub in hubs {
                let url = hub.url.to_string();
                if !configured.contains(&url)
                    && !candidates.iter().any(|known| known.url.to_string() == url)
                {
                    candidates.push(hub.clone());
                }
            }
        }
        let next = match current {
            None => 0,
            Some(current) => candidates.iter().position(|hub| hub.id == current)? + 1,
        };
        candidates.into_iter().nth(next)
    }

    /// The hub `id` names.
    pub fn get(&self, id: HubId) -> &Hub {
        // Infallible: only `new` makes ids, each below the length.
        &self.hubs[id.0]
    }

    /// Every hub, in config order.
    pub fn iter(&self) -> std::slice::Iter<'_, Hub> {
        self.hubs.iter()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.hubs.len()
    }

    /// Some hub's channel is open.
    pub fn any_open(&self) -> bool {
        self.hubs.iter().any(Hub::is_open)
    }

    /// Fills `open` with the hubs whose channels are open (reusing its
    /// memory: peer tasks ask on every step).
    pub fn open_into(&self, open: &mut OpenHubs) {
        open.0.clear();
        open.0
            .extend(self.hubs.iter().filter(|hub| hub.is_open()).map(Hub::id));
    }

    /// Every hub once, starting at `start` (the first without one) and
    /// wrapping around: the order in which a request is offered, so that a
    /// hub that refused is not asked first again.
    pub fn starting_at(&self, start: Option<HubId>) -> impl Iterator<Item = &Hub> {
        let start = start.map_or(0, |id| id.0.min(self.hubs.len()));
        let (before, after) = self.hubs.split_at(start);
        after.iter().chain(before)
    }

    /// The hub after `id` in config order, wrapping around.
    pub fn next_after(&self, id: HubId) -> HubId {
        HubId((id.0 + 1) % self.hubs.len().max(1))
    }
}

impl<'a> IntoIterator for &'a Hubs {
    type Item = &'a Hub;
    type IntoIter = std::slice::Iter<'a, Hub>;

    fn into_iter(self) -> Self::IntoIter {
        self.hubs.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hubs(n: usize) -> Hubs {
        let urls: Vec<HubUrl> = (0..n)
            .map(|i| HubUrl::parse(&format!("http://127.0.0.1:{}", 8080 + i)).unwrap())
            .collect();
        Hubs::new(&urls, &crate::mesh::KnownHubs::none())
    }

    #[test]
    fn requests_rotate_from_the_hub_named_and_wrap() {
        let hubs = hubs(3);
        let order = |start: usize| -> Vec<usize> {
            hubs.starting_at(Some(HubId(start)))
                .map(|hub| hub.id().index())
                .collect()
        };
        assert_eq!(order(0), [0, 1, 2]);
        let first: Vec<usize> = hubs.starting_at(None).map(|hub| hub.id().index()).collect();
        assert_eq!(first, [0, 1, 2]);
        assert_eq!(order(2), [2, 0, 1]);
        assert_eq!(hubs.next_after(HubId(2)), HubId(0));
        assert_eq!(hubs.next_after(HubId(0)), HubId(1));
    }

    fn peer(id: &str, port: u16, key: &PublicKey) -> PeerHub {
        PeerHub {
            id: id.to_owned(),
            url: format!("http://10.0.0.9:{port}"),
            hub_key: key.to_base64(),
        }
    }

    #[test]
    fn with_every_hub_down_the_channel_goes_round_the_hubs_vouched_for_and_back() {
        let hubs = hubs(2);
        let key = PublicKey::from([7; 32]);
        // Nothing vouched for: the hub itself.
        assert_eq!(hubs.next_stand_in(None), None);
        let vouched = |list: &[(&str, u16)]| -> Vec<VouchedHub> {
            list.iter()
                .map(|(id, port)| VouchedHub::from_wire(&peer(id, *port, &key)).unwrap())
                .collect()
        };
        hubs.vouched_by(HubId(0), vouched(&[("h2", 9002), ("h3", 9003)]));
        // Hub 1 names h3 again, and hub 0 (a configured hub: skipped).
        let mut second = vouched(&[("h3", 9003)]);
        second.push(
            VouchedHub::from_wire(&PeerHub {
                id: "h0".to_owned(),
                url: "http://127.0.0.1:8080".to_owned(),
                hub_key: key.to_base64(),
            })
            .unwrap(),
        );
        hubs.vouched_by(HubId(1), second);
        let next = |current: Option<&str>| hubs.next_stand_in(current).map(|hub| hub.id);
        assert_eq!(next(None).as_deref(), Some("h2"));
        assert_eq!(next(Some("h2")).as_deref(), Some("h3"));
        assert_eq!(next(Some("h3")), None, "after the last, the hub itself");
        assert_eq!(next(Some("gone")), None, "a stand-in no longer vouched for");
        // A hub that names no other hubs any more takes its list back.
        hubs.vouched_by(HubId(0), Vec::new());
        assert_eq!(next(None).as_deref(), Some("h3"));

        // The channel goes to the stand-in with the vouched-for key, and
        // the status says so.
        let hub = hubs.get(HubId(0));
        hub.set_stand_in(hubs.next_stand_in(None));
        let target = hub.target();
        assert_eq!(target.url.to_string(), "http://10.0.0.9:9003");
        assert_eq!(target.key, Some(key));
        let status = hubs.status(HubId(0));
        assert_eq!(status.url, "http://127.0.0.1:8080");
        assert_eq!(status.via.as_deref(), Some("http://10.0.0.9:9003"));
        assert_eq!(status.hub_key, Some(key.to_base64()));
        hub.set_stand_in(None);
        assert_eq!(hub.target().url.to_string(), "http://127.0.0.1:8080");
        assert_eq!(
            hubs.status(HubId(1)).cluster_hubs,
            ["http://10.0.0.9:9003", "http://127.0.0.1:8080"]
        );
    }

    #[test]
    fn two_hubs_down_together_do_not_move_to_the_same_stand_in() {
        let hubs = hubs(2);
        let key = PublicKey::from([7; 32]);
        let vouched: Vec<VouchedHub> = [("h2", 9002), ("h3", 9003)]
            .iter()
            .map(|(id, port)| VouchedHub::from_wire(&peer(id, *port, &key)).unwrap())
            .collect();
        hubs.vouched_by(HubId(0), vouched);
        let moved = |id| hubs.move_on(HubId(id)).map(|hub| hub.id);
        assert_eq!(moved(0).as_deref(), Some("h2"));
        assert_eq!(moved(1).as_deref(), Some("h3"), "h2 is hub 0's");
        // Hub 0 goes on round: h3 is hub 1's, so back to itself.
        assert_eq!(moved(0), None);
        assert_eq!(hubs.get(HubId(0)).target().stand_in, None);
        assert_eq!(moved(0).as_deref(), Some("h2"));
    }

    #[test]
    fn a_vouched_hub_that_does_not_parse_is_refused() {
        let key = PublicKey::from([7; 32]);
        let mut bad = peer("h2", 9002, &key);
        bad.hub_key = "short".to_owned();
        assert!(VouchedHub::from_wire(&bad).is_err());
        let mut bad = peer("h2", 9002, &key);
        bad.url = "ftp://10.0.0.9".to_owned();
        assert!(VouchedHub::from_wire(&bad).is_err());
        let other = PublicKey::from([8; 32]);
        let mut pinned = peer("h2", 9002, &key);
        pinned.url = format!("http://10.0.0.9:9002#{}", other.to_base64());
        let error = VouchedHub::from_wire(&pinned).unwrap_err();
        assert!(error.contains("pins another key"), "{error}");
    }

    #[test]
    fn open_hubs_go_round_after_the_one_named() {
        let open = OpenHubs::of(&[HubId(0), HubId(2), HubId(3)]);
        let after = |id: Option<usize>| -> Vec<usize> {
            open.after(id.map(HubId)).map(HubId::index).collect()
        };
        assert_eq!(after(None), [0, 2, 3]);
        assert_eq!(after(Some(0)), [2, 3, 0]);
        assert_eq!(after(Some(1)), [2, 3, 0]);
        assert_eq!(after(Some(3)), [0, 2, 3]);
        assert_eq!(open.first(), Some(HubId(0)));
        assert!(OpenHubs::default().is_empty());
    }

    #[test]
    fn a_closed_channel_takes_nothing_and_an_open_one_queues() {
        let hubs = hubs(1);
        let hub = hubs.get(HubId(0));
        assert!(!hub.send(ToHub::Leave));
        assert!(!hubs.any_open());
        let (outgoing, mut queue) = mpsc::channel(1);
        hub.set_channel(Some(outgoing));
        assert!(hubs.any_open());
        let mut open = OpenHubs::default();
        hubs.open_into(&mut open);
        assert_eq!(open, OpenHubs::of(&[HubId(0)]));
        assert!(hub.send(ToHub::Leave));
        assert!(!hub.send(ToHub::Leave), "a full queue refuses");
        assert_eq!(queue.try_recv().unwrap(), ToHub::Leave);
        drop(queue);
        assert!(!hub.is_open(), "a channel whose task ended is closed");
    }

    #[test]
    fn status_reports_what_the_channel_learnt() {
        let hubs = hubs(1);
        let hub = hubs.get(HubId(0));
        assert_eq!(hub.ttl(), DEFAULT_TTL);
        hub.registered("203.0.113.9:4000".into(), Duration::from_secs(9));
        hub.answered(None);
        hub.set_rtt(Duration::from_micros(1500));
        let status = hub.status();
        assert_eq!(status.url, "http://127.0.0.1:8080");
        assert!(status.reachable);
        assert_eq!(status.observed.as_deref(), Some("203.0.113.9:4000"));
        assert_eq!(status.rtt_ms, Some(1.5));
        assert_eq!(hub.ttl(), Duration::from_secs(9));
        hub.answered(Some("refused".into()));
        assert!(!hub.status().reachable);
        assert_eq!(hub.status().error.as_deref(), Some("refused"));
    }
}
