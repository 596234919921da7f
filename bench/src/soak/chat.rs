//! Chat traffic against the hub's chat server: clients that log in, send a
//! few lines and leave; a client that logs in and then stops reading for a
//! while; clients that try a wrong password. Modest on purpose: a few lines
//! a second, far below the default rate limit (20 a second per user).

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};

use crate::cluster::{Bins, CHAT_PORT, Node, State};
use crate::util::{Clock, Rng, lock, run, sleep_for};

/// Users that log in and talk.
pub const TALKERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
/// The user of the client that stalls.
pub const STALLER: &str = "erin";

/// The password of `user` in this run.
pub fn password(user: &str, seed: u64) -> String {
    format!("soak {user} {seed:x}")
}

/// A line a talker sent, and when.
#[derive(Debug, Clone)]
struct Line {
    text: String,
    at: f64,
    /// The talker's session ended with `BYE`: the server took every line.
    completed: bool,
}

/// One session of the stalling client.
#[derive(Debug, Clone)]
struct Stall {
    /// When it read `OK` and when it sent `/quit`.
    from: f64,
    to: f64,
    /// The hub's epoch stayed the same throughout, and the server did not cut
    /// the client off.
    clean: bool,
    /// The server closed the connection (`ERR slow`, most likely).
    cut_off: bool,
    received: Vec<String>,
    stalled_for: f64,
}

/// Counters of the chat traffic.
#[derive(Debug, Default, Clone)]
pub struct ChatFigures {
    /// Logins that got `OK`.
    pub logins_ok: u64,
    /// Wrong passwords refused with `ERR auth invalid credentials`, as they
    /// should be.
    pub logins_refused: u64,
    /// Wrong passwords that got `OK`: must be 0.
    pub wrong_password_accepted: u64,
    /// Right passwords refused while the hub ran and was not restarted.
    pub right_password_refused: u64,
    /// Sessions cut short by a hub restart (expected).
    pub interrupted_by_restart: u64,
    /// Other failures, with what happened.
    pub errors: Vec<String>,
    /// Lines the talkers sent.
    pub lines_sent: u64,
    /// Sessions of the stalling client.
    pub stalls: u64,
    /// Stalling sessions the server cut off as slow.
    pub stalls_cut_off: u64,
    /// Lines the stalling client should have seen (sent while it was in the
    /// room, no hub restart between), and how many of them it saw.
    pub stall_expected: u64,
    /// See `stall_expected`.
    pub stall_received: u64,
    /// The longest stall, seconds.
    pub longest_stall: f64,
}

/// The chat traffic's shared record.
#[derive(Default)]
pub struct Chat {
    figures: Mutex<ChatFigures>,
    lines: Mutex<Vec<Line>>,
    stalls: Mutex<Vec<Stall>>,
}

impl Chat {
    /// The figures, with the stalling sessions checked against the lines
    /// the talkers sent meanwhile.
    pub fn figures(&self) -> ChatFigures {
        let mut figures = lock(&self.figures).clone();
        let lines = lock(&self.lines);
        for stall in lock(&self.stalls).iter().filter(|stall| stall.clean) {
            // A margin of a second on each side: the send time is the
            // talker's, the room's order is the server's.
            for line in lines.iter().filter(|line| {
                line.completed && line.at > stall.from + 1.0 && line.at < stall.to - 1.0
            }) {
                figures.stall_expected += 1;
                if stall.received.contains(&line.text) {
                    figures.stall_received += 1;
                }
            }
        }
        figures
    }

    fn count(&self, change: impl FnOnce(&mut ChatFigures)) {
        change(&mut lock(&self.figures));
    }
}

/// A line-based connection to the chat server.
struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    partial: Vec<u8>,
}

/// What reading a line gave.
enum Read {
    Line(String),
    Timeout,
    Closed,
}

