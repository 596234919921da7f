//! The relay: when two devices cannot reach each other directly, the hub
//! splices their TCP streams together. The link's own Noise session runs
//! through it end to end, so the hub only ever sees ciphertext.
//!
//! A device asks over its channel; the hub hands each side a one-time token
//! over its own channel ([`Relays::offer`]). Each side then opens
//! `GET /relay` with its token and upgrades; the first to arrive waits (at
//! most [`JOIN_TIMEOUT`]) for the other, and the two streams are copied into
//! each other. Each direction is charged to the device that sends it, at
//! `signaling.relay_bytes_per_sec` per device across all its relays.
//!
//! Relay slots (offers and running relays, at most `max`) are shared fairly:
//! each relay belongs to the device that asked for it and to the address its
//! channel comes from, and one device may hold a sixteenth of the slots, one
//! address a quarter ([`Shares`]). Many ids from one machine can no longer
//! take every slot and leave a real device without a relay.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::device_id::DeviceId;
use crate::metrics::metrics;
use crate::public_key::PublicKey;
use crate::sync::lock;
use crate::token_bucket::TokenBucket;

/// Time a token stays valid, and the first side waits for the second.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A relay with no bytes in one direction for this long is closed. Links
/// send keepalives far more often.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes read per copy step.
const COPY_CHUNK: usize = 16 * 1024;

/// A stream joined to a relay.
pub trait RelayStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> RelayStream for T {}

type Stream = Box<dyn RelayStream>;

/// Offers a device may have pending at once.
const MAX_PENDING_PER_DEVICE: usize = 8;

/// Who asked for a relay: the device, its proven key, and the address of
/// its channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asker {
    /// The asking device.
    pub device: DeviceId,
    /// The key its channel proved.
    pub key: PublicKey,
    /// Where its channel connects from.
    pub source: IpAddr,
}

/// Relay slots held per asking device and per source address.
#[derive(Debug, Default)]
struct Shares {
    by_device: HashMap<DeviceId, usize>,
    by_source: HashMap<IpAddr, usize>,
}

impl Shares {
    /// Takes one slot for `asker` if its device and its address are both
    /// within their share of `max`.
    fn take(&mut self, asker: &Asker, max: usize) -> Result<(), RelayError> {
        let per_device = (max / 16).max(1);
        let per_source = (max / 4).max(1);
        if self.by_device.get(&asker.device).copied().unwrap_or(0) >= per_device {
            return Err(RelayError::Share {
                whose: format!("device {}", asker.device),
                share: per_device,
            });
        }
        if self.by_source.get(&asker.source).copied().unwrap_or(0) >= per_source {
            return Err(RelayError::Share {
                whose: format!("address {}", asker.source),
                share: per_source,
            });
        }
        *self.by_device.entry(asker.device.clone()).or_default() += 1;
        *self.by_source.entry(asker.source).or_default() += 1;
        Ok(())
    }

    fn give_back(&mut self, asker: &Asker) {
        if let Some(count) = self.by_device.get_mut(&asker.device) {
            *count -= 1;
            if *count == 0 {
                self.by_device.remove(&asker.device);
            }
        }
        if let Some(count) = self.by_source.get_mut(&asker.source) {
            *count -= 1;
            if *count == 0 {
                self.by_source.remove(&asker.source);
            }
        }
    }
}

/// One side of an offered relay.
struct Half {
    device: DeviceId,
    /// The key that may claim this half: the device's, bound at the hub.
    key: PublicKey,
    /// The device at the other end.
    peer: DeviceId,
    /// This side runs the link's initiator handshake.
    dials: bool,
    partner: String,
    created: Instant,
    /// The side has arrived and waits for its partner's stream.
    waiting: Option<oneshot::Sender<Arrival>>,
    claimed: bool,
    /// On the asker's half only: whose share the relay counts against.
    owner: Option<Asker>,
}

/// What the second side of a relay hands the first.
struct Arrival {
    stream: Stream,
    device: DeviceId,
    owner: Option<Asker>,
}

