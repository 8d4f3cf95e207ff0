//! Standalone engine benchmark: loads N tokens, measures resident bytes per token, then
//! packets per second on one and on two threads (realistic mix, each packet fully processed),
//! and the cost of one ChaCha20-Poly1305 open + seal of the same sizes in the same run.
//! Also in the same run, on the same one-thread streams: the floor (`echo::Floor` without its
//! log: the AEAD open and seal through the codec and a read and write of a 224-byte entry in
//! a table of N, prefetched a batch ahead), the least work any engine of the protocol does
//! per packet on this machine. Also in each round: one thread on a stream of OPENs only (each
//! with its PIN index and proof, the PIN key derived from the token's PIN root as the server
//! does): `pps_open_1t`, the cost of the PIN path. Prints one line of figures, then one JSON
//! line (and each round's figures on standard error).
//!
//! `engine-bench [--tokens N] [--packets P] [--rounds R] [--mix realistic|open|S/O/C]
//! [--memory-only]`: `--mix` is the mix of `pps_1t`/`pps_2t` (default realistic: STATUS 60 %,
//! OPEN 20 %, CLOSE 20 %; `open`: every packet an OPEN).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::time::Instant;

use zoftoken_bench::echo::Floor;
use zoftoken_bench::engine_fixture::{
    loaded_engine, rss_bytes, run, run_floor, streams_with, StreamMix, NOW_MS,
};
use zoftoken_proto::packet::{open_request, seal_reply};
use zoftoken_proto::wire::{Be64, MsgType, PlainRequest, StatusBlock};
use zoftoken_proto::{ReplyStatus, TokenSecret, WireState};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.replace('_', "").parse().unwrap_or_else(|_| {
                eprintln!("engine-bench: {name} takes a whole number, not {v:?}");
                std::process::exit(2)
            })
        })
        .unwrap_or(default)
}

fn text_arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// ns per (open a 72-byte STATUS request + seal its 68-byte reply) with the codec's AEAD.
fn aead_ns(iterations: usize) -> f64 {
    use zerocopy::IntoBytes;
    let keys = TokenSecret::from_bytes([5; 32]).keys();
    let body = PlainRequest {
        device_time_ms: Be64::new(NOW_MS),
        zero: [0; 16],
    };
    let mut sealed = [0u8; 128];
    let n = zoftoken_proto::packet::seal_request(
        &keys.d2s,
        MsgType::Status,
        [1; 16],
        9,
        body.as_bytes(),
        &mut sealed,
    )
    .unwrap();
    let reply = StatusBlock::new(ReplyStatus::Ok, WireState::Closed, 3, 0, NOW_MS);
    let mut buf = [0u8; 128];
    let mut out = [0u8; 128];
    let start = Instant::now();
    let mut total = 0usize;
    for _ in 0..iterations {
        buf[..n].copy_from_slice(&sealed[..n]);
        let req = open_request(&keys.d2s, &mut buf[..n]).unwrap();
        total += seal_reply(&keys.s2d, 1, req.header, reply.as_bytes(), &mut out).unwrap();
    }
    assert!(total > 0);
    start.elapsed().as_nanos() as f64 / iterations as f64
}

