//! The in-process server the engine tests drive: an engine on a virtual clock, its batches
//! committed to a [`Sink`] as a server commits them, the events of the committed batches kept
//! for the test to look at, and phones paired and driven through
//! [`Engine::handle_packet`].

use std::net::SocketAddr;
use std::sync::Arc;

use zoftoken_device::{Pairing, Reply, Request};
use zoftoken_engine::{
    Batch, Engine, EngineConfig, Event, EventKind, MemoryCommit, Mutation, PacketOutcome,
    TokenRecord,
};
use zoftoken_proto::{DropReason, TokenId};
use zoftoken_storage::Store;

use crate::clock::T0;
use crate::phone::{Link, Phone};

/// The address every harness datagram comes from.
pub const SRC: &str = "192.0.2.7:40000";

/// Where a harness's batches are committed.
pub trait Sink {
    /// Commits `batch` at `now_ms` through [`Engine::commit`] (the engine publishes it once
    /// written). Panics if the write fails: a harness's writes are expected to work.
    fn commit(&mut self, engine: &Engine, now_ms: u64, batch: &mut Batch);
}

/// Into memory: every record written stays in [`MemoryCommit::log`].
impl Sink for MemoryCommit {
    fn commit(&mut self, engine: &Engine, _: u64, batch: &mut Batch) {
        if let Err(failed) = engine.commit(self, batch) {
            match failed.source {}
        }
    }
}

/// Into a store, as the API and the command line commit ([`Store::commit_batch`]).
impl Sink for Store {
    fn commit(&mut self, engine: &Engine, now_ms: u64, batch: &mut Batch) {
        commit_to_store(self, engine, now_ms, batch)
    }
}

/// As [`Store`], shared.
impl Sink for Arc<Store> {
    fn commit(&mut self, engine: &Engine, now_ms: u64, batch: &mut Batch) {
        commit_to_store(self, engine, now_ms, batch)
    }
}

fn commit_to_store(store: &Store, engine: &Engine, now_ms: u64, batch: &mut Batch) {
    if let Err(e) = store.commit_batch(engine, now_ms, batch) {
        panic!("the harness's store could not write: {e}");
    }
}

impl<S: Sink + ?Sized> Sink for &mut S {
    fn commit(&mut self, engine: &Engine, now_ms: u64, batch: &mut Batch) {
        (**self).commit(engine, now_ms, batch)
    }
}

/// An engine on a virtual clock with its sink: the server side of an engine test.
pub struct Harness<S: Sink = MemoryCommit> {
    /// The engine (replace it to simulate a restart).
    pub engine: Arc<Engine>,
    /// Where batches are written.
    pub sink: S,
    /// The virtual time (Unix ms): every call uses it; move it forward at will.
    pub now: u64,
    /// Events of the batches committed so far and not yet taken ([`Harness::kinds`]).
    pub seen: Vec<Event>,
    /// Where datagrams come from.
    pub src: SocketAddr,
}

impl Harness<MemoryCommit> {
    /// An engine built from `config` writing into memory, at [`T0`].
    pub fn new(config: EngineConfig) -> Harness<MemoryCommit> {
        let engine = Engine::new(config).expect("a valid engine configuration");
        Harness::with_sink(Arc::new(engine), MemoryCommit::default(), T0)
    }
}

impl Harness<MemoryCommit> {
    /// The paired tokens as the log holds them: each one's last whole record with the state
    /// updates written after it; deleted tokens left out.
    pub fn stored_tokens(&self) -> Vec<TokenRecord> {
        let mut last: Vec<TokenRecord> = Vec::new();
        for m in &self.sink.log {
            match m {
                Mutation::Token(r) => {
                    last.retain(|t| t.token_id() != r.token_id());
                    last.push((**r).clone());
                }
                Mutation::TokenState(s) => {
                    if let Some(t) = last.iter_mut().find(|t| t.token_id() == s.token_id) {
                        t.apply_state(s);
                    }
                }
                Mutation::DeleteToken(id) => last.retain(|t| t.token_id() != *id),
                _ => {}
            }
        }
        last
    }