/// Why a relay could not be offered or joined.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RelayError {
    /// `signaling.relay_bytes_per_sec` is 0.
    #[error("this hub does not relay (signaling.relay_bytes_per_sec = 0)")]
    Disabled,
    /// At the cap of relays (the hub's, or one device's pending offers).
    #[error("at the limit of {0} relays; try again later")]
    Full(usize),
    /// The asking device or its address holds its share of the relays.
    #[error("{whose} holds {share} relays, its share of this hub's; try again later")]
    Share {
        /// The device or address.
        whose: String,
        /// Its share.
        share: usize,
    },
    /// The token is unknown, used or expired.
    #[error("unknown, used or expired relay token; ask for a new relay over the hub channel")]
    UnknownToken,
    /// The token was issued to another device's key.
    #[error("this relay token was issued to another device")]
    NotYours,
}

/// Offered and running relays.
pub struct Relays {
    pending: Mutex<HashMap<String, Half>>,
    /// Per device, the bucket every relay it sends through shares.
    buckets: Mutex<HashMap<DeviceId, Weak<Bucket>>>,
    /// Relays spliced now.
    active: Arc<AtomicUsize>,
    /// Offers and relays per asking device and address.
    shares: Arc<Mutex<Shares>>,
    /// Pending halves plus active relays at most.
    max: usize,
}

/// A token: 128 random bits, hex.
fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A relay offered to two devices.
#[derive(Debug)]
pub struct Offer {
    /// The asking device's token.
    pub own: String,
    /// The other device's token.
    pub theirs: String,
    /// The asking device runs the initiator handshake (it asked first).
    pub own_dials: bool,
}

/// Proof that a `GET /relay` presented a valid token.
pub struct Claim {
    token: String,
    device: DeviceId,
}

impl Relays {
    /// Room for `max` relays, pending or active.
    pub fn new(max: usize) -> Self {
        Relays {
            pending: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            active: Arc::new(AtomicUsize::new(0)),
            shares: Arc::new(Mutex::new(Shares::default())),
            max,
        }
    }

    /// Removes expired halves, giving their shares back.
    fn expire(&self, pending: &mut HashMap<String, Half>, now: Instant) {
        pending.retain(|_, half| {
            let keep = now.duration_since(half.created) < JOIN_TIMEOUT;
            if !keep && let Some(owner) = &half.owner {
                lock(&self.shares).give_back(owner);
            }
            keep
        });
    }

    /// Removes one half, giving its share back if it holds one.
    fn remove(&self, pending: &mut HashMap<String, Half>, token: &str) -> Option<Asker> {
        pending.remove(token).and_then(|half| half.owner)
    }

    /// Withdraws an offer nobody has joined yet (its other half could not
    /// be handed over), giving its slot and share back at once.
    pub fn withdraw(&self, offer: &Offer) {
        let mut pending = lock(&self.pending);
        if [&offer.own, &offer.theirs]
            .iter()
            .any(|token| pending.get(token.as_str()).is_some_and(|half| half.claimed))
        {
            return;
        }
        for token in [&offer.own, &offer.theirs] {
            if let Some(owner) = self.remove(&mut pending, token) {
                lock(&self.shares).give_back(&owner);
            }
        }
    }