fn main() {
    let tokens = arg("--tokens", 1_000_000);
    let packets = arg("--packets", 2_000_000) as usize;
    let rounds = arg("--rounds", 3).max(1) as usize;
    let memory_only = std::env::args().any(|a| a == "--memory-only");
    let mix = match text_arg("--mix").map(|m| StreamMix::parse(&m)) {
        None => StreamMix::REALISTIC,
        Some(Ok(m)) => m,
        Some(Err(e)) => {
            eprintln!("engine-bench: --mix: {e}");
            std::process::exit(2)
        }
    };

    let rss_before = rss_bytes();
    let t = Instant::now();
    let engine = loaded_engine(tokens, 64);
    let load_s = t.elapsed().as_secs_f64();
    let rss_after = rss_bytes();
    let bytes_per_token = (rss_after.saturating_sub(rss_before)) as f64 / tokens as f64;
    let table_per_token = engine.table_bytes() as f64 / tokens as f64;
    if memory_only {
        println!("tokens={tokens} load_s={load_s:.2} rss_before={rss_before} rss_after={rss_after} bytes_per_token={bytes_per_token:.1} table_bytes_per_token={table_per_token:.1}");
        println!("{{\"tokens\":{tokens},\"bytes_per_token\":{bytes_per_token:.1},\"table_bytes_per_token\":{table_per_token:.1},\"load_s\":{load_s:.2}}}");
        return;
    }

    let mut counters = vec![1u64; tokens as usize];
    if std::env::args().any(|a| a == "--profile") {
        // Generate first, then only process: for `perf record -D <ms after "processing">`.
        let mut all = streams_with(tokens, 1, packets, &mut counters, 5, mix);
        eprintln!("processing after {:.1} s", t.elapsed().as_secs_f64());
        let start = Instant::now();
        let n = run(&engine, &mut all[0]);
        eprintln!("pps={:.0}", n as f64 / start.elapsed().as_secs_f64());
        return;
    }
    let mut floor = Floor::new(true, tokens as usize, None);
    let (mut pps1, mut pps2, mut aead, mut floor_pps, mut pps_open) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut one = streams_with(tokens, 1, packets, &mut counters, 11 + round as u64, mix);
        let t = Instant::now();
        let n = run_floor(&mut floor, &one[0]);
        floor_pps.push(n as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let n = run(&engine, &mut one[0]);
        pps1.push(n as f64 / t.elapsed().as_secs_f64());

        let mut opens = streams_with(
            tokens,
            1,
            packets,
            &mut counters,
            51 + round as u64,
            StreamMix::OPEN,
        );
        let t = Instant::now();
        let n = run(&engine, &mut opens[0]);
        pps_open.push(n as f64 / t.elapsed().as_secs_f64());

        let mut two = streams_with(tokens, 2, packets, &mut counters, 101 + round as u64, mix);
        let t = Instant::now();
        let total: usize = std::thread::scope(|s| {
            let handles: Vec<_> = two
                .iter_mut()
                .map(|st| s.spawn(|| run(&engine, st)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        pps2.push(total as f64 / t.elapsed().as_secs_f64());
        aead.push(aead_ns(packets));
        eprintln!(
            "round {round}: pps_1t={:.0} pps_2t={:.0} pps_open_1t={:.0} floor_pps={:.0}",
            pps1[round], pps2[round], pps_open[round], floor_pps[round]
        );
    }
    let (pps_1t, pps_2t, aead_ns) = (median(pps1), median(pps2), median(aead));
    let pps_open_1t = median(pps_open);
    let mix_name = format!("{}/{}/{}", mix.status, mix.open, mix.close);
    let floor_pps = median(floor_pps);
    let ns_per_packet = 1e9 / pps_1t;
    let floor_ns = 1e9 / floor_pps;
    println!(
        "tokens={tokens} packets={packets} rounds={rounds} mix={mix_name} pps_1t={pps_1t:.0} pps_2t={pps_2t:.0} pps_open_1t={pps_open_1t:.0} scaling={:.2} ns_per_packet={ns_per_packet:.1} aead_ns={aead_ns:.1} engine_overhead_ns={:.1} floor_pps={floor_pps:.0} floor_ns={floor_ns:.1} bytes_per_token={bytes_per_token:.1} table_bytes_per_token={table_per_token:.1} load_s={load_s:.2}",
        pps_2t / pps_1t,
        ns_per_packet - aead_ns
    );
    println!(
        "{{\"pps_1t\":{pps_1t:.0},\"pps_2t\":{pps_2t:.0},\"pps_open_1t\":{pps_open_1t:.0},\"aead_ns\":{aead_ns:.1},\"ns_per_packet\":{ns_per_packet:.1},\"bytes_per_token\":{bytes_per_token:.1},\"floor_pps\":{floor_pps:.0},\"floor_ns\":{floor_ns:.1}}}"
    );
}
