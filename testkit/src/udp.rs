//! UDP on loopback: a [`Responder`] thread that answers datagrams on its own socket (an echo,
//! or the engine's packet path as a server runs it), and a phone's [`UdpLink`] to a server.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use zoftoken_engine::{Batch, Engine, MemoryCommit, PacketOutcome};

use crate::clock::now_ms;
use crate::phone::Link;

/// What a [`Responder`] does with datagram number `i` (from 0) from `peer`: writes the reply
/// into `out` and returns its length, or `None` to answer nothing.
pub type Answer = dyn FnMut(u64, SocketAddr, &mut [u8], &mut [u8]) -> Option<usize> + Send;

/// A thread answering the datagrams of a loopback socket until dropped.
pub struct Responder {
    /// Its address.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Responder {
    /// A responder on a new loopback socket.
    pub fn start(
        answer: impl FnMut(u64, SocketAddr, &mut [u8], &mut [u8]) -> Option<usize> + Send + 'static,
    ) -> Responder {
        Responder::on(
            UdpSocket::bind("127.0.0.1:0").expect("a loopback socket"),
            answer,
        )
    }

    /// A responder on `socket` (bound first when its address must be known before the
    /// answer is built, as a service's endpoint is).
    pub fn on(
        socket: UdpSocket,
        answer: impl FnMut(u64, SocketAddr, &mut [u8], &mut [u8]) -> Option<usize> + Send + 'static,
    ) -> Responder {
        let mut answer: Box<Answer> = Box::new(answer);
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("a read timeout");
        let addr = socket.local_addr().expect("a local address");
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (s, r) = (stop.clone(), received.clone());
        let handle = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut out = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let i = r.fetch_add(1, Ordering::Relaxed);
                let datagram = buf.get_mut(..n).unwrap_or_default();
                if let Some(len) = answer(i, peer, datagram, &mut out) {
                    let _ = socket.send_to(out.get(..len).unwrap_or_default(), peer);
                }
            }
        });
        Responder {
            addr,
            stop,
            received,
            handle: Some(handle),
        }
    }

    /// Echoes every datagram.
    pub fn echo() -> Responder {
        Responder::start(|_, _, d, out| {
            let len = d.len().min(out.len());
            out.get_mut(..len)?.copy_from_slice(d.get(..len)?);
            Some(len)
        })
    }

    /// The engine's packet path on a new loopback socket ([`Responder::engine_on`]).
    pub fn engine(engine: Arc<Engine>, keep: fn(u64) -> bool) -> Responder {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("a loopback socket");
        Responder::engine_on(socket, engine, keep)
    }

    /// The engine's packet path on `socket`, as a server runs it without storage: each
    /// datagram handled at the wall clock, its batch committed (into memory, then forgotten),
    /// its reply sent if there is one and `keep(i)` holds for datagram `i`.
    pub fn engine_on(socket: UdpSocket, engine: Arc<Engine>, keep: fn(u64) -> bool) -> Responder {
        let mut batch = Batch::new();
        let mut log = MemoryCommit::default();
        Responder::on(socket, move |i, src, d, out| {
            let outcome = engine.handle_packet(now_ms(), src, d, out, &mut batch);
            if let Err(failed) = engine.commit(&mut log, &mut batch) {
                match failed.source {}
            }
            log.log.clear();
            match outcome {
                PacketOutcome::Reply(n) if keep(i) => Some(n),
                _ => None,
            }
        })
    }

    /// Datagrams received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// No reply came within the link's timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoReply;

/// A phone's UDP socket on loopback and the server it talks to, on the wall clock.
pub struct UdpLink {
    /// The phone's socket.
    pub socket: UdpSocket,
    /// The server.
    pub server: SocketAddr,
}

impl UdpLink {
    /// A new loopback socket talking to `server`, waiting at most `timeout` for a reply.
    pub fn new(server: SocketAddr, timeout: Duration) -> UdpLink {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("a loopback socket");
        socket
            .set_read_timeout(Some(timeout))
            .expect("a read timeout");
        UdpLink { socket, server }
    }
}

impl Link for UdpLink {
    type Error = NoReply;

    fn now_ms(&self) -> u64 {
        now_ms()
    }

    /// Sends `datagram` to the server; its reply (which must come from the server), or
    /// [`NoReply`].
    fn exchange(&mut self, datagram: &[u8]) -> Result<Vec<u8>, NoReply> {
        self.socket
            .send_to(datagram, self.server)
            .expect("a datagram sent on loopback");
        let mut buf = [0u8; 2048];
        match self.socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                assert_eq!(from, self.server, "a reply from the server");
                Ok(buf.get(..n).unwrap_or_default().to_vec())
            }
            Err(_) => Err(NoReply),
        }
    }
}