impl Conn {
    /// Connects to the chat port, from `source` if given (a loopback
    /// address, so that failed logins from one address never reach the
    /// server's limit of 10 a minute).
    fn open(source: Option<Ipv4Addr>) -> std::io::Result<Conn> {
        let server = SocketAddrV4::new(Ipv4Addr::LOCALHOST, CHAT_PORT);
        let stream = match source {
            None => TcpStream::connect_timeout(&SocketAddr::V4(server), Duration::from_secs(2))?,
            Some(ip) => {
                let fd = socket(
                    AddressFamily::Inet,
                    SockType::Stream,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )?;
                bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(ip, 0)))?;
                connect(fd.as_raw_fd(), &SockaddrIn::from(server))?;
                TcpStream::from(fd)
            }
        };
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(Conn {
            reader: BufReader::new(stream.try_clone()?),
            stream,
            partial: Vec::new(),
        })
    }

    fn send(&mut self, line: &str) -> std::io::Result<()> {
        self.stream.write_all(format!("{line}\n").as_bytes())
    }

    fn read(&mut self, timeout: Duration) -> Read {
        if self
            .stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .is_err()
        {
            return Read::Closed;
        }
        match self.reader.read_until(b'\n', &mut self.partial) {
            Ok(0) => Read::Closed,
            Ok(_) if self.partial.ends_with(b"\n") => {
                let line = String::from_utf8_lossy(&self.partial).trim_end().to_owned();
                self.partial.clear();
                Read::Line(line)
            }
            Ok(_) => Read::Closed,
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Read::Timeout
            }
            Err(_) => Read::Closed,
        }
    }

    /// Reads until a line starting with one of `prefixes`, skipping room
    /// lines, within `timeout`.
    fn expect(&mut self, prefixes: &[&str], timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no {prefixes:?} within {timeout:?}"));
            }
            match self.read(left) {
                Read::Line(line) if prefixes.iter().any(|p| line.starts_with(p)) => {
                    return Ok(line);
                }
                Read::Line(line) if line.starts_with("ERR ") => return Err(line),
                Read::Line(_) => {}
                Read::Timeout => {}
                Read::Closed => return Err("the server closed the connection".to_owned()),
            }
        }
    }

    /// `HELLO`, then `AUTH`; the server's answer (`OK ...` or `ERR ...`).
    fn login(&mut self, user: &str, password: &str) -> Result<String, String> {
        self.expect(&["HELLO "], Duration::from_secs(5))?;
        self.send(&format!("AUTH {user} {password}"))
            .map_err(|e| e.to_string())?;
        match self.expect(&["OK "], Duration::from_secs(10)) {
            Ok(line) => Ok(line),
            Err(line) if line.starts_with("ERR ") => Ok(line),
            Err(error) => Err(error),
        }
    }

    /// `/quit` and wait for `BYE`.
    fn quit(&mut self) -> Result<(), String> {
        self.send("/quit").map_err(|e| e.to_string())?;
        self.expect(&["BYE"], Duration::from_secs(5)).map(drop)
    }
}

/// Adds the soak's chat users on the hub with `meshctl users add NAME
/// --password-stdin`.
pub fn add_users(hub: &Node, bins: &Bins, seed: u64) -> Result<(), String> {
    for user in TALKERS.iter().chain([&STALLER]) {
        let mut command = bins.meshctl(&hub.socket);
        command.args(["users", "add", user, "--password-stdin"]);
        let output = run(
            &mut command,
            Some(&format!("{}\n", password(user, seed))),
            Duration::from_secs(20),
        )?;
        if !output.success() {
            return Err(format!("meshctl users add {user}: {}", output.reason()));
        }
    }
    Ok(())
}

/// Four logins at once, twice, right after the hub starts: argon2 takes one
/// 19 MiB buffer per concurrent hash (up to the core count) on first use,
/// and that one-time allocation should not count as growth in the memory
/// check.
pub fn warm_up(chat: &Chat, seed: u64) {
    for _round in 0..2 {
        std::thread::scope(|scope| {
            for user in TALKERS {
                scope.spawn(move || {
                    let outcome =
                        Conn::open(None)
                            .map_err(|e| e.to_string())
                            .and_then(|mut conn| {
                                let answer = conn.login(user, &password(user, seed))?;
                                if answer.starts_with("OK ") {
                                    let _ = conn.quit();
                                    Ok(())
                                } else {
                                    Err(answer)
                                }
                            });
                    match outcome {
                        Ok(()) => chat.count(|f| f.logins_ok += 1),
                        Err(error) => chat
                            .count(|f| f.errors.push(format!("warm-up login of {user}: {error}"))),
                    }
                });
            }
        });
    }
}

