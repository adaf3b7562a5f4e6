//! A proxy in front of a private engine's socket: forwards requests, or answers 500 to some,
//! or holds some until released; counts what passes.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::harness::PrivateEngine;

/// What to do with a request, by its (percent-decoded) request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it to the engine.
    Forward,
    /// Answer 500 "injected failure".
    Fail,
    /// Wait until [`Proxy::release`], then forward.
    Hold,
}

/// A running proxy.
pub struct Proxy {
    /// Its socket.
    pub path: PathBuf,
    requests: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
    gate: Arc<(Mutex<bool>, Condvar)>,
}

impl Proxy {
    /// Starts a proxy deciding each request with `rule`.
    pub fn start(
        engine: &PrivateEngine,
        rule: impl Fn(&str) -> Verdict + Send + Sync + 'static,
    ) -> Self {
        let path = engine.scratch().join("proxy.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let upstream = engine.socket.clone();
        let requests = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let rule = Arc::new(rule);
        let (r, h, g) = (requests.clone(), held.clone(), gate.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let (upstream, rule) = (upstream.clone(), rule.clone());
                let (r, h, g) = (r.clone(), h.clone(), g.clone());
                std::thread::spawn(move || serve(client, &upstream, &*rule, &r, &h, &g));
            }
        });
        Self {
            path,
            requests,
            held,
            gate,
        }
    }

    /// `unix://` URL of its socket.
    pub fn url(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Requests received so far (each connection carries one: dockgc does not reuse them).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Requests being held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Lets held requests (and later ones) through.
    pub fn release(&self) {
        let (open, wake) = &*self.gate;
        *open.lock().unwrap() = true;
        wake.notify_all();
    }
}

fn serve(
    mut client: UnixStream,
    upstream: &std::path::Path,
    rule: &(dyn Fn(&str) -> Verdict + Send + Sync),
    requests: &AtomicUsize,
    held: &AtomicUsize,
    gate: &(Mutex<bool>, Condvar),
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let line = percent_decode(String::from_utf8_lossy(&head).lines().next().unwrap_or(""));
    match rule(&line) {
        Verdict::Forward => {}
        Verdict::Fail => {
            let body = r#"{"message":"injected failure"}"#;
            let _ = write!(client, "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            return;
        }
        Verdict::Hold => {
            held.fetch_add(1, Ordering::SeqCst);
            let (open, wake) = gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = wake.wait(open).unwrap();
            }
            drop(open);
            held.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let Ok(mut server) = UnixStream::connect(upstream) else {
        return;
    };
    server.write_all(&head).unwrap();
    let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut s2);
    });
    let _ = std::io::copy(&mut server, &mut client);
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => {
                out.push(u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap());
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
