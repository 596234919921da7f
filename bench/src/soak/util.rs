//! Small tools every part of the soak uses: the run's clock, progress lines,
//! a seeded random number generator, and running a command with a deadline.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// Locks `mutex`, also after a thread panicked while holding it: the soak
/// reports what it has rather than stopping on a poisoned lock.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The run's time base: seconds since the driver started, and the wall
/// clock for the fault log.
pub struct Clock {
    start: Instant,
    wall: SystemTime,
}

impl Clock {
    /// Starts the clock now.
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// Seconds since the start.
    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// The instant `at` seconds after the start.
    pub fn instant(&self, at: f64) -> Instant {
        self.start + Duration::from_secs_f64(at.max(0.0))
    }

    /// The wall-clock time (RFC 3339, UTC, milliseconds) of `at` seconds
    /// after the start.
    pub fn wall(&self, at: f64) -> String {
        let time = self.wall + Duration::from_secs_f64(at.max(0.0));
        humantime::format_rfc3339_millis(time).to_string()
    }

    /// A progress line on stderr: `[  12.3s] message`.
    pub fn say(&self, message: &str) {
        let line = format!("[{:>7.1}s] {message}\n", self.now());
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

/// SplitMix64: small, fast, and the same sequence for a seed on every build,
/// so `--seed` replays the same fault schedule.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`; `stream` separates independent users of one
    /// seed (each sender, the chat clients, the fault plan).
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut rng = Rng(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        rng.next_u64();
        rng
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `[low, high)`.
    pub fn range(&mut self, low: f64, high: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        low + (high - low) * unit
    }

    /// An index below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }
}

/// Sleeps until `until` in steps of at most 100 ms; false if `stop` was set
/// meanwhile.
pub fn sleep_until(stop: &AtomicBool, until: Instant) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(100)));
    }
}

/// Sleeps `duration` in steps of at most 100 ms; false if `stop` was set
/// meanwhile.
pub fn sleep_for(stop: &AtomicBool, duration: Duration) -> bool {
    sleep_until(stop, Instant::now() + duration)
}

/// What a command run with [`run`] did.
#[derive(Debug)]
pub struct CmdOutput {
    /// Its exit status; `None` when it was killed at the deadline.
    pub status: Option<ExitStatus>,
    /// Everything it wrote on stdout.
    pub stdout: String,
    /// Everything it wrote on stderr.
    pub stderr: String,
}

impl CmdOutput {
    /// Exit status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|status| status.success())
    }

    /// The first line of stderr, or how the command ended.
    pub fn reason(&self) -> String {
        match self.stderr.lines().find(|line| !line.trim().is_empty()) {
            Some(line) => line.trim().to_owned(),
            None => match self.status {
                Some(status) => format!("exited with {status} and no message"),
                None => "no answer before the deadline; killed".to_owned(),
            },
        }
    }
}

/// Runs `command` with `input` on stdin (or none), collecting stdout and
/// stderr; kills it if it has not ended within `deadline`.
pub fn run(
    command: &mut Command,
    input: Option<&str>,
    deadline: Duration,
) -> Result<CmdOutput, String> {
    command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|error| format!("starting {:?}: {error}", command.get_program()))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        let _ = stdin.write_all(text.as_bytes());
    }
    let stderr = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    });
    let (sender, receiver) = mpsc::channel();
    let stdout = child.stdout.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            let _ = sender.send(());
            text
        })
    });
    // The stdout pipe closes when the command exits.
    let ended = stdout.is_none() || receiver.recv_timeout(deadline).is_ok();
    let status = finish(&mut child, ended);
    let stdout = stdout
        .and_then(|thread| thread.join().ok())
        .unwrap_or_default();
    let stderr = stderr
        .and_then(|thread| thread.join().ok())
        .unwrap_or_default();
    Ok(CmdOutput {
        status,
        stdout,
        stderr,
    })
}

/// Reaps `child`: waits if it `ended`, else kills it first (status `None`).
fn finish(child: &mut Child, ended: bool) -> Option<ExitStatus> {
    if !ended {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    child.wait().ok()
}
