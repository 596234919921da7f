//! A TCP proxy that records every byte it forwards, to check what a link
//! puts on the wire.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

/// A running tap: connections to [`Tap::addr`] are forwarded to the target.
pub struct Tap {
    addr: SocketAddr,
    captured: Arc<Mutex<Vec<u8>>>,
}

impl Tap {
    /// Listens on a free loopback port and forwards to `target`.
    pub fn start(target: SocketAddr) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the tap");
        let addr = listener.local_addr().expect("tap address");
        let captured = Arc::new(Mutex::new(Vec::new()));
        let sink = captured.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let sink = sink.clone();
                    thread::spawn(move || copy(from, to, &sink));
                }
            }
        });
        Tap { addr, captured }
    }

    /// Where to connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything forwarded so far, both directions.
    pub fn captured(&self) -> Vec<u8> {
        self.captured.lock().expect("tap lock").clone()
    }
}

fn copy(mut from: TcpStream, mut to: TcpStream, sink: &Mutex<Vec<u8>>) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                sink.lock()
                    .expect("tap lock")
                    .extend_from_slice(&buffer[..n]);
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
