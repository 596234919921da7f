//! The publisher: blocking writes on a thread of its own, and a second thread
//! that drains what the server sends back (meshd's `JOIN`/`LEAVE`, Redis's
//! `PUBLISH` replies, NATS's `PING`, answered with `PONG`).
//!
//! Threads rather than tasks for two reasons. A blocking `write_all` is the
//! plainest form of "as fast as the server accepts": it returns when the
//! kernel took the bytes, and blocks while the server does not read. And the
//! paced mode sleeps with the kernel's timer (tens of microseconds), where a
//! tokio timer ticks in milliseconds and would send 10,000 msgs/s as bursts
//! of ten.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use meshd_ipc::tls::{TlsReader, TlsWriter};

use crate::clock;
use crate::error::{BenchError, excerpt};
use crate::protocol::{Connection, Frame, FrameBuf, Protocol, Stream};
use crate::subscriber::Progress;

/// Messages per write at full rate: one write of ~5 KiB.
const BATCH: usize = 64;
/// Most messages one paced write catches up on after an oversleep.
const MAX_CATCH_UP: u64 = 64;
/// How long the publisher waits before it looks at the window again.
const WINDOW_POLL: Duration = Duration::from_micros(200);
/// How often the drain thread wakes to see whether it should stop.
const DRAIN_POLL: Duration = Duration::from_millis(200);
/// How long the close may take before the drain thread gives up.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// How fast to publish.
#[derive(Debug)]
pub enum Pace {
    /// As fast as the server takes them, in batches, but never more than
    /// `window` messages ahead of the slowest of `readers`: the sustained
    /// rate is measured, not how fast the server's queues fill, and no
    /// server is pushed into its slow-consumer policy by the burst alone.
    Flood {
        /// Messages in flight per reader at most.
        window: u64,
        /// The subscribers that read.
        readers: Vec<Arc<Progress>>,
    },
    /// Evenly spaced at `per_second`, each payload stamped as it is written.
    Rate {
        /// The offered rate.
        per_second: u64,
    },
}

/// What to publish.
#[derive(Debug)]
pub struct Plan {
    /// Messages to send at most.
    pub count: u64,
    /// How fast.
    pub pace: Pace,
    /// How long at most.
    pub limit: Duration,
    /// Set by the scenario to stop early.
    pub stop: Arc<AtomicBool>,
}

/// What was published.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    /// When the first write started (ns since the bench epoch).
    pub first_ns: u64,
    /// When the last write returned.
    pub last_ns: u64,
    /// Messages sent.
    pub sent: u64,
    /// Time spent waiting for the slowest reader (flood only).
    pub window_wait: Duration,
}

/// Runs `plan` on `conn` (already set up as the publisher) on the calling
/// thread, which must be allowed to block; closes the connection politely at
/// the end.
pub fn run<P: Protocol>(proto: &P, conn: Connection, plan: &Plan) -> Result<Published, BenchError> {
    let Connection { stream, buf } = conn;
    let (reader, writer) = blocking(stream).map_err(BenchError::io(format!(
        "{}: making the publisher blocking",
        P::NAME
    )))?;
    let writer = Mutex::new(writer);
    let closing = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let drain = scope.spawn(|| drain(proto, reader, buf, &writer, &closing));
        let published = match &plan.pace {
            Pace::Flood { window, readers } => flood(proto, &writer, plan, *window, readers),
            Pace::Rate { per_second } => paced(proto, &writer, plan, *per_second),
        };
        // Leave politely, then let the drain thread read to the close.
        {
            let mut stream = lock(&writer);
            let _ = stream.write_all(proto.goodbye());
            let _ = stream.shutdown_write();
        }
        closing.store(true, Ordering::Relaxed);
        let drained = drain
            .join()
            .unwrap_or_else(|_| Err("the drain thread panicked".to_owned()));
        match (published, drained) {
            (Err(error), _) => Err(error),
            (Ok(_), Err(server)) => Err(BenchError::protocol(
                P::NAME,
                format!("the publisher got: {server}"),
            )),
            (Ok(published), Ok(())) => Ok(published),
        }
    })
}

/// Full rate within the window.
fn flood<P: Protocol>(
    proto: &P,
    writer: &Mutex<Sink>,
    plan: &Plan,
    window: u64,
    readers: &[Arc<Progress>],
) -> Result<Published, BenchError> {
    let mut frame = Vec::new();
    proto.encode_publish(&clock::stamp(0), &mut frame);
    let batch = frame.repeat(BATCH);
    let window = window.max(1);
    let start = Instant::now();
    let first_ns = clock::ns_since_epoch(start);
    let mut sent = 0u64;
    let mut window_wait = Duration::ZERO;
    while sent < plan.count && !plan.stop.load(Ordering::Relaxed) {
        if start.elapsed() >= plan.limit {
            break;
        }
        let slowest = readers.iter().map(|r| r.delivered()).min().unwrap_or(sent);
        let ahead = sent.saturating_sub(slowest);
        if ahead >= window {
            let waiting = Instant::now();
            std::thread::sleep(WINDOW_POLL);
            window_wait += waiting.elapsed();
            continue;
        }
        let n = (plan.count - sent).min(window - ahead).min(BATCH as u64);
        let bytes = usize::try_from(n).unwrap_or(BATCH) * frame.len();
        write::<P>(writer, &batch[..bytes])?;
        sent += n;
    }
    Ok(Published {
        first_ns,
        last_ns: clock::now_ns(),
        sent,
        window_wait,
    })
}

