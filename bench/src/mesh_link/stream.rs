//! Throughput and round trips over one loopback connection: plain TCP with
//! `u32` length-prefixed frames, against a meshd link carrying the same
//! frames. Both sides batch up to 256 KiB per write, as the daemon's link
//! writer does.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use meshd_link::{Frame, Hello, StaticKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::median;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Bytes per write, for both contenders.
const BATCH_BYTES: usize = 256 * 1024;

/// Runs every measurement and prints the Markdown tables.
pub fn run(seconds: u64, round_trips: u32, repeat: usize) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let duration = Duration::from_secs(seconds);
    println!("| message size | plain TCP | meshd link | link / TCP |");
    println!("| --- | --- | --- | --- |");
    for size in [1024, 64 * 1024] {
        let mut tcp = Vec::new();
        let mut link = Vec::new();
        for _ in 0..repeat {
            tcp.push(runtime.block_on(throughput(Kind::Tcp, size, duration))?);
            link.push(runtime.block_on(throughput(Kind::Link, size, duration))?);
        }
        let (tcp, link) = (median(&mut tcp), median(&mut link));
        println!(
            "| {} KiB | {:.0} MB/s ({:.0} k msgs/s) | {:.0} MB/s ({:.0} k msgs/s) | {:.2} |",
            size / 1024,
            tcp / 1e6,
            tcp / size as f64 / 1e3,
            link / 1e6,
            link / size as f64 / 1e3,
            link / tcp
        );
    }
    println!();
    println!("| round trip, 64-byte ping | plain TCP | meshd link | link / TCP |");
    println!("| --- | --- | --- | --- |");
    let mut tcp = Vec::new();
    let mut link = Vec::new();
    for _ in 0..repeat {
        tcp.push(runtime.block_on(rtt(Kind::Tcp, round_trips))?);
        link.push(runtime.block_on(rtt(Kind::Link, round_trips))?);
    }
    for (name, index) in [("median", 0), ("p99", 1)] {
        let mut t: Vec<f64> = tcp.iter().map(|s: &[f64; 2]| s[index]).collect();
        let mut l: Vec<f64> = link.iter().map(|s: &[f64; 2]| s[index]).collect();
        let (t, l) = (median(&mut t), median(&mut l));
        println!("| {name} | {t:.1} µs | {l:.1} µs | {:.2} |", l / t);
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Kind {
    Tcp,
    Link,
}

/// A connected pair of one-way ends, plain or linked.
enum Sender {
    Tcp(TcpStream),
    Link(meshd_link::LinkWriter<tokio::io::WriteHalf<TcpStream>>),
}

enum Receiver {
    Tcp(BufReader<TcpStream>),
    Link(meshd_link::LinkReader<tokio::io::ReadHalf<TcpStream>>),
}

async fn connect(kind: Kind) -> Result<((Sender, Receiver), (Sender, Receiver)), Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (dialled, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (dialled, (accepted, _)) = (dialled?, accepted?);
    dialled.set_nodelay(true)?;
    accepted.set_nodelay(true)?;
    match kind {
        Kind::Tcp => {
            let (a_read, a_write) = (dialled.try_clone_std()?, dialled);
            let (b_read, b_write) = (accepted.try_clone_std()?, accepted);
            Ok((
                (
                    Sender::Tcp(a_write),
                    Receiver::Tcp(BufReader::with_capacity(128 * 1024, a_read)),
                ),
                (
                    Sender::Tcp(b_write),
                    Receiver::Tcp(BufReader::with_capacity(128 * 1024, b_read)),
                ),
            ))
        }
        Kind::Link => {
            let alice = StaticKey::generate()?;
            let bob = StaticKey::generate()?;
            let hello = |from: &str, to: &str| Hello {
                from: from.into(),
                to: to.into(),
                instance: 1,
            };
            let bob_public = *bob.public();
            let a_hello = hello("a", "b");
            let b_hello = hello("b", "a");
            let answer = async {
                meshd_link::accept(accepted, &bob)
                    .await?
                    .complete(&b_hello)
                    .await
            };
            let (dial, answered) = tokio::join!(
                meshd_link::connect(dialled, &alice, &bob_public, &a_hello),
                answer
            );
            let (a_link, _) = dial?;
            let b_link = answered?;
            let (a_read, a_write) = a_link.split();
            let (b_read, b_write) = b_link.split();
            Ok((
                (Sender::Link(a_write), Receiver::Link(a_read)),
                (Sender::Link(b_write), Receiver::Link(b_read)),
            ))
        }
    }
}

trait CloneStd: Sized {
    fn try_clone_std(&self) -> std::io::Result<Self>;
}

impl CloneStd for TcpStream {
    /// A second handle on the same socket, so reads and writes can go to
    /// different tasks without a lock, as the link's split does.
    fn try_clone_std(&self) -> std::io::Result<Self> {
        use std::os::fd::{AsFd, OwnedFd};
        let fd: OwnedFd = self.as_fd().try_clone_to_owned()?;
        let std = std::net::TcpStream::from(fd);
        std.set_nonblocking(true)?;
        TcpStream::from_std(std)
    }
}

impl Sender {
    async fn send_all(&mut self, frames: &[Frame], scratch: &mut BytesMut) -> Result<(), Error> {
        match self {
            Sender::Tcp(stream) => {
                scratch.clear();
                for frame in frames {
                    frame.encode(scratch)?;
                }
                stream.write_all(scratch).await?;
            }
            Sender::Link(writer) => writer.send_all(frames).await?,
        }
        Ok(())
    }
}

impl Receiver {
    async fn next(&mut self, buffer: &mut BytesMut) -> Result<Option<Frame>, Error> {
        match self {
            Receiver::Tcp(stream) => {
                let len = match stream.read_u32().await {
                    Ok(len) => len as usize,
                    Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                        return Ok(None);
                    }
                    Err(error) => return Err(error.into()),
                };
                buffer.clear();
                buffer.extend_from_slice(&(len as u32).to_be_bytes());
                buffer.resize(4 + len, 0);
                stream.read_exact(&mut buffer[4..]).await?;
                Ok(Frame::decode(buffer)?)
            }
            Receiver::Link(reader) => match reader.next().await {
                Ok(frame) => Ok(Some(frame)),
                Err(meshd_link::LinkError::Closed) => Ok(None),
                Err(error) => Err(error.into()),
            },
        }
    }
}