    /// Relays spliced now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Offers a relay between `a` (asking) and `b`. When the two asked for
    /// each other at the same moment, both get the one relay already
    /// offered, with its roles, so they never wait in two different ones.
    pub fn offer(
        &self,
        asker: &Asker,
        b: &DeviceId,
        b_key: PublicKey,
        rate: u64,
    ) -> Result<Offer, RelayError> {
        if rate == 0 {
            return Err(RelayError::Disabled);
        }
        let a = &asker.device;
        let mut pending = lock(&self.pending);
        let now = Instant::now();
        self.expire(&mut pending, now);
        // The asker's unjoined half of a young enough relay to the same
        // device: its offer may have been lost, or the other side asked
        // too. The partner may be waiting already; it gets its token again
        // and ignores it.
        let existing = pending
            .iter()
            .find(|(_, half)| {
                half.device == *a
                    && half.peer == *b
                    && !half.claimed
                    && now.duration_since(half.created) < JOIN_TIMEOUT / 2
            })
            .map(|(token, half)| (token.clone(), half.partner.clone(), half.dials));
        if let Some((own, theirs, own_dials)) = existing
            && pending.contains_key(&theirs)
        {
            return Ok(Offer {
                own,
                theirs,
                own_dials,
            });
        }
        if pending.len() / 2 + self.active() >= self.max {
            return Err(RelayError::Full(self.max));
        }
        let asked = pending.values().filter(|half| half.device == *a).count();
        if asked >= MAX_PENDING_PER_DEVICE {
            return Err(RelayError::Full(MAX_PENDING_PER_DEVICE));
        }
        lock(&self.shares).take(asker, self.max)?;
        let (own, theirs) = (new_token(), new_token());
        let half =
            |device: &DeviceId, key: PublicKey, peer: &DeviceId, dials: bool, partner: &str| Half {
                device: device.clone(),
                key,
                peer: peer.clone(),
                dials,
                partner: partner.to_owned(),
                created: now,
                waiting: None,
                claimed: false,
                owner: None,
            };
        let mut asking = half(a, asker.key, b, true, &theirs);
        asking.owner = Some(asker.clone());
        pending.insert(own.clone(), asking);
        pending.insert(theirs.clone(), half(b, b_key, a, false, &own));
        Ok(Offer {
            own,
            theirs,
            own_dials: true,
        })
    }

    /// Checks a token presented with `key` (proven in the join's
    /// handshake); each token is good for one claim, by its own device. A
    /// wrong key uses nothing up, so a thief cannot spend a token either.
    pub fn claim(&self, token: &str, key: PublicKey) -> Result<Claim, RelayError> {
        let mut pending = lock(&self.pending);
        match pending.get_mut(token) {
            Some(half) if !half.claimed && half.created.elapsed() < JOIN_TIMEOUT => {
                if half.key != key {
                    return Err(RelayError::NotYours);
                }
                half.claimed = true;
                Ok(Claim {
                    token: token.to_owned(),
                    device: half.device.clone(),
                })
            }
            _ => Err(RelayError::UnknownToken),
        }
    }

    /// Joins a claimed side's stream to its partner's: hands it over if the
    /// partner waits, or waits for the partner and then copies both ways
    /// until either side closes, the relay idles or meshd stops.
    pub async fn join<S: RelayStream>(
        &self,
        claim: Claim,
        stream: S,
        rate: impl Fn() -> u64 + Send + Sync + 'static,
        stopping: CancellationToken,
    ) {
        let stream: Stream = Box::new(stream);
        let arrived = {
            let mut pending = lock(&self.pending);
            let partner = pending
                .get(&claim.token)
                .map(|half| half.partner.clone())
                .unwrap_or_default();
            match pending
                .get_mut(&partner)
                .and_then(|half| half.waiting.take())
            {
                Some(waiting) => {
                    // The relay runs now: its share goes with it.
                    let owner = self
                        .remove(&mut pending, &partner)
                        .or(self.remove(&mut pending, &claim.token));
                    Err((waiting, stream, owner))
                }
                None => {
                    let (sender, receiver) = oneshot::channel();
                    match pending.get_mut(&claim.token) {
                        Some(half) => half.waiting = Some(sender),
                        // Expired between the claim and the upgrade.
                        None => return,
                    }
                    Ok((receiver, stream))
                }
            }
        };
        let (receiver, own) = match arrived {
            Err((waiting, stream, owner)) => {
                // The partner's task splices.
                let arrival = Arrival {
                    stream,
                    device: claim.device,
                    owner,
                };
                if let Err(arrival) = waiting.send(arrival)
                    && let Some(owner) = arrival.owner
                {
                    lock(&self.shares).give_back(&owner);
                }
                return;
            }
            Ok(waiting) => waiting,
        };
        let partner = tokio::select! {
            () = stopping.cancelled() => None,
            received = tokio::time::timeout(JOIN_TIMEOUT, receiver) => received.ok().and_then(Result::ok),
        };
        let Some(Arrival {
            stream: other,
            device: other_device,
            owner,
        }) = partner
        else {
            let owner = self.remove(&mut lock(&self.pending), &claim.token);
            if let Some(owner) = owner {
                lock(&self.shares).give_back(&owner);
            }
            tracing::debug!(device_id = %claim.device, "relay partner never came; closed");
            return;
        };
        let _share = owner.map(|owner| ShareGuard {
            shares: self.shares.clone(),
            owner,
        });
        let own_bucket = self.bucket(&claim.device);
        let other_bucket = self.bucket(&other_device);
        self.active.fetch_add(1, Ordering::Relaxed);
        let _active = ActiveGuard(self.active.clone());
        tracing::info!(a = %claim.device, b = %other_device, "relay open");
        let (own_read, own_write) = tokio::io::split(own);
        let (other_read, other_write) = tokio::io::split(other);
        let rate = Arc::new(rate);
        let (sent_a, sent_b) = tokio::select! {
            () = stopping.cancelled() => (0, 0),
            (a, b) = async {
                tokio::join!(
                    pump(own_read, other_write, own_bucket, rate.clone()),
                    pump(other_read, own_write, other_bucket, rate.clone()),
                )
            } => (a, b),
        };
        tracing::info!(a = %claim.device, b = %other_device, bytes_from_a = sent_a, bytes_from_b = sent_b, "relay closed");
    }

