//! What the web console costs a hub (issue 16): `GET /metrics` as
//! Prometheus scrapes it, and `GET /api/v1/mesh` as the live page polls it,
//! measured in the hub's own CPU time against the same hub left alone in
//! the same run.
//!
//! Two measures, after the simulated devices have joined:
//! 1. **Steady**: the hub's CPU in windows with nothing asked and windows
//!    with one scrape a second, alternating, `seconds` of each in all (the
//!    reference and the cost side by side). Each window is one heartbeat
//!    period long, so every window holds the same round of heartbeats, the
//!    idle hub's own load, which comes in bursts.
//! 2. **Burst**: 500 requests back to back; the hub's CPU per request, which
//!    the tick-granular steady figure cannot resolve below about 0.03%.
//!
//! Each request opens its own connection (Prometheus keeps one open, so this
//! is the dearer case) and reads the whole answer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::control::Error;
use crate::process::cpu_seconds;

/// Requests in the burst.
const BURST: usize = 500;

/// What was measured of one path.
pub struct Cost {
    /// The path.
    pub path: &'static str,
    /// Bytes of one answer.
    pub bytes: usize,
    /// Hub CPU per request, in seconds (burst).
    pub cpu_per_request: f64,
}

/// The steady measure: hub CPU share of one core, idle and scraped.
pub struct Steady {
    pub idle_share: f64,
    pub scraped_share: f64,
    pub seconds: u64,
}

/// `GET path` on a new connection; the answer's body length.
pub fn get(addr: SocketAddr, path: &str) -> Result<usize, Error> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let head_end = answer
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or("no HTTP answer")?;
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(format!(
            "GET {path}: {}",
            String::from_utf8_lossy(&answer[..head_end])
        )
        .into());
    }
    Ok(answer.len() - head_end - 4)
}

/// The burst measure for `path`.
pub fn burst(web: SocketAddr, pid: u32, path: &'static str) -> Result<Cost, Error> {
    let bytes = get(web, path)?;
    let before = cpu_seconds(pid)?;
    for _ in 0..BURST {
        get(web, path)?;
    }
    let cpu = cpu_seconds(pid)? - before;
    Ok(Cost {
        path,
        bytes,
        cpu_per_request: cpu / BURST as f64,
    })
}

/// The steady measure: windows of `window` idle and scraped once a second,
/// alternating, until each side had `seconds`.
pub fn steady(web: SocketAddr, pid: u32, seconds: u64, window: Duration) -> Result<Steady, Error> {
    let rounds = seconds.div_ceil(window.as_secs().max(1)).max(1);
    let (mut idle, mut idle_time) = (0.0, 0.0);
    let (mut scraped, mut scraped_time) = (0.0, 0.0);
    for _ in 0..rounds {
        let (before, started) = (cpu_seconds(pid)?, Instant::now());
        std::thread::sleep(window);
        idle += cpu_seconds(pid)? - before;
        idle_time += started.elapsed().as_secs_f64();
        let (before, started) = (cpu_seconds(pid)?, Instant::now());
        for tick in 0..window.as_secs() {
            get(web, "/metrics")?;
            let next = started + Duration::from_secs(tick + 1);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        scraped += cpu_seconds(pid)? - before;
        scraped_time += started.elapsed().as_secs_f64();
    }
    Ok(Steady {
        idle_share: idle / idle_time,
        scraped_share: scraped / scraped_time,
        seconds: rounds * window.as_secs(),
    })
}
