//! The device registry: who is registered, where, and which key owns each id.
//!
//! Pure and synchronous: no I/O, no clock of its own (callers pass `now`), so
//! the TTL and binding rules are unit-tested here. Both maps are bounded by
//! `max_devices`.
//!
//! Only a key a device *proved* (over its hub channel) binds its id. A
//! binding outlives its device's expiry, so an id cannot be taken over by
//! another key by waiting for the owner to go quiet; only `meshctl devices
//! remove` on the hub releases it. A plain HTTP registration only *claims*
//! a key: the claim holds the id against other claims while it is live and
//! expires with it, and a proof beats it. So nobody can fill the bindings
//! with keys they do not hold (docs/security.md).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use crate::device_id::DeviceId;
use crate::public_key::PublicKey;

/// A request to register (or refresh) a device, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The device id.
    pub id: DeviceId,
    /// The address the device asks peers to use.
    pub addr: SocketAddr,
    /// Its identity key, if it has one.
    pub pubkey: Option<PublicKey>,
    /// Further addresses where it may be reached.
    pub endpoints: Vec<SocketAddr>,
}

/// How a registration's key is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// The device proved it holds the key (its hub channel's handshake).
    Proven,
    /// The key (if any) is only what the request said (`POST /register`).
    Claimed,
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// What the device sent.
    pub registration: Registration,
    /// Whether its key is proven.
    pub proof: Proof,
    /// The source address of its last registration.
    pub observed: SocketAddr,
    /// Wall-clock time of the last registration, for display.
    pub last_seen: SystemTime,
    /// Monotonic time of the last registration, for expiry.
    last_seen_at: Instant,
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The id is bound to a different key (or to a key, and none was sent).
    #[error("device id {0:?} is bound to another public key")]
    KeyConflict(DeviceId),
    /// A live claim holds the id with another key (or none).
    #[error("device id {0:?} is claimed with another public key")]
    Claimed(DeviceId),
    /// A claim for an id whose key a device proved: only that device may
    /// register it, over its channel.
    #[error(
        "device id {0:?} is bound to a key its device proved; only that device can register it"
    )]
    Proven(DeviceId),
    /// The registry holds `max_devices` ids already.
    #[error("the registry is full ({0} devices)")]
    Full(usize),
}

/// What `remove` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// The device was listed.
    pub was_registered: bool,
    /// A key was bound to the id.
    pub had_binding: bool,
}

/// Devices and key bindings, both bounded.
#[derive(Debug)]
pub struct Registry {
    devices: HashMap<DeviceId, Device>,
    bindings: HashMap<DeviceId, PublicKey>,
    /// Counts changes to `bindings`, so the persister knows when to write.
    bindings_generation: u64,
    max_devices: usize,
    /// Devices that left or expired, as they were last listed, so the web
    /// console can show them offline (at most [`MAX_DEPARTED`]; an id that
    /// registers again leaves it).
    departed: HashMap<DeviceId, Device>,
}

/// Departed devices remembered at most; the longest gone are forgotten
/// first.
pub const MAX_DEPARTED: usize = 1024;

impl Registry {
    /// An empty registry holding at most `max_devices` ids.
    pub fn new(max_devices: usize) -> Self {
        Registry {
            devices: HashMap::new(),
            bindings: HashMap::new(),
            bindings_generation: 0,
            max_devices,
            departed: HashMap::new(),
        }
    }

    /// Restores bindings saved by an earlier run.
    pub fn restore_bindings(&mut self, bindings: Vec<(DeviceId, PublicKey)>) {
        self.bindings.extend(bindings);
        self.bindings_generation += 1;
    }

    /// The bindings, sorted by id, with the generation they belong to.
    pub fn bindings(&self) -> (u64, Vec<(DeviceId, PublicKey)>) {
        let mut bindings: Vec<(DeviceId, PublicKey)> = self
            .bindings
            .iter()
            .map(|(id, key)| (id.clone(), *key))
            .collect();
        bindings.sort_by(|a, b| a.0.cmp(&b.0));
        (self.bindings_generation, bindings)
    }

    /// Changes whenever a binding is added or removed.
    pub fn bindings_generation(&self) -> u64 {
        self.bindings_generation
    }

    /// Changes the bound; existing entries stay even if over it.
    pub fn set_max_devices(&mut self, max_devices: usize) {
        self.max_devices = max_devices;
    }

