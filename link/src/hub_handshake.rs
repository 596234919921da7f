//! The handshake every connection from a device to a hub begins with:
//! `Noise_XX`, in which both sides prove their static keys.
//!
//! XX rather than IK or XK because a device may meet a hub for the first
//! time (trust on first use) and still needs the hub's key proven before it
//! says anything about itself. The hub's static key arrives, encrypted, in
//! the second message; the device compares it with the key it pinned (or
//! learns it) *before* it writes the third message, which carries its own
//! static key and the payload (its id, or a relay token). A device that
//! finds the wrong key closes: the impostor learns neither the device's
//! key nor its id.
//!
//! What the connection is for is bound into the handshake hash through the
//! prologue, so a channel handshake can never be replayed as a relay join.

use snow::params::NoiseParams;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::LinkError;
use crate::handshake::{HANDSHAKE_TIMEOUT, read_message, write_message};
use crate::identity::{KEY_LEN, StaticKey};

/// The protocol name; a change here is a new, incompatible hub protocol.
const NOISE: &str = "Noise_XX_25519_AESGCM_BLAKE2s";

/// The largest payload the device's last message may carry.
pub(crate) const MAX_PAYLOAD_BYTES: usize = 128;

/// Largest handshake message: keys, tags and a maximal payload.
const MAX_HANDSHAKE_BYTES: usize = 256;

/// What a connection to a hub is for; each has its own prologue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// The long-lived hub channel; the payload is the device id.
    Channel,
    /// Joining a relay; the payload is the relay token.
    Relay,
}

impl Purpose {
    fn prologue(self) -> &'static [u8] {
        match self {
            Purpose::Channel => b"meshd channel 2",
            Purpose::Relay => b"meshd relay 2",
        }
    }
}

fn params() -> NoiseParams {
    NOISE
        .parse()
        .unwrap_or_else(|_| unreachable!("{NOISE} is a valid Noise protocol name"))
}

fn noise_error(error: snow::Error) -> LinkError {
    LinkError::Handshake(error.to_string())
}

/// What the device learns: the session, and the key the hub proved.
pub(crate) struct DeviceSide {
    pub transport: snow::StatelessTransportState,
    pub hub_key: [u8; KEY_LEN],
}

/// What the hub learns: the session, the device's proven key and its
/// payload.
pub(crate) struct HubSide {
    pub transport: snow::StatelessTransportState,
    pub device_key: [u8; KEY_LEN],
    pub payload: Vec<u8>,
}

/// The device's side. With `expected`, a hub that proves any other key is
/// refused before the device reveals itself ([`LinkError::UnexpectedHubKey`]).
pub(crate) async fn initiate<S>(
    stream: &mut S,
    local: &StaticKey,
    purpose: Purpose,
    payload: &[u8],
    expected: Option<&[u8; KEY_LEN]>,
) -> Result<DeviceSide, LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(LinkError::Handshake(format!(
            "handshake payload of {} bytes, at most {MAX_PAYLOAD_BYTES}",
            payload.len()
        )));
    }
    let exchange = async {
        let mut noise = snow::Builder::new(params())
            .local_private_key(local.private())
            .and_then(|builder| builder.prologue(purpose.prologue()))
            .and_then(|builder| builder.build_initiator())
            .map_err(noise_error)?;
        let mut buffer = [0u8; MAX_HANDSHAKE_BYTES];
        let len = noise.write_message(&[], &mut buffer).map_err(noise_error)?;
        write_message(stream, &buffer[..len]).await?;
        let answer = read_message(stream, MAX_HANDSHAKE_BYTES).await?;
        let mut scratch = [0u8; MAX_HANDSHAKE_BYTES];
        noise
            .read_message(&answer, &mut scratch)
            .map_err(noise_error)?;
        let hub_key: [u8; KEY_LEN] = noise
            .get_remote_static()
            .and_then(|key| key.try_into().ok())
            .ok_or_else(|| LinkError::Handshake("no static key from the hub".to_owned()))?;
        if let Some(expected) = expected
            && *expected != hub_key
        {
            return Err(LinkError::UnexpectedHubKey {
                proved: Box::new(hub_key),
            });
        }
        let len = noise
            .write_message(payload, &mut buffer)
            .map_err(noise_error)?;
        write_message(stream, &buffer[..len]).await?;
        let transport = noise.into_stateless_transport_mode().map_err(noise_error)?;
        Ok::<_, LinkError>(DeviceSide { transport, hub_key })
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| LinkError::Timeout)?
}

/// The hub's side, proving `hub_key`.
pub(crate) async fn respond<S>(
    stream: &mut S,
    hub_key: &StaticKey,
    purpose: Purpose,
) -> Result<HubSide, LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        let mut noise = snow::Builder::new(params())
            .local_private_key(hub_key.private())
            .and_then(|builder| builder.prologue(purpose.prologue()))
            .and_then(|builder| builder.build_responder())
            .map_err(noise_error)?;
        let mut payload = [0u8; MAX_HANDSHAKE_BYTES];
        let first = read_message(stream, MAX_HANDSHAKE_BYTES).await?;
        noise
            .read_message(&first, &mut payload)
            .map_err(noise_error)?;
        let mut buffer = [0u8; MAX_HANDSHAKE_BYTES];
        let len = noise.write_message(&[], &mut buffer).map_err(noise_error)?;
        write_message(stream, &buffer[..len]).await?;
        let third = read_message(stream, MAX_HANDSHAKE_BYTES).await?;
        let len = noise
            .read_message(&third, &mut payload)
            .map_err(noise_error)?;
        if len > MAX_PAYLOAD_BYTES {
            return Err(LinkError::Handshake(format!(
                "handshake payload of {len} bytes, at most {MAX_PAYLOAD_BYTES}"
            )));
        }
        let device_key: [u8; KEY_LEN] = noise
            .get_remote_static()
            .and_then(|key| key.try_into().ok())
            .ok_or_else(|| LinkError::Handshake("no static key from the device".to_owned()))?;
        let transport = noise.into_stateless_transport_mode().map_err(noise_error)?;
        Ok::<_, LinkError>(HubSide {
            transport,
            device_key,
            payload: payload[..len].to_vec(),
        })
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| LinkError::Timeout)?
}
