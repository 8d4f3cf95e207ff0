//! Engine benchmark (criterion): 1 million resident tokens, realistic mix (STATUS 60 %,
//! OPEN 20 %, CLOSE 20 %), each packet fully processed; beside it, the codec's open + seal of
//! the same sizes. `cargo bench -p zoftoken-bench --bench engine`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use zoftoken_bench::engine_fixture::{loaded_engine, run, streams, Stream};

const TOKENS: u64 = 1_000_000;
const CHUNK: usize = 200_000;

fn engine(c: &mut Criterion) {
    let engine = loaded_engine(TOKENS, 64);
    let mut counters = vec![1u64; TOKENS as usize];
    let mut seed = 1;
    let mut pool: Vec<Stream> = Vec::new();
    let mut g = c.benchmark_group("engine_1M_tokens");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(8));
    g.bench_function("packet (60% status, 20% open, 20% close)", |b| {
        b.iter_custom(|iters| {
            // Fresh packets only (a counter is accepted once): build them outside the timing.
            let mut left = iters as usize;
            let mut elapsed = Duration::ZERO;
            while left > 0 {
                if pool.is_empty() {
                    seed += 1;
                    pool = streams(TOKENS, 1, CHUNK, &mut counters, seed);
                }
                let mut stream = pool.pop().unwrap();
                let take = left.min(stream.packets.len());
                stream.packets.truncate(take);
                let t = Instant::now();
                run(&engine, &mut stream);
                elapsed += t.elapsed();
                left -= take;
            }
            elapsed
        })
    });
    g.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