    /// Registers or refreshes a device. A [`Proof::Proven`] registration
    /// binds its id to its key; a [`Proof::Claimed`] one never binds.
    pub fn register(
        &mut self,
        registration: Registration,
        proof: Proof,
        observed: SocketAddr,
        now: Instant,
        wall: SystemTime,
        ttl: Duration,
    ) -> Result<&Device, RegisterError> {
        let id = registration.id.clone();
        let sent = registration.pubkey;
        match (proof, self.bindings.get(&id)) {
            (Proof::Proven, Some(bound)) if Some(*bound) != sent => {
                return Err(RegisterError::KeyConflict(id));
            }
            (Proof::Proven, _) => {}
            (Proof::Claimed, Some(_)) => return Err(RegisterError::Proven(id)),
            (Proof::Claimed, None) => {
                let held = self
                    .devices
                    .get(&id)
                    .filter(|device| is_live(device, now, ttl));
                if held.is_some_and(|device| device.registration.pubkey != sent) {
                    return Err(RegisterError::Claimed(id));
                }
            }
        }
        let is_new = !self.devices.contains_key(&id);
        let binds = proof == Proof::Proven && !self.bindings.contains_key(&id);
        if (is_new && self.devices.len() >= self.max_devices)
            || (binds && self.bindings.len() >= self.max_devices)
        {
            self.sweep(now, ttl);
        }
        if (is_new && self.devices.len() >= self.max_devices)
            || (binds && self.bindings.len() >= self.max_devices)
        {
            return Err(RegisterError::Full(self.max_devices));
        }
        if proof == Proof::Proven
            && let Some(key) = sent
            && self.bindings.insert(id.clone(), key).is_none()
        {
            self.bindings_generation += 1;
        }
        let device = Device {
            registration,
            proof,
            observed,
            last_seen: wall,
            last_seen_at: now,
        };
        if is_new {
            self.departed.remove(&id);
        }
        Ok(self.devices.entry(id).insert_entry(device).into_mut())
    }

    /// Every device heard from within `ttl`, sorted by id.
    pub fn list(&self, now: Instant, ttl: Duration) -> Vec<Device> {
        let mut live: Vec<Device> = self
            .devices
            .values()
            .filter(|device| is_live(device, now, ttl))
            .cloned()
            .collect();
        live.sort_by(|a, b| a.registration.id.cmp(&b.registration.id));
        live
    }

    /// The device `id`, if registered and not expired.
    pub fn live(&self, id: &DeviceId, now: Instant, ttl: Duration) -> Option<&Device> {
        self.devices
            .get(id)
            .filter(|device| is_live(device, now, ttl))
    }

    /// The key `id` is bound to, if any.
    pub fn binding(&self, id: &DeviceId) -> Option<PublicKey> {
        self.bindings.get(id).copied()
    }

    /// How many devices are live.
    pub fn live_count(&self, now: Instant, ttl: Duration) -> usize {
        self.devices
            .values()
            .filter(|device| is_live(device, now, ttl))
            .count()
    }

    /// Forgets a device and its key binding.
    pub fn remove(&mut self, id: &DeviceId) -> Removed {
        let had_binding = self.bindings.remove(id).is_some();
        if had_binding {
            self.bindings_generation += 1;
        }
        // An operator's removal is meant to forget the device entirely.
        self.departed.remove(id);
        Removed {
            was_registered: self.devices.remove(id).is_some(),
            had_binding,
        }
    }

    /// Forgets the key binding of `id` only (another hub released it);
    /// whether there was one.
    pub fn release_binding(&mut self, id: &DeviceId) -> bool {
        let had = self.bindings.remove(id).is_some();
        if had {
            self.bindings_generation += 1;
        }
        had
    }

    /// Takes a device off the list, keeping its key binding (it left, and
    /// will be back with the same key); whether it was listed.
    pub fn deregister(&mut self, id: &DeviceId) -> bool {
        match self.devices.remove(id) {
            Some(device) => {
                self.remember_departed(device);
                true
            }
            None => false,
        }
    }

    /// Devices that left or expired and were last seen after `since`,
    /// sorted by id.
    pub fn departed(&self, since: SystemTime) -> Vec<Device> {
        let mut departed: Vec<Device> = self
            .departed
            .values()
            .filter(|device| device.last_seen >= since)
            .cloned()
            .collect();
        departed.sort_by(|a, b| a.registration.id.cmp(&b.registration.id));
        departed
    }

    fn remember_departed(&mut self, device: Device) {
        if self.departed.len() >= MAX_DEPARTED
            && let Some(oldest) = self
                .departed
                .values()
                .min_by_key(|device| device.last_seen_at)
                .map(|device| device.registration.id.clone())
        {
            self.departed.remove(&oldest);
        }
        self.departed.insert(device.registration.id.clone(), device);
    }

