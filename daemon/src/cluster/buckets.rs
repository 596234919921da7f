//! The cluster's JetStream key-value buckets, and how ids become keys.
//!
//! Buckets are made as the streams they are (`KV_<bucket>`, the layout of
//! the key-value store), then opened: async-nats' own bucket creation asks
//! the server for account fields that NATS 2.9 (Debian 12's nats-server)
//! does not send, and fails there. Making the stream again with the same
//! settings is a no-op, so every hub makes every bucket when it connects.

use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::kv::Store;
use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};

use super::ClusterError;

/// The hubs of the cluster (docs/cluster.md, "Membership").
pub const HUBS: &str = "meshd_hubs";

/// Device ids bound to keys across the cluster (docs/cluster.md, "Key
/// bindings"): kept for ever, like a hub's `signaling-keys`.
pub const BINDINGS: &str = "meshd_bindings";

/// The devices each hub lists (docs/cluster.md, "The shared list"), keyed
/// `<hub>.<device>`.
pub const DEVICES: &str = "meshd_devices";

/// The key of `device` as `hub` lists it.
pub fn device_key(hub: &str, device: &str) -> String {
    format!("{}.{}", key_of(hub), key_of(device))
}

/// The hub and device ids of a [`device_key`].
pub fn parse_device_key(key: &str) -> Option<(String, String)> {
    let (hub, device) = key.split_once('.')?;
    (!hub.is_empty() && !device.is_empty() && !device.contains('.'))
        .then(|| (id_of(hub), id_of(device)))
}

/// A bucket's key for a device or hub id. Ids are `[A-Za-z0-9._-]`; in a
/// key every `.` would start a new subject token, so it becomes `=`, which
/// no id holds: the mapping is one to one.
pub fn key_of(id: &str) -> String {
    id.replace('.', "=")
}

/// The id a key stands for.
pub fn id_of(key: &str) -> String {
    key.replace('=', ".")
}

/// Makes bucket `name` (if it is not there) and opens it: `history` values
/// per key, each kept `max_age` (zero: for ever), on disk.
pub async fn ensure(
    js: &Context,
    name: &str,
    history: i64,
    max_age: Duration,
) -> Result<Store, ClusterError> {
    let config = Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: history,
        max_age,
        storage: StorageType::File,
        num_replicas: 1,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        discard: DiscardPolicy::New,
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|error| ClusterError::Bucket {
            bucket: name.to_owned(),
            reason: error.to_string(),
        })?;
    js.get_key_value(name)
        .await
        .map_err(|error| ClusterError::Bucket {
            bucket: name.to_owned(),
            reason: error.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_to_single_token_keys_and_back() {
        for id in ["laptop", "a.b.c", "x-1_y", "..."] {
            let key = key_of(id);
            assert!(!key.contains('.'), "{key}");
            assert_eq!(id_of(&key), id);
        }
        let key = device_key("hub.1", "lap.top");
        assert_eq!(key, "hub=1.lap=top");
        assert_eq!(
            parse_device_key(&key),
            Some(("hub.1".to_owned(), "lap.top".to_owned()))
        );
        for bad in ["nodot", ".x", "x.", "a.b.c"] {
            assert_eq!(parse_device_key(bad), None, "{bad}");
        }
    }
}