/// Whether the hub ran throughout: the same epoch, and running.
fn hub_steady(hub: &Node, epoch: u64) -> bool {
    let view = hub.view();
    view.epoch == epoch && view.state == State::Running
}

/// A talker's loop, until `stop`: every 1-4 s a session that logs in,
/// sends 2-5 lines, reads what comes for a moment, and quits.
pub fn talker(number: usize, hub: &Node, clock: &Clock, chat: &Chat, seed: u64, stop: &AtomicBool) {
    let mut rng = Rng::new(seed, 200 + number as u64);
    let mut session = 0u64;
    while sleep_for(stop, Duration::from_secs_f64(rng.range(1.0, 4.0))) {
        let view = hub.view();
        if view.state != State::Running {
            continue;
        }
        session += 1;
        let user = TALKERS[rng.below(TALKERS.len())];
        let lines = 2 + rng.below(4);
        let mut sent = Vec::new();
        let outcome = talk(
            user,
            &password(user, seed),
            number,
            session,
            lines,
            clock,
            &mut sent,
        );
        let completed = outcome.is_ok();
        {
            let mut all = lock(&chat.lines);
            all.extend(sent.iter().map(|(text, at)| Line {
                text: text.clone(),
                at: *at,
                completed,
            }));
        }
        let steady = hub_steady(hub, view.epoch);
        chat.count(|f| {
            f.lines_sent += sent.len() as u64;
            match outcome {
                Ok(()) => f.logins_ok += 1,
                Err(_) if !steady => f.interrupted_by_restart += 1,
                Err(Failure::Refused(line)) => {
                    f.right_password_refused += 1;
                    f.errors
                        .push(format!("{user}: right password refused: {line}"));
                }
                Err(Failure::Other(error)) => f.errors.push(format!("talker {user}: {error}")),
            }
        });
    }
}

enum Failure {
    Refused(String),
    Other(String),
}

fn talk(
    user: &str,
    password: &str,
    number: usize,
    session: u64,
    lines: usize,
    clock: &Clock,
    sent: &mut Vec<(String, f64)>,
) -> Result<(), Failure> {
    let mut conn = Conn::open(None).map_err(|e| Failure::Other(format!("connect: {e}")))?;
    let answer = conn.login(user, password).map_err(Failure::Other)?;
    if !answer.starts_with("OK ") {
        return Err(Failure::Refused(answer));
    }
    for line in 0..lines {
        let text = format!("chat t={number} s={session} l={line} from {user}");
        conn.send(&text)
            .map_err(|e| Failure::Other(format!("send: {e}")))?;
        sent.push((text, clock.now()));
    }
    // Read what the room says for a moment, as a client does.
    let until = Instant::now() + Duration::from_millis(300);
    while let Read::Line(_) | Read::Timeout =
        conn.read(until.saturating_duration_since(Instant::now()))
    {
        if Instant::now() >= until {
            break;
        }
    }
    conn.quit().map_err(Failure::Other)
}

/// The stalling client's loop, until `stop`: log in, read for 2-5 s, stop
/// reading for 5-20 s, read again for up to 5 s, quit.
pub fn staller(hub: &Node, clock: &Clock, chat: &Chat, seed: u64, stop: &AtomicBool) {
    let mut rng = Rng::new(seed, 300);
    while sleep_for(stop, Duration::from_secs_f64(rng.range(1.0, 3.0))) {
        let view = hub.view();
        if view.state != State::Running {
            continue;
        }
        let stall_for = rng.range(5.0, 20.0);
        let read_for = rng.range(2.0, 5.0);
        match stall_once(clock, seed, read_for, stall_for, stop) {
            Ok(mut stall) => {
                let steady = hub_steady(hub, view.epoch);
                if !steady {
                    // A hub restart ends the session; that is no slow client.
                    stall.clean = false;
                    stall.cut_off = false;
                }
                chat.count(|f| {
                    f.logins_ok += 1;
                    f.interrupted_by_restart += u64::from(!steady);
                    f.stalls += 1;
                    f.stalls_cut_off += u64::from(stall.cut_off);
                    f.longest_stall = f.longest_stall.max(stall.stalled_for);
                });
                lock(&chat.stalls).push(stall);
            }
            Err(error) => {
                let steady = hub_steady(hub, view.epoch);
                chat.count(|f| {
                    if steady {
                        f.errors.push(format!("staller: {error}"));
                    } else {
                        f.interrupted_by_restart += 1;
                    }
                });
            }
        }
    }
}