    /// Drops expired devices (bindings stay) and returns their ids.
    pub fn sweep(&mut self, now: Instant, ttl: Duration) -> Vec<DeviceId> {
        let expired: Vec<DeviceId> = self
            .devices
            .values()
            .filter(|device| !is_live(device, now, ttl))
            .map(|device| device.registration.id.clone())
            .collect();
        for id in &expired {
            if let Some(device) = self.devices.remove(id) {
                self.remember_departed(device);
            }
        }
        expired
    }
}

fn is_live(device: &Device, now: Instant, ttl: Duration) -> bool {
    now.saturating_duration_since(device.last_seen_at) < ttl
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    fn reg(id: &str, key: Option<u8>) -> Registration {
        Registration {
            id: DeviceId::parse(id).unwrap(),
            addr: "192.0.2.7:8082".parse().unwrap(),
            pubkey: key.map(|k| PublicKey::from_base64(&base64_of(k)).unwrap()),
            endpoints: Vec::new(),
        }
    }

    fn base64_of(byte: u8) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([byte; 32])
    }

    fn observed() -> SocketAddr {
        "198.51.100.1:4000".parse().unwrap()
    }

    impl Registry {
        fn register_claim(
            &mut self,
            registration: Registration,
            observed: SocketAddr,
            now: Instant,
            wall: SystemTime,
            ttl: Duration,
        ) -> Result<&Device, RegisterError> {
            self.register(registration, Proof::Claimed, observed, now, wall, ttl)
        }

        fn register_proven(
            &mut self,
            registration: Registration,
            now: Instant,
            ttl: Duration,
        ) -> Result<&Device, RegisterError> {
            let wall = SystemTime::now();
            self.register(registration, Proof::Proven, observed(), now, wall, ttl)
        }
    }

    #[test]
    fn registers_refreshes_and_expires() {
        let mut registry = Registry::new(10);
        let t0 = Instant::now();
        let wall = SystemTime::now();
        registry
            .register_claim(reg("b", None), observed(), t0, wall, TTL)
            .unwrap();
        registry
            .register_claim(reg("a", None), observed(), t0, wall, TTL)
            .unwrap();
        let ids: Vec<String> = registry
            .list(t0, TTL)
            .iter()
            .map(|d| d.registration.id.to_string())
            .collect();
        assert_eq!(ids, ["a", "b"]);

        // A heartbeat from "a" keeps it; "b" expires.
        let later = t0 + Duration::from_secs(50);
        registry
            .register_claim(reg("a", None), observed(), later, wall, TTL)
            .unwrap();
        let at_70 = t0 + Duration::from_secs(70);
        assert_eq!(registry.live_count(at_70, TTL), 1);
        let swept = registry.sweep(at_70, TTL);
        assert_eq!(swept, vec![DeviceId::parse("b").unwrap()]);
    }

    #[test]
    fn departed_devices_are_remembered_bounded_until_they_return() {
        let mut registry = Registry::new(MAX_DEPARTED * 2);
        let t0 = Instant::now();
        let wall = SystemTime::now();
        for n in 0..MAX_DEPARTED + 5 {
            let at = t0 + Duration::from_millis(n as u64);
            registry
                .register_claim(reg(&format!("d{n}"), None), observed(), at, wall, TTL)
                .unwrap();
        }
        assert!(registry.deregister(&DeviceId::parse("d0").unwrap()));
        assert_eq!(registry.departed(wall).len(), 1);
        // Everyone else expires: the longest gone (d0) is forgotten first.
        registry.sweep(t0 + TTL * 2, TTL);
        let departed = registry.departed(wall);
        assert_eq!(departed.len(), MAX_DEPARTED);
        let ids: Vec<String> = departed
            .iter()
            .map(|d| d.registration.id.to_string())
            .collect();
        assert!(!ids.contains(&"d0".to_owned()) && ids.contains(&"d1028".to_owned()));
        // Only those seen after `since` are shown.
        assert!(registry.departed(wall + Duration::from_secs(1)).is_empty());
        // Back again: listed, not departed; removed: forgotten entirely.
        let back = t0 + TTL * 3;
        registry
            .register_claim(reg("d1028", None), observed(), back, wall, TTL)
            .unwrap();
        registry.remove(&DeviceId::parse("d1027").unwrap());
        let ids: Vec<String> = registry
            .departed(wall)
            .iter()
            .map(|d| d.registration.id.to_string())
            .collect();
        assert!(!ids.contains(&"d1028".to_owned()) && !ids.contains(&"d1027".to_owned()));
        assert_eq!(ids.len(), MAX_DEPARTED - 2);
    }

    #[test]
    fn an_id_stays_bound_to_its_first_proven_key() {
        let mut registry = Registry::new(10);
        let now = Instant::now();
        let wall = SystemTime::now();
        registry
            .register_proven(reg("a", Some(1)), now, TTL)
            .unwrap();
        assert_eq!(
            registry
                .binding(&DeviceId::parse("a").unwrap())
                .map(|k| k.as_bytes()[0]),
            Some(1)
        );
        assert!(matches!(
            registry.register_proven(reg("a", Some(2)), now, TTL),
            Err(RegisterError::KeyConflict(_))
        ));
        // No claim touches a proven id, not even with its (public) key.
        for key in [Some(1), Some(2), None] {
            assert!(matches!(
                registry.register_claim(reg("a", key), observed(), now, wall, TTL),
                Err(RegisterError::Proven(_))
            ));
        }
        // Expiry does not release the binding.
        let much_later = now + TTL * 10;
        registry.sweep(much_later, TTL);
        assert!(
            registry
                .register_proven(reg("a", Some(2)), much_later, TTL)
                .is_err()
        );
        assert!(
            registry
                .register_proven(reg("a", Some(1)), much_later, TTL)
                .is_ok()
        );
        // Removal does.
        let removed = registry.remove(&DeviceId::parse("a").unwrap());
        assert!(removed.had_binding && removed.was_registered);
        assert!(
            registry
                .register_proven(reg("a", Some(2)), much_later, TTL)
                .is_ok()
        );
    }

    #[test]
    fn a_claim_binds_nothing_holds_while_live_and_yields_to_a_proof() {
        let mut registry = Registry::new(10);
        let now = Instant::now();
        let wall = SystemTime::now();
        let id = DeviceId::parse("c").unwrap();
        registry
            .register_claim(reg("c", Some(1)), observed(), now, wall, TTL)
            .unwrap();
        assert_eq!(registry.binding(&id), None);
        assert_eq!(registry.bindings_generation(), 0, "nothing to save");
        // While it is live, another claim with another key is refused...
        assert!(matches!(
            registry.register_claim(reg("c", Some(2)), observed(), now, wall, TTL),
            Err(RegisterError::Claimed(_))
        ));
        // ...and the same claim refreshes it.
        registry
            .register_claim(reg("c", Some(1)), observed(), now, wall, TTL)
            .unwrap();
        // Once it expired, the id is free for anyone.
        let later = now + TTL * 2;
        registry
            .register_claim(reg("c", Some(2)), observed(), later, wall, TTL)
            .unwrap();
        // A device that proves a key takes the id from a live claim.
        registry
            .register_proven(reg("c", Some(3)), later, TTL)
            .unwrap();
        assert_eq!(registry.binding(&id).map(|k| k.as_bytes()[0]), Some(3));
        assert_eq!(
            registry.live(&id, later, TTL).map(|d| d.proof),
            Some(Proof::Proven)
        );
    }

    #[test]
    fn claims_cannot_fill_the_bindings() {
        let mut registry = Registry::new(3);
        let now = Instant::now();
        let wall = SystemTime::now();
        for id in ["x", "y", "z"] {
            registry
                .register_claim(reg(id, Some(1)), observed(), now, wall, TTL)
                .unwrap();
        }
        assert_eq!(registry.bindings().1.len(), 0);
        // Once the claims expire, real devices get in.
        let later = now + TTL * 2;
        for id in ["a", "b", "c"] {
            registry
                .register_proven(reg(id, Some(4)), later, TTL)
                .unwrap();
        }
    }

    #[test]
    fn is_bounded_but_makes_room_from_expired_devices() {
        let mut registry = Registry::new(2);
        let now = Instant::now();
        let wall = SystemTime::now();
        registry
            .register_claim(reg("a", None), observed(), now, wall, TTL)
            .unwrap();
        registry
            .register_claim(reg("b", None), observed(), now, wall, TTL)
            .unwrap();
        assert_eq!(
            registry
                .register_claim(reg("c", None), observed(), now, wall, TTL)
                .unwrap_err(),
            RegisterError::Full(2)
        );
        // Refreshing an existing id is always possible.
        assert!(
            registry
                .register_claim(reg("a", None), observed(), now, wall, TTL)
                .is_ok()
        );
        let later = now + TTL * 2;
        assert!(
            registry
                .register_claim(reg("c", None), observed(), later, wall, TTL)
                .is_ok()
        );
    }
}
