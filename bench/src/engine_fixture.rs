//! Fixtures for the engine benchmarks: an engine loaded with N paired tokens (the load
//! generator's [`TokenSet`] of service `bench`, seed 0: synthetic records, one shared PIN
//! verifier so that loading needs no Argon2id), and streams of sealed requests with the
//! realistic mix (STATUS 60 %, OPEN 20 %, CLOSE 20 %) or another [`StreamMix`], each token's
//! packets in counter order and all on one stream (as a phone sends them). Every OPEN names a
//! fresh PIN index (the counter's low 24 bits) and carries the proof under that index's PIN
//! key, derived from the token's PIN root exactly as the server derives it
//! (`zoftoken_engine::pin_root` of the engine's [`PIN_TREE_SECRET`] and the token secret).
//!
//! A benchmark whose setup fails or whose packets are dropped measures the wrong thing, so
//! this module panics rather than report a figure.
#![allow(clippy::panic)]

use std::net::SocketAddr;

use zerocopy::IntoBytes;
use zoftoken_engine::{
    Batch, Engine, EngineConfig, MemoryCommit, PacketOutcome, Prefetcher, ServiceConfig,
};
use zoftoken_loadgen::TokenSet;
use zoftoken_proto::packet::seal_request;
use zoftoken_proto::pin_keys::PIN_INDEX_LIMIT;
use zoftoken_proto::wire::{Be64, MsgType, OpenRequest, PinIndex, PlainRequest};
use zoftoken_proto::{DropReason, PinVerifier, TokenId, TokenSecret};

/// The virtual time of every benchmark packet.
pub const NOW_MS: u64 = 1_800_000_000_000;

/// The benchmark engine's instance PIN-tree secret (`EngineConfig::pin_tree_secret`).
pub const PIN_TREE_SECRET: [u8; 32] = [0x5b; 32];

/// The request mix of a stream, in percent (they add up to 100).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamMix {
    /// STATUS, percent.
    pub status: u8,
    /// OPEN with the right PIN, percent.
    pub open: u8,
    /// CLOSE, percent.
    pub close: u8,
}

impl StreamMix {
    /// STATUS 60 %, OPEN 20 %, CLOSE 20 %.
    pub const REALISTIC: StreamMix = StreamMix {
        status: 60,
        open: 20,
        close: 20,
    };
    /// Every packet an OPEN (each with a PIN index and proof).
    pub const OPEN: StreamMix = StreamMix {
        status: 0,
        open: 100,
        close: 0,
    };

    /// `realistic`, `open`, or `status/open/close` in percent.
    pub fn parse(s: &str) -> Result<StreamMix, String> {
        match s {
            "realistic" => return Ok(StreamMix::REALISTIC),
            "open" => return Ok(StreamMix::OPEN),
            _ => {}
        }
        let parts: Vec<u8> = s
            .split('/')
            .map(|p| p.trim().parse::<u8>().map_err(|e| format!("{p:?}: {e}")))
            .collect::<Result<_, _>>()?;
        let [status, open, close] = parts[..] else {
            return Err("expected realistic, open, or status/open/close percentages".into());
        };
        if u32::from(status) + u32::from(open) + u32::from(close) != 100 {
            return Err(format!("{s}: the percentages must add up to 100"));
        }
        Ok(StreamMix {
            status,
            open,
            close,
        })
    }
}

/// The synthetic tokens: the load generator's token set of service `bench`, seed 0 (users
/// `user{i}`); `count` does not change any token.
pub fn token_set(count: u64) -> TokenSet {
    TokenSet::new("bench", 0, count)
}

/// The token id of synthetic token `i`.
pub fn token_id(i: u64) -> TokenId {
    token_set(i + 1).token_id(i)
}

fn secret(i: u64) -> [u8; 32] {
    token_set(i + 1).secret(i)
}

/// The shared PIN verifier of every synthetic token.
pub fn verifier() -> PinVerifier {
    token_set(0).verifier()
}

