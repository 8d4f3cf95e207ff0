//! Engine benchmark (criterion): 1 million resident tokens, realistic mix (STATUS 60 %,
//! OPEN 20 %, CLOSE 20 %), each packet fully processed in receive batches of 32 with table
//! prefetch. One iteration is 10 000 packets (throughput is per packet).
//! `cargo bench --profile release --workspace --bench engine` (the `bench` profile is the
//! test suite's, with debug assertions: see the workspace's Cargo.toml)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use zoftoken_bench::engine_fixture::{loaded_engine, run_range, streams, Stream};

const TOKENS: u64 = 1_000_000;
const PER_ITERATION: usize = 10_000;
const STREAM: usize = 500_000;

fn engine(c: &mut Criterion) {
    let engine = loaded_engine(TOKENS, 64);
    let mut counters = vec![1u64; TOKENS as usize];
    let mut seed = 1;
    let mut stream: Stream = streams(TOKENS, 1, STREAM, &mut counters, seed)
        .pop()
        .unwrap();
    let mut next = 0;
    let mut g = c.benchmark_group("engine_1M_tokens");
    g.throughput(Throughput::Elements(PER_ITERATION as u64));
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("10k packets (60% status, 20% open, 20% close)", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                // Fresh packets only (a counter is accepted once): build them untimed.
                if next + PER_ITERATION > STREAM {
                    seed += 1;
                    stream = streams(TOKENS, 1, STREAM, &mut counters, seed)
                        .pop()
                        .unwrap();
                    next = 0;
                }
                let t = Instant::now();
                let n = run_range(&engine, &mut stream, next..next + PER_ITERATION, true);
                elapsed += t.elapsed();
                assert_eq!(n, PER_ITERATION);
                next += PER_ITERATION;
            }
            elapsed
        })
    });
    g.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
