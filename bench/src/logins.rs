//! `chat-fanout logins`: a login storm against meshd's chat server (issue 12):
//! N clients log in at the same moment; the time each took from `AUTH` to
//! `OK`, and meshd's resident memory before and after (argon2id fills
//! 19 MiB per hash, and what the allocator keeps of that is the point).
//! `bench/login-storm.sh` runs it against this build and a baseline build.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::error::BenchError;
use crate::procfs;

/// What one storm measured.
#[derive(Debug, Clone)]
pub struct Storm {
    /// Logins at once.
    pub logins: usize,
    /// meshd's RSS before the storm, bytes.
    pub rss_before: u64,
    /// meshd's RSS once the storm is over and it settled, bytes.
    pub rss_after: u64,
    /// Each login's time from `AUTH` to `OK`, sorted.
    pub times: Vec<Duration>,
    /// From the first `AUTH` to the last `OK`.
    pub total: Duration,
}

/// How long one login may take before the storm counts as failed.
const LOGIN_LIMIT: Duration = Duration::from_secs(60);

/// Logs `logins` clients in at once as `user`.
pub async fn storm(
    addr: SocketAddr,
    pid: u32,
    user: &str,
    password: &str,
    logins: usize,
) -> Result<Storm, BenchError> {
    let rss_before = procfs::rss_bytes(pid)?;
    // Connect everyone and read HELLO first, so that the AUTH lines leave
    // together.
    let mut clients = Vec::with_capacity(logins);
    for _ in 0..logins {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(BenchError::io(format!("connecting to {addr}")))?;
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let hello = lines
            .next_line()
            .await
            .map_err(BenchError::io("reading HELLO"))?
            .unwrap_or_default();
        if !hello.starts_with("HELLO ") {
            return Err(BenchError::Usage(format!("expected HELLO, got {hello:?}")));
        }
        clients.push((lines, write));
    }
    let started = Instant::now();
    let auth = format!("AUTH {user} {password}\n");
    let expected = format!("OK {user}");
    let mut tasks = tokio::task::JoinSet::new();
    for (mut lines, mut write) in clients {
        let (auth, expected) = (auth.clone(), expected.clone());
        tasks.spawn(async move {
            let sent = Instant::now();
            write.write_all(auth.as_bytes()).await.ok()?;
            let answer = tokio::time::timeout(LOGIN_LIMIT, lines.next_line())
                .await
                .ok()?
                .ok()??;
            (answer == expected).then(|| (sent.elapsed(), lines, write))
        });
    }
    let mut times = Vec::with_capacity(logins);
    let mut sessions = Vec::with_capacity(logins);
    while let Some(outcome) = tasks.join_next().await {
        match outcome {
            Ok(Some((took, lines, write))) => {
                times.push(took);
                sessions.push((lines, write));
            }
            _ => return Err(BenchError::Usage("a login failed or timed out".to_owned())),
        }
    }
    let total = started.elapsed();
    // Log out and let meshd settle before reading its memory again.
    for (_, mut write) in sessions {
        let _ = write.write_all(b"/quit\n").await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = procfs::rss_bytes(pid)?;
    times.sort();
    Ok(Storm {
        logins,
        rss_before,
        rss_after,
        times,
        total,
    })
}

impl Storm {
    /// The `q`-quantile of the login times.
    pub fn quantile(&self, q: f64) -> Duration {
        let index = ((self.times.len() as f64 - 1.0) * q).round() as usize;
        self.times.get(index).copied().unwrap_or_default()
    }

    /// One Markdown table row, labelled.
    pub fn row(&self, label: &str) -> String {
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        format!(
            "| {label} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} |",
            self.logins,
            mib(self.rss_before),
            mib(self.rss_after),
            ms(self.quantile(0.5)),
            ms(self.quantile(0.99)),
            ms(self.quantile(1.0)),
            self.total.as_secs_f64()
        )
    }
}
