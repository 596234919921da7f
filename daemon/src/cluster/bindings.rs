//! Key bindings across the cluster (docs/cluster.md, "Key bindings"): an id
//! new to a hub is bound in the `meshd_bindings` bucket with a create,
//! which only one hub can win; the others find the winner's key there.
//! A create that timed out may still have been applied, so finding the same
//! key there is a success too.

use std::time::Duration;

use async_nats::jetstream::kv::CreateErrorKind;

use async_nats::jetstream::kv::Store;

use super::{ClusterError, ClusterState, buckets};
use crate::device_id::DeviceId;
use crate::shared_list::{BindRefusal, SharedList};
use crate::sync::lock;

/// An operator's release gets this long to reach the cluster.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes this hub's bindings that the bucket lacks (made while the hub was
/// alone, or before it joined); one the bucket holds with another key is
/// the cluster's, and is logged.
pub async fn publish_local(store: &Store, shared: &dyn SharedList) -> Result<(), ClusterError> {
    for (id, key) in shared.local_bindings() {
        let entry = buckets::key_of(id.as_str());
        match store.create(&entry, key.clone().into()).await {
            Ok(_revision) => {}
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {
                let bound = store.get(&entry).await.map_err(|error| {
                    ClusterError::JetStream(format!("reading the binding of {id}: {error}"))
                })?;
                if bound
                    .as_ref()
                    .is_some_and(|bound| bound.as_ref() != key.as_bytes())
                {
                    tracing::warn!(device_id = %id, "this hub binds the id to another key than the cluster does; the cluster's binding wins at the other hubs: release one with meshctl devices remove");
                }
            }
            Err(error) => {
                return Err(ClusterError::JetStream(format!(
                    "writing the binding of {id}: {error}"
                )));
            }
        }
    }
    Ok(())
}

/// Binds `id` to `key` unless the cluster binds it to another key.
pub async fn bind(state: &ClusterState, id: &DeviceId, key: &str) -> Result<(), BindRefusal> {
    let Some(store) = lock(&state.bindings).clone() else {
        return Err(BindRefusal::Unavailable(
            "the cluster is unreachable".to_owned(),
        ));
    };
    let entry = buckets::key_of(id.as_str());
    match store.create(&entry, key.to_owned().into()).await {
        Ok(_revision) => return Ok(()),
        Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {}
        Err(error) => return Err(BindRefusal::Unavailable(error.to_string())),
    }
    match store.get(&entry).await {
        Ok(Some(bound)) if bound.as_ref() == key.as_bytes() => Ok(()),
        Ok(Some(bound)) => Err(BindRefusal::Conflict(
            String::from_utf8_lossy(&bound).into_owned(),
        )),
        // Released between the two calls: the next try creates it.
        Ok(None) => Err(BindRefusal::Unavailable(
            "the binding changed while it was read; try again".to_owned(),
        )),
        Err(error) => Err(BindRefusal::Unavailable(error.to_string())),
    }
}

/// Releases `id` across the cluster, in the background.
pub fn release(state: &ClusterState, id: &DeviceId) {
    let Some(store) = lock(&state.bindings).clone() else {
        tracing::warn!(device_id = %id, "cluster unreachable: the binding was released on this hub only; run the removal again when the cluster is back");
        return;
    };
    let entry = buckets::key_of(id.as_str());
    let id = id.clone();
    state.tracker.spawn(async move {
            match tokio::time::timeout(RELEASE_TIMEOUT, store.delete(&entry)).await {
                Ok(Ok(())) => tracing::info!(device_id = %id, "binding released across the cluster"),
                Ok(Err(error)) => tracing::warn!(device_id = %id, %error, "the binding was released on this hub, but not across the cluster; run the removal again"),
                Err(_) => tracing::warn!(device_id = %id, "the binding was released on this hub, but the cluster did not answer; run the removal again"),
            }
        });
}