    fn bucket(&self, device: &DeviceId) -> Arc<Bucket> {
        let mut buckets = lock(&self.buckets);
        if let Some(bucket) = buckets.get(device).and_then(Weak::upgrade) {
            return bucket;
        }
        buckets.retain(|_, bucket| bucket.strong_count() > 0);
        let bucket = Arc::new(Bucket::new());
        buckets.insert(device.clone(), Arc::downgrade(&bucket));
        bucket
    }
}

/// Serves one `GET /relay` after its upgrade: the hub handshake (its slot
/// given back as soon as it is done), the token checked against the key the
/// device just proved, the verdict, then the join.
pub async fn serve_join<S: RelayStream>(
    state: Arc<super::SignalingState>,
    stream: S,
    peer: std::net::SocketAddr,
    handshake_slot: tokio::sync::OwnedSemaphorePermit,
) {
    let handshake = meshd_link::relay_join::accept(stream, &state.hub_key).await;
    drop(handshake_slot);
    let pending = match handshake {
        Ok(pending) => pending,
        Err(error) => {
            tracing::debug!(peer_addr = %peer, %error, "relay join handshake failed");
            return;
        }
    };
    let key = PublicKey::from(pending.device_key);
    let claim = match state.relays.claim(&pending.token, key) {
        Ok(claim) => claim,
        Err(error) => {
            tracing::debug!(peer_addr = %peer, %key, %error, "relay join refused");
            let reason = error.to_string();
            let _ = tokio::time::timeout(JOIN_TIMEOUT, pending.refuse(&reason)).await;
            return;
        }
    };
    let stream = match tokio::time::timeout(JOIN_TIMEOUT, pending.admit()).await {
        Ok(Ok(stream)) => stream,
        _ => return,
    };
    let rate_state = state.clone();
    let rate = move || rate_state.settings().relay_bytes_per_sec;
    state
        .relays
        .join(claim, stream, rate, state.stopping.clone())
        .await;
}

/// A running relay's hold on its asker's share.
struct ShareGuard {
    shares: Arc<Mutex<Shares>>,
    owner: Asker,
}

impl Drop for ShareGuard {
    fn drop(&mut self) {
        lock(&self.shares).give_back(&self.owner);
    }
}

struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Copies one direction until end of stream, an error, an idle read or a
/// rate of 0; then shuts the write side, so the other end sees the close.
/// The bytes copied.
async fn pump<R, W>(mut from: R, mut to: W, bucket: Arc<Bucket>, rate: Arc<impl Fn() -> u64>) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0; COPY_CHUNK];
    let mut copied = 0u64;
    loop {
        let read = match tokio::time::timeout(IDLE_TIMEOUT, from.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(read)) => read,
        };
        let rate = rate();
        if rate == 0 {
            break;
        }
        bucket.take(read, rate).await;
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
        copied += read as u64;
        metrics().hub_relay_bytes.inc_by(read as u64);
    }
    let _ = to.shutdown().await;
    copied
}

