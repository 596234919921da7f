//! A hub channel client for tests: what a device says to a hub, spoken by
//! hand (the HTTP upgrade on a raw socket, the hub handshake, JSON
//! messages), so tests can act as a device, an impostor or a thief.

use std::net::SocketAddr;
use std::time::Duration;

use meshd_link::channel::{ChannelReader, ChannelWriter};
use meshd_link::{LinkError, StaticKey};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

/// One open channel.
pub struct HubChannel {
    reader: ChannelReader<ReadHalf<TcpStream>>,
    writer: ChannelWriter<WriteHalf<TcpStream>>,
    /// The key the hub proved.
    pub hub_key: [u8; 32],
}

/// Sends the HTTP upgrade for `path` and reads the 101's head byte by byte,
/// so nothing after it is consumed.
pub async fn upgrade(addr: SocketAddr, path: &str, protocol: &str) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: hub\r\nConnection: upgrade\r\nUpgrade: {protocol}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await?);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        return Err(std::io::Error::other(head));
    }
    Ok(stream)
}

impl HubChannel {
    /// Opens a channel as `id` with `key`, trusting whatever key the hub
    /// proves unless `expected` is given: the current protocol, with
    /// deltas after the first whole list.
    pub async fn open(
        addr: SocketAddr,
        id: &str,
        key: &StaticKey,
        expected: Option<[u8; 32]>,
    ) -> Result<HubChannel, LinkError> {
        HubChannel::open_as(addr, id, key, expected, "meshd-channel/5").await
    }

    /// Opens a channel with the given upgrade `protocol`
    /// (`meshd-channel/2`: an older device, sent whole lists only).
    pub async fn open_as(
        addr: SocketAddr,
        id: &str,
        key: &StaticKey,
        expected: Option<[u8; 32]>,
        protocol: &str,
    ) -> Result<HubChannel, LinkError> {
        let stream = upgrade(addr, "/channel", protocol).await?;
        HubChannel::handshake(stream, id, key, expected).await
    }

    async fn handshake(
        stream: TcpStream,
        id: &str,
        key: &StaticKey,
        expected: Option<[u8; 32]>,
    ) -> Result<HubChannel, LinkError> {
        let (channel, hub_key) =
            meshd_link::channel::open(stream, key, id, expected.as_ref()).await?;
        let (reader, writer) = channel.split(64 << 20);
        Ok(HubChannel {
            reader,
            writer,
            hub_key,
        })
    }

    /// Sends one message.
    pub async fn send(&mut self, message: &Value) {
        self.writer
            .send(message.to_string().as_bytes())
            .await
            .expect("sending on the channel");
    }

    /// Sends one message; an error once the hub closed the channel.
    pub async fn try_send(&mut self, message: &Value) -> Result<(), LinkError> {
        self.writer.send(message.to_string().as_bytes()).await
    }

    /// The next message, within 10 s.
    pub async fn next(&mut self) -> Result<Value, LinkError> {
        let bytes = self.next_bytes().await?;
        Ok(serde_json::from_slice(&bytes).expect("JSON from the hub"))
    }

    /// The next message as the bytes the hub sent, within 10 s.
    pub async fn next_bytes(&mut self) -> Result<bytes::Bytes, LinkError> {
        tokio::time::timeout(Duration::from_secs(10), self.reader.next())
            .await
            .map_err(|_| LinkError::Timeout)?
    }

    /// Registers at `device_addr` with `join_token`; the hub's answer.
    pub async fn register(&mut self, device_addr: &str, join_token: &str) -> Value {
        self.send(&json!({
            "type": "register",
            "addr": device_addr,
            "endpoints": [],
            "join_token": join_token,
        }))
        .await;
        self.next().await.expect("an answer to the registration")
    }
}

/// A runtime for a synchronous test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Registers `id` with `key` over a channel and closes it; the answer.
pub fn register_proven(addr: SocketAddr, id: &str, key: &StaticKey, device_addr: &str) -> Value {
    runtime().block_on(async {
        let mut channel = HubChannel::open(addr, id, key, None)
            .await
            .expect("a channel to the hub");
        channel.register(device_addr, "").await
    })
}
