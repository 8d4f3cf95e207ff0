//! The storage benchmark (run by `bench/storage.sh`):
//!
//! - engine packets/s with persistence on as a ratio of the same engine without persistence,
//!   measured interleaved in the same run. Modes: `memory` (the baseline), `wal` (the
//!   server's way: each receive batch of 32 packets handed to the [`Committer`]'s writer
//!   thread, which writes whatever is queued in one atomic write, WAL without fsync, and
//!   publishes the batches; the processing thread goes on and holds at most 8 batches in
//!   flight), `wal-inline` (the processing thread commits each batch itself before it goes
//!   on) and `fsync` (as `wal`, with fsync per write);
//! - start-up time: a database of N tokens (written first) reopened and loaded into a new
//!   engine in parallel, for each N of `--startup`.
//!
//! Ends with one JSON line: `{"persist_ratio":…,"fsync_ratio":…,"startup_1m_s":…}`.
//!
//! Options: `--tokens`, `--packets`, `--fsync-packets`, `--rounds`, `--threads` (1 or 2),
//! `--commit-every` (packets per group commit, default 32 = one receive batch), `--modes`
//! (`memory,wal,wal-inline,fsync`), `--startup` (comma-separated token counts, empty: none), `--dir`.
//! `STORAGE_MICRO=1` times commits alone (fixed and per-record cost); `STORAGE_BENCH_MARK=1`
//! prints when each timed phase starts (for `perf record -D`).
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use zoftoken_bench::engine_fixture::{
    commit_in_memory, loaded_engine, run_committing, streams, token_id, Stream, NOW_MS,
};
use zoftoken_engine::{
    Batch, Engine, EngineConfig, MemoryCommit, Mutation, ServiceConfig, TokenStateRecord,
};
use zoftoken_loadgen::TokenSet;
use zoftoken_storage::{Committer, CommitterConfig, Durability, MasterKey, Store};
use zoftoken_storage_rocksdb::RocksKv;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num(name: &str, default: u64) -> u64 {
    arg(name).map_or(default, |v| {
        v.parse().unwrap_or_else(|_| panic!("{name}: not a number"))
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn open(dir: &Path) -> Store {
    let kv = RocksKv::open(dir).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    Store::open(
        Arc::new(kv),
        MasterKey::from_bytes([0x5a; 32]),
        Durability::Wal,
    )
    .unwrap()
}

/// Writes `n` paired tokens (cold record, sealed secrets, state) in batches of 10 000: the
/// fixture's tokens (the load generator's token set with seed 0).
fn fill(store: &Store, engine: &Engine, n: u64) -> f64 {
    let t = Instant::now();
    let set = TokenSet::new("bench", 0, n);
    for start in (0..n).step_by(10_000) {
        store
            .commit(&set.server_mutations(start..start + 10_000), engine)
            .unwrap();
    }
    store.flush().unwrap();
    t.elapsed().as_secs_f64()
}

fn empty_engine() -> Engine {
    let mut config = EngineConfig::new(
        vec![ServiceConfig::new("bench", &["127.0.0.1:4500"])],
        1,
        [7; 32],
    );
    config.shards = 64;
    Engine::new(config).unwrap()
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    /// No persistence: the baseline.
    Memory,
    /// WAL, no fsync; group commit on the writer thread, pipelined (the server's way).
    Wal,
    /// WAL, no fsync; each batch committed by the processing thread before it goes on.
    WalInline,
    /// WAL with fsync per write, pipelined.
    Fsync,
}

impl Mode {
    const ALL: [(&'static str, Mode); 4] = [
        ("memory", Mode::Memory),
        ("wal", Mode::Wal),
        ("wal-inline", Mode::WalInline),
        ("fsync", Mode::Fsync),
    ];
}

/// Receive batches one processing thread may have waiting for the writer (their replies
/// held back) before it stops to wait.
const MAX_IN_FLIGHT: usize = 8;

/// Processes one stream with `mode`'s persistence; returns the replies.
fn run_stream(
    engine: &Engine,
    stream: &mut Stream,
    commit_every: usize,
    mode: Mode,
    store: &Store,
    committer: Option<&Committer>,
) -> usize {
    let len = stream.packets.len();
    match (mode, committer) {
        (Mode::Memory, _) => {
            let mut log = MemoryCommit::default();
            run_committing(engine, stream, 0..len, true, commit_every, &mut |b| {
                commit_in_memory(engine, &mut log, b)
            })
        }
        (Mode::WalInline, _) => {
            run_committing(engine, stream, 0..len, true, commit_every, &mut |b| {
                engine
                    .commit(&mut store.durable_write(engine, Durability::Wal), b)
                    .unwrap();
            })
        }
        (_, Some(committer)) => {
            let mut submitter = committer.submitter();
            let mut spare: Vec<Batch> = Vec::new();
            let replies = run_committing(engine, stream, 0..len, true, commit_every, &mut |b| {
                // Hand the batch to the writer and go on; the replies of a batch would be
                // sent when its answer arrives.
                let full = std::mem::replace(b, spare.pop().unwrap_or_default());
                submitter.submit(full).map_err(|(_, e)| e).unwrap();
                while let Some(done) = submitter.try_done() {
                    done.result.unwrap();
                    spare.push(done.batch);
                }
                while submitter.in_flight() >= MAX_IN_FLIGHT {
                    let done = submitter.wait_done().unwrap();
                    done.result.unwrap();
                    spare.push(done.batch);
                }
            });
            while let Some(done) = submitter.wait_done() {
                done.result.unwrap();
            }
            replies
        }
        (_, None) => unreachable!("pipelined modes run with a committer"),
    }
}

fn main() {
    let tokens = num("--tokens", 1_000_000);
    let packets = num("--packets", 1_000_000) as usize;
    let fsync_packets = num("--fsync-packets", packets as u64 / 20) as usize;
    let rounds = num("--rounds", 3).max(1) as usize;
    let threads = num("--threads", 1).clamp(1, 2) as usize;
    let commit_every = num("--commit-every", 32).max(1) as usize;
    let base: PathBuf = arg("--dir").map_or_else(
        || std::env::temp_dir().join("zoftoken-storage-bench"),
        PathBuf::from,
    );
    let startup: Vec<u64> = arg("--startup")
        .unwrap_or_else(|| "1000000".into())
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();

    let t0 = Instant::now();
    if std::env::var_os("STORAGE_MICRO").is_some() {
        let store = open(&base.join("micro"));
        let e = empty_engine();
        for n in [1usize, 8, 32, 128] {
            for events in [false, true] {
                let mut mutations = Vec::new();
                for i in 0..n {
                    let mut s = TokenStateRecord::new(token_id(i as u64));
                    s.version = 1;
                    mutations.push(Mutation::TokenState(s));
                    if events {
                        mutations.push(Mutation::Event(zoftoken_engine::Event::new(
                            zoftoken_engine::EventKind::Opened,
                            token_id(i as u64),
                            0,
                            1,
                            zoftoken_engine::Actor::Device,
                        )));
                    }
                }
                let iters = 20_000 / n.max(1) + 2000;
                let t = Instant::now();
                for k in 0..iters {
                    for m in mutations.iter_mut() {
                        if let Mutation::TokenState(s) = m {
                            s.version = k as u32;
                        }
                    }
                    store.commit(&mutations, &e).unwrap();
                }
                let per = t.elapsed().as_nanos() as f64 / iters as f64;
                println!(
                    "micro n={n} events={events} ns_per_commit={per:.0} ns_per_record={:.0}",
                    per / n as f64
                );
            }
        }
        return;
    }
    // Persistence ratio.
    let engine = Arc::new(loaded_engine(tokens, 64));
    let store = Arc::new(open(&base.join("persist")));
    let fill_s = fill(&store, &engine, tokens);
    eprintln!("filled {tokens} tokens in {fill_s:.1} s");
    let mut counters = vec![1u64; tokens as usize];
    let modes = arg("--modes").unwrap_or_else(|| "memory,wal,wal-inline,fsync".into());
    let mut results: Vec<(Mode, Vec<f64>)> = Mode::ALL
        .into_iter()
        .filter(|(name, _)| modes.split(',').any(|m| m == *name))
        .map(|(_, m)| (m, vec![]))
        .collect();
    for round in 0..rounds {
        for (mode, pps) in results.iter_mut() {
            let n = if *mode == Mode::Fsync {
                fsync_packets
            } else {
                packets
            };
            let seed = 1000 * round as u64 + *mode as u64;
            let mut st = streams(tokens, threads, n / threads, &mut counters, seed);
            if std::env::var_os("STORAGE_BENCH_MARK").is_some() {
                eprintln!("processing {:?}", t0.elapsed());
            }
            let t = Instant::now();
            let committer = match *mode {
                Mode::Wal => Some(Durability::Wal),
                Mode::Fsync => Some(Durability::Fsync),
                Mode::Memory | Mode::WalInline => None,
            }
            .map(|durability| {
                let config = CommitterConfig::new(durability, threads);
                Committer::start(store.clone(), engine.clone(), config).unwrap()
            });
            let done: usize = std::thread::scope(|s| {
                let handles: Vec<_> = st
                    .iter_mut()
                    .map(|stream| {
                        let (engine, store, mode, committer) =
                            (&engine, &store, *mode, committer.as_ref());
                        s.spawn(move || {
                            run_stream(engine, stream, commit_every, mode, store, committer)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).sum()
            });
            let secs = t.elapsed().as_secs_f64();
            pps.push(done as f64 / secs);
            if let Some(c) = committer {
                let stats = c.stats();
                let load =
                    |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
                let (writes, batches) = (load(&stats.writes), load(&stats.batches));
                eprintln!(
                    "{mode:?}: {writes} group writes for {batches} batches ({:.1} per write), writer busy {:.0} % of the run, {:.1} µs per batch",
                    batches as f64 / writes.max(1) as f64,
                    100.0 * load(&stats.write_ns) as f64 / 1e9 / secs,
                    load(&stats.write_ns) as f64 / 1e3 / batches.max(1) as f64
                );
                c.shutdown();
            }
        }
    }
    let med = |mode: Mode| {
        results
            .iter()
            .find(|(m, _)| *m == mode)
            .map_or(f64::NAN, |(_, v)| median(v.clone()))
    };
    let (mem, wal, inline, fsync) = (
        med(Mode::Memory),
        med(Mode::Wal),
        med(Mode::WalInline),
        med(Mode::Fsync),
    );
    println!(
        "threads={threads} commit_every={commit_every} tokens={tokens} packets={packets} fsync_packets={fsync_packets} rounds={rounds} pps_memory={mem:.0} pps_wal={wal:.0} pps_wal_inline={inline:.0} pps_fsync={fsync:.0} persist_ratio={:.3} inline_ratio={:.3} fsync_ratio={:.3} all={:?}",
        wal / mem,
        inline / mem,
        fsync / mem,
        results.iter().map(|(m, v)| (m, v.iter().map(|x| x.round()).collect::<Vec<_>>())).collect::<Vec<_>>()
    );
    drop(store);
    drop(engine);
    let _ = std::fs::remove_dir_all(base.join("persist"));

    // Start-up.
    let mut startup_1m = None;
    for &n in &startup {
        let dir = base.join(format!("startup-{n}"));
        let fill_s = {
            let store = open(&dir);
            let e = empty_engine();
            fill(&store, &e, n)
        };
        let t = Instant::now();
        let store = open(&dir);
        let engine = empty_engine();
        let report = store.load(&engine, NOW_MS, 2, &|_| {}).unwrap();
        let s = t.elapsed().as_secs_f64();
        assert_eq!(report.tokens, n);
        println!(
            "startup tokens={n} fill_s={fill_s:.1} load_s={s:.2} (open + parallel load, 2 threads)"
        );
        if n == 1_000_000 {
            startup_1m = Some(s);
        }
        drop(engine);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!(
        "{{\"persist_ratio\":{:.3},\"fsync_ratio\":{:.3},\"startup_1m_s\":{}}}",
        wal / mem,
        fsync / mem,
        startup_1m.map_or("null".to_owned(), |s| format!("{s:.2}"))
    );
}