/// A device's bytes through the relay: a burst of one second's worth, then
/// `rate` bytes per second. Senders over it sleep off their debt.
struct Bucket {
    state: Mutex<TokenBucket>,
}

impl Bucket {
    fn new() -> Self {
        Bucket {
            state: Mutex::new(TokenBucket::full(std::time::Instant::now())),
        }
    }

    async fn take(&self, bytes: usize, rate: u64) {
        let wait = lock(&self.state).take(bytes as u64, rate, rate, std::time::Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> DeviceId {
        DeviceId::parse(name).unwrap()
    }

    /// `name` asking from 203.0.113.1.
    fn asker(name: &str) -> Asker {
        asker_from(name, "203.0.113.1")
    }

    fn asker_from(name: &str, source: &str) -> Asker {
        Asker {
            device: id(name),
            key: key_of(name),
            source: source.parse().unwrap(),
        }
    }

    /// A key for `name`, the same each time.
    fn key_of(name: &str) -> PublicKey {
        let mut key = [0u8; 32];
        for (slot, byte) in key.iter_mut().zip(name.bytes()) {
            *slot = byte;
        }
        PublicKey::from(key)
    }

    #[test]
    fn tokens_are_one_time_and_the_cap_holds() {
        let relays = Relays::new(1);
        let offer = relays
            .offer(&asker("a"), &id("b"), key_of("b"), 1000)
            .unwrap();
        // Seen by someone else, a token is worth nothing, and is not used up.
        assert!(matches!(
            relays.claim(&offer.own, key_of("mallory")),
            Err(RelayError::NotYours)
        ));
        assert!(matches!(
            relays.claim(&offer.own, key_of("b")),
            Err(RelayError::NotYours)
        ));
        let a = offer.own;
        assert!(matches!(
            relays.offer(&asker("a"), &id("c"), key_of("c"), 1000),
            Err(RelayError::Full(1))
        ));
        assert!(relays.claim(&a, key_of("a")).is_ok());
        assert!(matches!(
            relays.claim(&a, key_of("a")),
            Err(RelayError::UnknownToken)
        ));
        assert!(matches!(
            relays.claim("0123", key_of("a")),
            Err(RelayError::UnknownToken)
        ));
        assert!(matches!(
            Relays::new(4).offer(&asker("a"), &id("b"), key_of("b"), 0),
            Err(RelayError::Disabled)
        ));
    }

    #[test]
    fn two_devices_asking_at_once_share_one_relay_with_one_dialler() {
        let relays = Relays::new(4);
        let first = relays
            .offer(&asker("a"), &id("b"), key_of("b"), 1000)
            .unwrap();
        let second = relays
            .offer(&asker("b"), &id("a"), key_of("a"), 1000)
            .unwrap();
        assert_eq!(second.own, first.theirs);
        assert_eq!(second.theirs, first.own);
        assert!(first.own_dials && !second.own_dials);
    }

    #[test]
    fn a_device_has_few_offers_pending() {
        let relays = Relays::new(1024);
        for peer in 0..MAX_PENDING_PER_DEVICE {
            relays
                .offer(&asker("a"), &id(&format!("p{peer}")), key_of("t"), 1000)
                .unwrap();
        }
        assert!(matches!(
            relays.offer(&asker("a"), &id("late"), key_of("late"), 1000),
            Err(RelayError::Full(_))
        ));
    }

    #[test]
    fn many_ids_from_one_address_cannot_take_every_slot() {
        let relays = Relays::new(1024);
        // 128 ids from one address, each asking for 8 relays.
        let mut granted = 0;
        for device in 0..128 {
            for peer in 0..8 {
                let asker = asker_from(&format!("fake{device}"), "203.0.113.66");
                if relays
                    .offer(&asker, &id(&format!("t{device}x{peer}")), key_of("t"), 1000)
                    .is_ok()
                {
                    granted += 1;
                }
            }
        }
        assert_eq!(granted, 1024 / 4, "one address gets a quarter");
        // A real device elsewhere still gets its relay.
        let real = asker_from("real", "203.0.113.7");
        assert!(
            relays
                .offer(&real, &id("friend"), key_of("friend"), 1000)
                .is_ok()
        );
        // One device gets a sixteenth, even from many addresses' worth of room.
        let relays = Relays::new(64);
        let hog = asker("hog");
        for peer in 0..4 {
            relays
                .offer(&hog, &id(&format!("p{peer}")), key_of("t"), 1000)
                .unwrap();
        }
        assert!(matches!(
            relays.offer(&hog, &id("p4"), key_of("p4"), 1000),
            Err(RelayError::Share { share: 4, .. })
        ));
    }

    #[tokio::test]
    async fn a_relay_holds_its_share_while_it_runs_and_gives_it_back() {
        let relays = Arc::new(Relays::new(16));
        let offer = relays
            .offer(&asker("a"), &id("b"), key_of("b"), 1 << 30)
            .unwrap();
        assert!(matches!(
            relays.offer(&asker("a"), &id("c"), key_of("c"), 1 << 30),
            Err(RelayError::Share { share: 1, .. })
        ));
        let (claim_a, claim_b) = (
            relays.claim(&offer.own, key_of("a")).unwrap(),
            relays.claim(&offer.theirs, key_of("b")).unwrap(),
        );
        let (a_end, a_hub) = tokio::io::duplex(1024);
        let (b_end, b_hub) = tokio::io::duplex(1024);
        let stop = CancellationToken::new();
        let first = tokio::spawn({
            let (relays, stop) = (relays.clone(), stop.clone());
            async move { relays.join(claim_a, a_hub, || 1 << 30, stop).await }
        });
        let second = tokio::spawn({
            let (relays, stop) = (relays.clone(), stop.clone());
            async move { relays.join(claim_b, b_hub, || 1 << 30, stop).await }
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            while relays.active() == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert!(
            relays
                .offer(&asker("a"), &id("c"), key_of("c"), 1 << 30)
                .is_err(),
            "still held"
        );
        drop((a_end, b_end));
        first.await.unwrap();
        second.await.unwrap();
        assert!(
            relays
                .offer(&asker("a"), &id("c"), key_of("c"), 1 << 30)
                .is_ok(),
            "given back"
        );
    }

    #[tokio::test]
    async fn two_sides_are_spliced_and_bytes_cross_unchanged() {
        let relays = Arc::new(Relays::new(4));
        let offer = relays
            .offer(&asker("a"), &id("b"), key_of("b"), 1 << 30)
            .unwrap();
        let (ta, tb) = (offer.own, offer.theirs);
        let (mut a_end, a_hub) = tokio::io::duplex(1 << 16);
        let (mut b_end, b_hub) = tokio::io::duplex(1 << 16);
        let stop = CancellationToken::new();
        let claim_a = relays.claim(&ta, key_of("a")).unwrap();
        let claim_b = relays.claim(&tb, key_of("b")).unwrap();
        let first = tokio::spawn({
            let relays = relays.clone();
            let stop = stop.clone();
            async move { relays.join(claim_a, a_hub, || 1 << 30, stop).await }
        });
        let second = tokio::spawn({
            let relays = relays.clone();
            async move { relays.join(claim_b, b_hub, || 1 << 30, stop).await }
        });
        a_end.write_all(b"sealed bytes").await.unwrap();
        let mut got = [0; 12];
        b_end.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"sealed bytes");
        b_end.write_all(b"back").await.unwrap();
        let mut back = [0; 4];
        a_end.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
        drop(a_end);
        drop(b_end);
        first.await.unwrap();
        second.await.unwrap();
        assert_eq!(relays.active(), 0);
    }

    #[tokio::test]
    async fn a_bucket_holds_a_sender_to_its_rate() {
        let bucket = Bucket::new();
        let start = tokio::time::Instant::now();
        // One second's burst at once, then three tenths of a second more.
        bucket.take(100_000, 100_000).await;
        assert!(start.elapsed() < Duration::from_millis(100));
        for _ in 0..3 {
            bucket.take(10_000, 100_000).await;
        }
        assert!(start.elapsed() >= Duration::from_millis(280));
    }
}