    /// The token `id` as the log holds it ([`Harness::stored_tokens`]).
    pub fn stored_token(&self, id: &TokenId) -> Option<TokenRecord> {
        self.stored_tokens()
            .into_iter()
            .find(|t| t.token_id() == *id)
    }

    /// A restart: a new engine built from `config` (give it a new epoch) takes over, loaded
    /// with the tokens the log holds ([`Harness::stored_tokens`]).
    pub fn restart_from_log(&mut self, config: EngineConfig) {
        let engine = Engine::new(config).expect("a valid engine configuration");
        for r in self.stored_tokens() {
            engine.load_token(&r).expect("a stored token loads");
        }
        self.engine = Arc::new(engine);
    }
}

impl<S: Sink> Harness<S> {
    /// `engine` writing into `sink`, at `now`.
    pub fn with_sink(engine: Arc<Engine>, sink: S, now: u64) -> Harness<S> {
        Harness {
            engine,
            sink,
            now,
            seen: Vec::new(),
            src: SRC.parse().expect("an address"),
        }
    }

    /// Commits `batch` as a server does; its events join [`Harness::seen`].
    pub fn commit(&mut self, mut batch: Batch) {
        let events: Vec<Event> = batch.events().cloned().collect();
        self.sink.commit(&self.engine, self.now, &mut batch);
        self.seen.extend(events);
    }

    /// Hands a datagram to the engine and commits its batch; the reply, or why there is none.
    pub fn deliver(&mut self, datagram: &[u8]) -> Result<Vec<u8>, DropReason> {
        let mut d = datagram.to_vec();
        let mut out = [0u8; 1200];
        let mut batch = Batch::new();
        let outcome = self
            .engine
            .handle_packet(self.now, self.src, &mut d, &mut out, &mut batch);
        self.commit(batch);
        match outcome {
            PacketOutcome::Reply(n) => {
                assert!(n <= datagram.len(), "reply larger than request");
                Ok(out.get(..n).unwrap_or_default().to_vec())
            }
            PacketOutcome::Drop(r) => Err(r),
        }
    }

    /// Runs an API operation (`f` gets the engine, the time and a batch), then commits.
    pub fn admin<R>(&mut self, f: impl FnOnce(&Engine, u64, &mut Batch) -> R) -> R {
        let mut batch = Batch::new();
        let r = f(&self.engine, self.now, &mut batch);
        self.commit(batch);
        r
    }

    /// The kinds of the events seen since the last call (they are taken).
    pub fn kinds(&mut self) -> Vec<EventKind> {
        std::mem::take(&mut self.seen)
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    /// Enrolls `user` in `service` and pairs a phone with the deeplink (with the duress PIN
    /// if `duress`).
    pub fn pair(&mut self, service: &str, user: &str, duress: bool) -> Phone {
        let ticket = self
            .admin(|e, now, b| e.enroll(now, service, user, b))
            .expect("enrolled");
        Phone::pair_deeplink(self, &ticket.deeplink, duress)
    }

    /// Completes `pairing` (with the duress PIN if `duress`).
    pub fn pair_with(&mut self, pairing: Pairing, duress: bool) -> Phone {
        Phone::pair(self, pairing, duress)
    }

    /// The phone builds and sends a request; its checked reply, or the drop reason.
    pub fn send(&mut self, phone: &mut Phone, req: Request<'_>) -> Result<Reply, DropReason> {
        phone.send(self, req)
    }

    /// OPEN with the phone's PIN.
    pub fn open(&mut self, phone: &mut Phone) -> Result<Reply, DropReason> {
        phone.open(self)
    }

    /// OPEN with the phone's duress PIN.
    pub fn open_duress(&mut self, phone: &mut Phone) -> Result<Reply, DropReason> {
        phone.open_duress(self)
    }

    /// `n` STATUS requests the phone built (counters in order), none delivered yet.
    pub fn status_requests(&self, phone: &mut Phone, n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|_| phone.request(self.now, Request::Status))
            .collect()
    }
}

impl<S: Sink> Link for Harness<S> {
    type Error = DropReason;

    fn now_ms(&self) -> u64 {
        self.now
    }

    fn exchange(&mut self, datagram: &[u8]) -> Result<Vec<u8>, DropReason> {
        self.deliver(datagram)
    }
}
