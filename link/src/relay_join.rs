//! Joining a relay: the device proves its key to the hub (and the hub its
//! key to the device) with the hub handshake, and hands over the one-time
//! token inside it. The hub admits the join only if the token was issued to
//! the device whose key was just proven, so a token seen by someone else
//! (a log, a proxy) is worthless to them, and answers with one encrypted
//! verdict. After an admission the stream is the device's again, for the
//! link handshake it runs end to end through the relay.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::LinkError;
use crate::handshake::{HANDSHAKE_TIMEOUT, read_message, write_message};
use crate::hub_handshake::{self, Purpose};
use crate::identity::{KEY_LEN, StaticKey};

/// The longest refusal text the hub sends.
const MAX_VERDICT_BYTES: usize = 512;

/// AEAD tag size: a verdict message is its text plus this.
const TAG_BYTES: usize = 16;

/// The device's side: proves `local`, presents `token`, and returns the
/// stream once the hub admitted it, with the key the hub proved.
pub async fn join<S>(
    mut stream: S,
    local: &StaticKey,
    token: &str,
    expected_hub: Option<&[u8; KEY_LEN]>,
) -> Result<(S, [u8; KEY_LEN]), LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let side = hub_handshake::initiate(
        &mut stream,
        local,
        Purpose::Relay,
        token.as_bytes(),
        expected_hub,
    )
    .await?;
    let verdict = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        read_message(&mut stream, MAX_VERDICT_BYTES + TAG_BYTES),
    )
    .await
    .map_err(|_| LinkError::Timeout)??;
    let mut text = [0u8; MAX_VERDICT_BYTES + TAG_BYTES];
    let len = side
        .transport
        .read_message(0, &verdict, &mut text)
        .map_err(|_| LinkError::Decrypt)?;
    if len == 0 {
        return Ok((stream, side.hub_key));
    }
    Err(LinkError::Refused(
        String::from_utf8_lossy(&text[..len]).into_owned(),
    ))
}

/// A join whose handshake is done and whose token the hub now checks.
pub struct PendingJoin<S> {
    stream: S,
    transport: snow::StatelessTransportState,
    /// The token the device presented.
    pub token: String,
    /// The key the device proved.
    pub device_key: [u8; KEY_LEN],
}

/// The hub's side of the handshake, proving `hub_key`.
pub async fn accept<S>(mut stream: S, hub_key: &StaticKey) -> Result<PendingJoin<S>, LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let side = hub_handshake::respond(&mut stream, hub_key, Purpose::Relay).await?;
    let token = String::from_utf8(side.payload)
        .map_err(|_| LinkError::Handshake("malformed relay token".to_owned()))?;
    Ok(PendingJoin {
        stream,
        transport: side.transport,
        token,
        device_key: side.device_key,
    })
}

impl<S: AsyncWrite + Unpin> PendingJoin<S> {
    /// Admits the device: the stream is now the relay's to splice.
    pub async fn admit(mut self) -> Result<S, LinkError> {
        self.verdict("").await?;
        Ok(self.stream)
    }

    /// Refuses the device, saying why (at most 512 bytes of it).
    pub async fn refuse(mut self, reason: &str) -> Result<(), LinkError> {
        let mut end = reason.len().min(MAX_VERDICT_BYTES);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.verdict(&reason[..end]).await
    }

    async fn verdict(&mut self, text: &str) -> Result<(), LinkError> {
        let mut sealed = [0u8; MAX_VERDICT_BYTES + TAG_BYTES];
        let len = self
            .transport
            .write_message(0, text.as_bytes(), &mut sealed)
            .map_err(|error| LinkError::Handshake(error.to_string()))?;
        write_message(&mut self.stream, &sealed[..len]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn an_admitted_device_gets_its_stream_back_for_the_link() {
        let (a, b) = tokio::io::duplex(4096);
        let device = StaticKey::generate().unwrap();
        let device_public = *device.public();
        let hub = StaticKey::generate().unwrap();
        let hub_public = *hub.public();
        let joining = tokio::spawn(async move {
            let (mut stream, proved) = join(a, &device, "t0k3n", Some(&hub_public)).await?;
            stream.write_all(b"link bytes").await?;
            Ok::<_, LinkError>(proved)
        });
        let pending = accept(b, &hub).await.unwrap();
        assert_eq!(pending.token, "t0k3n");
        assert_eq!(pending.device_key, device_public);
        let mut stream = pending.admit().await.unwrap();
        assert_eq!(joining.await.unwrap().unwrap(), hub_public);
        let mut after = [0u8; 10];
        stream.read_exact(&mut after).await.unwrap();
        assert_eq!(&after, b"link bytes");
    }

    #[tokio::test]
    async fn a_refused_device_is_told_why() {
        let (a, b) = tokio::io::duplex(4096);
        let device = StaticKey::generate().unwrap();
        let hub = StaticKey::generate().unwrap();
        let joining = tokio::spawn(async move { join(a, &device, "stolen", None).await });
        let pending = accept(b, &hub).await.unwrap();
        pending.refuse("that token is not yours").await.unwrap();
        match joining.await.unwrap() {
            Err(LinkError::Refused(reason)) => assert_eq!(reason, "that token is not yours"),
            other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
        }
    }

    #[tokio::test]
    async fn a_hub_with_another_key_never_sees_the_token() {
        let (a, b) = tokio::io::duplex(4096);
        let device = StaticKey::generate().unwrap();
        let pinned = *StaticKey::generate().unwrap().public();
        let impostor = StaticKey::generate().unwrap();
        let joining = tokio::spawn(async move { join(a, &device, "t0k3n", Some(&pinned)).await });
        // The impostor's side fails: the device never sends the third
        // message, which carries the token.
        assert!(accept(b, &impostor).await.is_err());
        assert!(matches!(
            joining.await.unwrap(),
            Err(LinkError::UnexpectedHubKey { .. })
        ));
    }

    #[tokio::test]
    async fn a_channel_handshake_is_not_a_relay_join() {
        let (a, b) = tokio::io::duplex(4096);
        let device = StaticKey::generate().unwrap();
        let hub = StaticKey::generate().unwrap();
        tokio::spawn(async move { crate::channel::open(a, &device, "alpha", None).await });
        assert!(accept(b, &hub).await.is_err());
    }
}