/// An engine with `tokens` paired, closed tokens, ids `token_id(0..tokens)`.
pub fn loaded_engine(tokens: u64, shards: usize) -> Engine {
    let mut service = ServiceConfig::new("bench", &["127.0.0.1:4500"]);
    service.window_s = 600;
    let mut config = EngineConfig::new(vec![service], 1, [7; 32]);
    config.shards = shards;
    config.pin_tree_secret = PIN_TREE_SECRET;
    let engine = Engine::new(config).unwrap_or_else(|e| panic!("engine: {e}"));
    let set = token_set(tokens);
    for i in 0..tokens {
        let record = set.record(i, 0);
        engine
            .load_token(&record)
            .unwrap_or_else(|e| panic!("load: {e}"));
    }
    engine
}

/// Sealed requests, back to back, with their offsets.
pub struct Stream {
    /// All datagrams concatenated.
    pub bytes: Vec<u8>,
    /// `(start, len)` of each datagram.
    pub packets: Vec<(usize, usize)>,
}

/// Builds `streams` streams of `per_stream` packets over tokens `0..tokens` with the
/// realistic mix; stream `s` only uses tokens with `i % streams == s`. `counters` holds each
/// token's next counter and is advanced, so successive calls continue where the last left off.
pub fn streams(
    tokens: u64,
    streams: usize,
    per_stream: usize,
    counters: &mut [u64],
    seed: u64,
) -> Vec<Stream> {
    streams_with(
        tokens,
        streams,
        per_stream,
        counters,
        seed,
        StreamMix::REALISTIC,
    )
}