fn stall_once(
    clock: &Clock,
    seed: u64,
    read_for: f64,
    stall_for: f64,
    stop: &AtomicBool,
) -> Result<Stall, String> {
    let mut conn = Conn::open(None).map_err(|e| format!("connect: {e}"))?;
    let answer = conn.login(STALLER, &password(STALLER, seed))?;
    if !answer.starts_with("OK ") {
        return Err(format!("right password refused: {answer}"));
    }
    let from = clock.now();
    let mut received = Vec::new();
    let mut cut_off = false;
    let mut take = |conn: &mut Conn, for_: Duration, idle_end: bool| -> bool {
        let until = Instant::now() + for_;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            match conn.read(left.min(Duration::from_millis(500))) {
                Read::Line(line) => {
                    if let Some(text) = line
                        .strip_prefix("MSG ")
                        .and_then(|rest| rest.split_once(' '))
                    {
                        received.push(text.1.to_owned());
                    }
                    if line.starts_with("ERR ") {
                        return false;
                    }
                }
                Read::Timeout if idle_end => return true,
                Read::Timeout => {}
                Read::Closed => return false,
            }
        }
    };
    let mut open = take(&mut conn, Duration::from_secs_f64(read_for), false);
    let stalled = Instant::now();
    if open {
        sleep_for(stop, Duration::from_secs_f64(stall_for));
    }
    let stalled_for = stalled.elapsed().as_secs_f64();
    // The backlog: until nothing came for 500 ms, 5 s at most.
    open = open && take(&mut conn, Duration::from_secs(5), true);
    if !open {
        cut_off = true;
    }
    let to = clock.now();
    if open {
        conn.send("/quit").map_err(|e| e.to_string())?;
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            match conn.read(until.saturating_duration_since(Instant::now())) {
                Read::Line(line) if line == "BYE" => break,
                Read::Line(line) => {
                    if let Some(text) = line
                        .strip_prefix("MSG ")
                        .and_then(|rest| rest.split_once(' '))
                    {
                        received.push(text.1.to_owned());
                    }
                }
                Read::Timeout | Read::Closed => break,
            }
            if Instant::now() >= until {
                break;
            }
        }
    }
    Ok(Stall {
        from,
        to,
        clean: !cut_off,
        cut_off,
        received,
        stalled_for,
    })
}

/// Wrong passwords, every 3-8 s, each from another loopback address
/// (127.0.2.1 to 127.0.2.250 in turn).
pub fn intruder(hub: &Node, chat: &Chat, seed: u64, stop: &AtomicBool) {
    let mut rng = Rng::new(seed, 400);
    let mut attempt = 0u32;
    while sleep_for(stop, Duration::from_secs_f64(rng.range(3.0, 8.0))) {
        let view = hub.view();
        if view.state != State::Running {
            continue;
        }
        let user = TALKERS[rng.below(TALKERS.len())];
        let source = Ipv4Addr::new(127, 0, 2, (attempt % 250 + 1) as u8);
        attempt += 1;
        let outcome = Conn::open(Some(source))
            .map_err(|e| format!("connect: {e}"))
            .and_then(|mut conn| {
                let answer = conn.login(user, "not the password")?;
                let _ = conn.send("/quit");
                Ok(answer)
            });
        let steady = hub_steady(hub, view.epoch);
        chat.count(|f| match outcome {
            Ok(answer) if answer == "ERR auth invalid credentials" => f.logins_refused += 1,
            Ok(answer) if answer.starts_with("OK ") => {
                f.wrong_password_accepted += 1;
                f.errors.push(format!(
                    "a wrong password for {user} was accepted: {answer}"
                ));
            }
            Ok(answer) => f
                .errors
                .push(format!("wrong password for {user} from {source}: {answer}")),
            Err(_) if !steady => f.interrupted_by_restart += 1,
            Err(error) => f
                .errors
                .push(format!("wrong password for {user} from {source}: {error}")),
        });
    }
}