/// Evenly spaced: message `k` is due `k / per_second` after the start.
fn paced<P: Protocol>(
    proto: &P,
    writer: &Mutex<Sink>,
    plan: &Plan,
    per_second: u64,
) -> Result<Published, BenchError> {
    let interval_ns = (1_000_000_000 / per_second.max(1)).max(1);
    let start = Instant::now();
    let first_ns = clock::ns_since_epoch(start);
    let mut out = Vec::new();
    let mut sent = 0u64;
    while sent < plan.count && !plan.stop.load(Ordering::Relaxed) {
        let elapsed = start.elapsed();
        if elapsed >= plan.limit {
            break;
        }
        let elapsed_ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let due = (elapsed_ns / interval_ns + 1).min(plan.count);
        if due > sent {
            out.clear();
            let n = (due - sent).min(MAX_CATCH_UP);
            for _ in 0..n {
                proto.encode_publish(&clock::stamp(clock::now_ns()), &mut out);
            }
            write::<P>(writer, &out)?;
            sent += n;
        } else {
            let next_ns = sent * interval_ns;
            std::thread::sleep(Duration::from_nanos(next_ns.saturating_sub(elapsed_ns)));
        }
    }
    Ok(Published {
        first_ns,
        last_ns: clock::now_ns(),
        sent,
        window_wait: Duration::ZERO,
    })
}

fn write<P: Protocol>(writer: &Mutex<Sink>, bytes: &[u8]) -> Result<(), BenchError> {
    lock(writer)
        .write_all(bytes)
        .map_err(BenchError::io(format!("{}: publishing", P::NAME)))
}

/// Reads and discards what the server sends the publisher, answers pings,
/// and ends at the server's close; `Err` carries an error the server sent.
fn drain<P: Protocol>(
    proto: &P,
    mut reader: Source,
    mut buf: FrameBuf,
    writer: &Mutex<Sink>,
    closing: &AtomicBool,
) -> Result<(), String> {
    let mut server_error = None;
    let mut closing_since: Option<Instant> = None;
    loop {
        let mut at = 0;
        let mut pings = 0;
        loop {
            match proto.parse(&buf.data()[at..]) {
                Ok(Some((frame, len))) => {
                    at += len;
                    match frame {
                        Frame::Ping => pings += 1,
                        Frame::Error(text) => server_error = Some(excerpt(text)),
                        Frame::Message(_) | Frame::Other(_) => {}
                    }
                }
                Ok(None) => break,
                Err(error) => return Err(error.to_string()),
            }
        }
        buf.consume(at);
        for _ in 0..pings {
            // The write side may already be shut down while closing.
            let _ = lock(writer).write_all(proto.pong());
        }
        match buf.fill_blocking(&mut reader) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if closing.load(Ordering::Relaxed) {
                    let since = *closing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= CLOSE_WAIT {
                        break;
                    }
                }
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            // A reset after our close is the server's way of closing too.
            Err(_) if closing.load(Ordering::Relaxed) => break,
            Err(error) => return Err(error.to_string()),
        }
    }
    server_error.map_or(Ok(()), Err)
}

/// The publisher's connection as a blocking reader (with [`DRAIN_POLL`] as
/// its read timeout) and writer.
fn blocking(stream: Stream) -> std::io::Result<(Source, Sink)> {
    match stream {
        Stream::Plain(tcp) => {
            let tcp = tcp.into_std()?;
            tcp.set_nonblocking(false)?;
            let reader = tcp.try_clone()?;
            reader.set_read_timeout(Some(DRAIN_POLL))?;
            Ok((Source::Plain(reader), Sink::Plain(tcp)))
        }
        Stream::Tls(tls) => {
            let (reader, writer) = crate::tls::blocking(*tls)?;
            reader.set_read_timeout(Some(DRAIN_POLL))?;
            Ok((Source::Tls(reader), Sink::Tls(writer)))
        }
    }
}

/// Where the drain thread reads.
enum Source {
    Plain(TcpStream),
    Tls(TlsReader),
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Source::Plain(tcp) => tcp.read(buf),
            Source::Tls(tls) => tls.read(buf),
        }
    }
}

/// Where the publisher writes.
enum Sink {
    Plain(TcpStream),
    Tls(TlsWriter),
}

impl Sink {
    fn shutdown_write(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(tcp) => tcp.shutdown(Shutdown::Write),
            Sink::Tls(tls) => tls.shutdown_write(),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Plain(tcp) => tcp.write(buf),
            Sink::Tls(tls) => tls.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Plain(tcp) => tcp.write_all(buf),
            Sink::Tls(tls) => tls.write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn lock(writer: &Mutex<Sink>) -> std::sync::MutexGuard<'_, Sink> {
    writer.lock().unwrap_or_else(PoisonError::into_inner)
}