/// Bytes of message text per second delivered one way for `duration`.
async fn throughput(kind: Kind, size: usize, duration: Duration) -> Result<f64, Error> {
    let ((mut sender, _), (_, mut receiver)) = connect(kind).await?;
    let text = Bytes::from(vec![b'm'; size]);
    let per_batch = (BATCH_BYTES / (size + 13)).max(1);
    let batch: Vec<Frame> = (0..per_batch)
        .map(|id| Frame::Message {
            id: id as u64,
            text: text.clone(),
        })
        .collect();
    let counting = tokio::spawn(async move {
        let mut buffer = BytesMut::new();
        let mut bytes = 0u64;
        let mut started = None;
        while let Some(frame) = receiver.next(&mut buffer).await? {
            if let Frame::Message { text, .. } = frame {
                started.get_or_insert_with(Instant::now);
                bytes += text.len() as u64;
            }
        }
        let elapsed = started.map_or(Duration::ZERO, |at: Instant| at.elapsed());
        Ok::<_, Error>(bytes as f64 / elapsed.as_secs_f64())
    });
    let started = Instant::now();
    let mut scratch = BytesMut::new();
    while started.elapsed() < duration {
        sender.send_all(&batch, &mut scratch).await?;
    }
    drop(sender);
    counting.await?
}

/// Median and p99 round-trip time in microseconds.
async fn rtt(kind: Kind, round_trips: u32) -> Result<[f64; 2], Error> {
    let ((mut ping_tx, mut pong_rx), (mut echo_tx, mut echo_rx)) = connect(kind).await?;
    let echo = tokio::spawn(async move {
        let mut buffer = BytesMut::new();
        let mut scratch = BytesMut::new();
        while let Some(frame) = echo_rx.next(&mut buffer).await? {
            if let Frame::Message { id, .. } = frame {
                echo_tx.send_all(&[Frame::Ack { id }], &mut scratch).await?;
            }
        }
        Ok::<_, Error>(())
    });
    let ping = Bytes::from(vec![b'p'; 64]);
    let mut buffer = BytesMut::new();
    let mut scratch = BytesMut::new();
    let mut samples = Vec::with_capacity(round_trips as usize);
    for id in 0..u64::from(round_trips) {
        let sent = Instant::now();
        ping_tx
            .send_all(
                &[Frame::Message {
                    id,
                    text: ping.clone(),
                }],
                &mut scratch,
            )
            .await?;
        match pong_rx.next(&mut buffer).await? {
            Some(Frame::Ack { id: answered }) if answered == id => {}
            other => return Err(format!("unexpected answer {other:?}").into()),
        }
        samples.push(sent.elapsed().as_secs_f64() * 1e6);
    }
    // Both handles of the pinging end must go for the echo to see the end.
    drop(ping_tx);
    drop(pong_rx);
    echo.await??;
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    Ok([at(0.5), at(0.99)])
}