/// As [`streams`], with the request mix `mix`.
pub fn streams_with(
    tokens: u64,
    streams: usize,
    per_stream: usize,
    counters: &mut [u64],
    seed: u64,
    mix: StreamMix,
) -> Vec<Stream> {
    let status_pct = u64::from(mix.status);
    let open_pct = status_pct + u64::from(mix.open);
    let v = verifier();
    let mut rng = seed | 1;
    let mut next = || {
        // xorshift64*: reproducible and cheap.
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let per_stream_tokens = (tokens / streams as u64).max(1);
    (0..streams)
        .map(|s| {
            let mut bytes = Vec::with_capacity(per_stream * 80);
            let mut packets = Vec::with_capacity(per_stream);
            let mut out = [0u8; 128];
            for _ in 0..per_stream {
                let i = (next() % per_stream_tokens) * streams as u64 + s as u64;
                let i = i.min(tokens - 1);
                let id = token_id(i);
                let counter = counters.get(i as usize).copied().unwrap_or(1);
                if let Some(c) = counters.get_mut(i as usize) {
                    *c += 1;
                }
                let k = secret(i);
                let keys = TokenSecret::from_bytes(k).keys();
                let roll = next() % 100;
                let time = Be64::new(NOW_MS);
                let (t, body): (MsgType, Vec<u8>) = if roll < status_pct {
                    (
                        MsgType::Status,
                        PlainRequest {
                            device_time_ms: time,
                            zero: [0; 16],
                        }
                        .as_bytes()
                        .to_vec(),
                    )
                } else if roll < open_pct {
                    let index = (counter % u64::from(PIN_INDEX_LIMIT)) as u32;
                    let key = zoftoken_engine::pin_root(&PIN_TREE_SECRET, &k)
                        .key(index)
                        .unwrap_or_else(|e| panic!("PIN key: {e}"));
                    let proof = v.proof(&key, MsgType::Open, &id.0, counter);
                    (
                        MsgType::Open,
                        OpenRequest {
                            device_time_ms: time,
                            pin: PinIndex::new(index),
                            proof,
                        }
                        .as_bytes()
                        .to_vec(),
                    )
                } else {
                    (
                        MsgType::Close,
                        PlainRequest {
                            device_time_ms: time,
                            zero: [0; 16],
                        }
                        .as_bytes()
                        .to_vec(),
                    )
                };
                let n = seal_request(&keys.d2s, t, id.0, counter, &body, &mut out).unwrap_or(0);
                packets.push((bytes.len(), n));
                bytes.extend_from_slice(out.get(..n).unwrap_or_default());
            }
            Stream { bytes, packets }
        })
        .collect()
}

/// Processes the packets `range` of a stream as a server would: receive batches of 32
/// packets, each packet fully (parse, open, state change, seal of the reply), then the batch
/// committed through the engine ([`commit_in_memory`]: written to a log in memory, then
/// discarded) and so published. With `prefetch`, the
/// table lines are prefetched as the server does ([`Engine::prefetch_batch`] on each batch
/// before its packets). Returns the number of replies; panics if any packet was dropped (a
/// benchmark bug).
pub fn run_range(
    engine: &Engine,
    stream: &mut Stream,
    range: std::ops::Range<usize>,
    prefetch: bool,
) -> usize {
    let mut log = MemoryCommit::default();
    run_committing(engine, stream, range, prefetch, 32, &mut |b| {
        commit_in_memory(engine, &mut log, b)
    })
}

/// Commits `batch` through the engine ([`Engine::commit`]: the write, then the publish) into
/// `log`, then empties the log: the engine's whole commit path, without storage's write.
pub fn commit_in_memory(engine: &Engine, log: &mut MemoryCommit, batch: &mut Batch) {
    if let Err(failed) = engine.commit(log, batch) {
        // A write into memory cannot fail.
        match failed.source {}
    }
    log.log.clear();
}

/// As [`run_range`], handing the batch of mutations of every `commit_every` packets (a
/// multiple of the receive batch of 32) to `commit`, which must leave it empty: commit it
/// through the engine (inline group commit), or take it and hand it to a writer thread
/// (pipelined group commit). Then, as the server does, their replies could be sent.
/// Returns the packets answered: a request for a token whose change of an earlier batch is
/// still being written is dropped unanswered, as the server drops it (the phone retries), and
/// is not counted.
pub fn run_committing(
    engine: &Engine,
    stream: &mut Stream,
    range: std::ops::Range<usize>,
    prefetch: bool,
    commit_every: usize,
    commit: &mut dyn FnMut(&mut Batch),
) -> usize {
    let src: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 40000));
    let mut out = [0u8; 1200];
    let mut batch = Batch::new();
    let mut prefetcher = Prefetcher::default();
    let mut replies = 0;
    let mut pending = 0;
    let Stream { bytes, packets } = stream;
    let packets = packets.get(range).unwrap_or_default();
    // Receive batches of 32, as the IO driver hands them over: prefetch, process, commit.
    for chunk in packets.chunks(32) {
        if prefetch {
            engine.prefetch_batch(
                &mut prefetcher,
                chunk.iter().filter_map(|p| datagram(bytes, p)),
            );
        }
        for (start, len) in chunk {
            let Some(d) = bytes.get_mut(*start..*start + *len) else {
                continue;
            };
            match engine.handle_packet(NOW_MS, src, d, &mut out, &mut batch) {
                PacketOutcome::Reply(_) => replies += 1,
                PacketOutcome::Drop(DropReason::Unsettled) => {}
                PacketOutcome::Drop(r) => panic!("benchmark packet dropped: {r}"),
            }
        }
        pending += chunk.len();
        if pending >= commit_every {
            commit(&mut batch);
            pending = 0;
        }
    }
    commit(&mut batch);
    replies
}

/// The whole stream through `floor` ([`crate::echo::Floor`]: the minimum work of any server of
/// the protocol, with no engine) in batches of 32, as [`run`] takes it through the engine.
/// The stream is left as it was (the floor opens copies). Returns the packets handled.
pub fn run_floor(floor: &mut crate::echo::Floor, stream: &Stream) -> usize {
    let Stream { bytes, packets } = stream;
    for chunk in packets.chunks(32) {
        let datagrams = chunk.iter().filter_map(|p| datagram(bytes, p));
        if let Err(e) = floor.handle_datagrams(datagrams) {
            panic!("floor: {e}");
        }
    }
    packets.len()
}

/// Packet `(start, len)` of a stream's bytes.
fn datagram<'b>(bytes: &'b [u8], &(start, len): &(usize, usize)) -> Option<&'b [u8]> {
    bytes.get(start..start + len)
}

/// The whole stream through [`run_range`] with prefetching, as the server does.
pub fn run(engine: &Engine, stream: &mut Stream) -> usize {
    let all = 0..stream.packets.len();
    run_range(engine, stream, all, true)
}

/// Resident set size of this process in bytes (Linux `/proc/self/statm`).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
