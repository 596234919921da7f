//! `chat-fanout propagation`: how long a registration at one hub of a
//! cluster takes to appear in another hub's device list (docs/cluster.md),
//! beside the same registration seen at its own hub and one message
//! through nats-server, the bus it crosses, in the same run.
//!
//! Each sample registers a new id with `POST /register` at one hub while a
//! long-poll (`GET /devices?wait=VERSION`) waits at the other; the time is
//! from sending the registration to the long-poll's answer that lists the
//! id. A long-poll answers at once when the list changed before it arrived,
//! so there is no race to lose. The NATS reference is one `PUB` on one
//! connection until its `MSG` on another.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::BenchError;

/// The hubs, in errors.
const HUB: &str = "meshd hub";

/// One HTTP exchange or NATS message may take this long.
const STEP_WAIT: Duration = Duration::from_secs(30);

/// The figures of one kind of sample, in microseconds.
struct Samples {
    label: String,
    micros: Vec<f64>,
}

impl Samples {
    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.micros.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
        sorted.get(rank).copied().unwrap_or(f64::NAN)
    }
}

/// Runs `count` samples of each kind and returns the Markdown table.
pub async fn run(
    from: SocketAddr,
    to: SocketAddr,
    nats: SocketAddr,
    count: usize,
) -> Result<String, BenchError> {
    let run_id = std::process::id();
    let mut across = Samples {
        label: format!("registration at one hub, seen at another (`{from}` to `{to}`)"),
        micros: Vec::with_capacity(count),
    };
    let mut same = Samples {
        label: format!("registration at one hub, seen at the same hub (`{from}`)"),
        micros: Vec::with_capacity(count),
    };
    let mut bus = Samples {
        label: "one message through nats-server (PUB to MSG)".to_owned(),
        micros: Vec::with_capacity(count),
    };
    let mut nats = NatsPair::open(nats).await?;
    // Turns, so a slow phase of the machine does not fall on one kind.
    for n in 0..count {
        across
            .micros
            .push(registration(from, to, &format!("prop-{run_id}-x{n}")).await?);
        same.micros
            .push(registration(from, from, &format!("prop-{run_id}-s{n}")).await?);
        bus.micros.push(nats.one().await?);
    }
    let reference = bus.percentile(50.0);
    let mut out = String::new();
    out.push_str(&format!(
        "\n| {count} samples each | p50 | p99 | max | p50 / nats-server's |\n| --- | ---: | ---: | ---: | ---: |\n"
    ));
    for samples in [&across, &same, &bus] {
        let p50 = samples.percentile(50.0);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.1}x |\n",
            samples.label,
            millis(p50),
            millis(samples.percentile(99.0)),
            millis(samples.percentile(100.0)),
            p50 / reference
        ));
    }
    Ok(out)
}

fn millis(micros: f64) -> String {
    format!("{:.2} ms", micros / 1000.0)
}

/// Registers `id` at `at` and times it until `seen`'s list has it, in µs.
async fn registration(at: SocketAddr, seen: SocketAddr, id: &str) -> Result<f64, BenchError> {
    let (_, version) = http(seen, "GET /devices", None).await?;
    let body = format!(r#"{{"id":"{id}","addr":"192.0.2.1:8082"}}"#);
    let needle = format!(r#""id":"{id}""#);
    let started = Instant::now();
    let register = http(at, "POST /register", Some(&body));
    let watch = async {
        let mut version = version;
        loop {
            let (list, next) = http(seen, &format!("GET /devices?wait={version}"), None).await?;
            if list.contains(&needle) {
                return Ok::<_, BenchError>(started.elapsed());
            }
            version = next;
        }
    };
    // A refused registration ends the sample at once; the watch would wait
    // for ever.
    let (_, took) = tokio::try_join!(register, watch)?;
    Ok(took.as_secs_f64() * 1e6)
}

/// One HTTP/1.1 request (`"METHOD PATH"`) with a JSON body if any; the body
/// and `meshd-registry-version` of a 200 answer.
async fn http(
    addr: SocketAddr,
    request: &str,
    body: Option<&str>,
) -> Result<(String, u64), BenchError> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut head = format!("{request} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        head.push_str(body.unwrap_or_default());
        stream.write_all(head.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let what = format!("{request} at {addr}");
    let answer = tokio::time::timeout(STEP_WAIT, exchange)
        .await
        .map_err(|_| BenchError::Timeout {
            what: what.clone(),
            limit: STEP_WAIT,
        })?
        .map_err(BenchError::io(what.clone()))?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        return Err(BenchError::protocol(HUB, format!("{what}: no HTTP answer")));
    };
    if !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or_default();
        return Err(BenchError::protocol(HUB, format!("{what}: {status}")));
    }
    let version = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("meshd-registry-version")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    Ok((body.to_owned(), version))
}

/// A publisher and a subscriber on nats-server.
struct NatsPair {
    publisher: TcpStream,
    subscriber: TcpStream,
    buf: Vec<u8>,
}

impl NatsPair {
    async fn open(addr: SocketAddr) -> Result<NatsPair, BenchError> {
        let io = BenchError::io(format!("nats-server at {addr}"));
        let setup = async {
            let mut publisher = TcpStream::connect(addr).await?;
            let mut subscriber = TcpStream::connect(addr).await?;
            publisher
                .write_all(b"CONNECT {\"verbose\":false}\r\n")
                .await?;
            subscriber
                .write_all(b"CONNECT {\"verbose\":false}\r\nSUB propagation 1\r\nPING\r\n")
                .await?;
            Ok((publisher, subscriber))
        };
        let (publisher, subscriber) = setup.await.map_err(io)?;
        let mut pair = NatsPair {
            publisher,
            subscriber,
            buf: Vec::new(),
        };
        pair.until(b"PONG\r\n").await?;
        Ok(pair)
    }

    /// One message, in µs.
    async fn one(&mut self) -> Result<f64, BenchError> {
        let started = Instant::now();
        self.publisher
            .write_all(b"PUB propagation 1\r\nx\r\n")
            .await
            .map_err(BenchError::io("publishing to nats-server"))?;
        self.until(b"MSG propagation 1 1\r\nx\r\n").await?;
        Ok(started.elapsed().as_secs_f64() * 1e6)
    }

    /// Reads the subscriber until `needle` arrived; drops what came before
    /// it (the greeting, pings are not expected this soon).
    async fn until(&mut self, needle: &[u8]) -> Result<(), BenchError> {
        let read = async {
            loop {
                if let Some(at) = memchr::memmem::find(&self.buf, needle) {
                    self.buf.drain(..at + needle.len());
                    return Ok(());
                }
                let mut chunk = [0u8; 4096];
                let n = self.subscriber.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::Error::other("closed"));
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(STEP_WAIT, read)
            .await
            .map_err(|_| BenchError::Timeout {
                what: "a message from nats-server".to_owned(),
                limit: STEP_WAIT,
            })?
            .map_err(BenchError::io("reading from nats-server"))
    }
}
