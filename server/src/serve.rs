//! `zoftoken serve`: open the database, rebuild the engine's tables in parallel (reporting
//! progress and the time taken), then run the timers with a group commit per tick until
//! SIGINT or SIGTERM, and flush on the way out. The UDP listener (issue 5) and the HTTP API
//! (issue 6) attach here.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use zoftoken_engine::Batch;
use zoftoken_server::config::Loaded;
use zoftoken_server::now_ms;
use zoftoken_server::open::{build_engine, open_store};

pub fn serve(loaded: Loaded) -> anyhow::Result<ExitCode> {
    let mut warnings = Vec::new();
    let env = |k: &str| std::env::var(k).ok();
    let store = open_store(&loaded, &env, &mut warnings)?;
    for w in &warnings {
        eprintln!("zoftoken: warning: {w}");
    }
    let epoch = store.next_epoch()?;
    let engine = build_engine(&loaded, &store, epoch)?;
    let threads = loaded
        .config
        .load_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    eprintln!(
        "zoftoken: loading tokens from {} with {threads} threads",
        loaded.config.data_dir.display()
    );
    let started = Instant::now();
    let report = store
        .load(&engine, now_ms(), threads, &|n| {
            eprintln!(
                "zoftoken: … {n} tokens loaded ({:.1} s)",
                started.elapsed().as_secs_f64()
            )
        })
        .context("loading the database")?;
    eprintln!(
        "zoftoken: loaded {} tokens, {} pending enrollments, {} transactions in {:.2} s (epoch {epoch})",
        report.tokens,
        report.enrollments,
        report.transactions,
        report.elapsed.as_secs_f64()
    );
    for (service, n) in &report.unknown_service {
        eprintln!(
            "zoftoken: warning: {n} tokens of service `{service}` are not loaded: the service \
             is not configured (they stay in the database)"
        );
    }
    if report.orphan_states > 0 {
        eprintln!(
            "zoftoken: note: {} leftover state records of deleted tokens ignored",
            report.orphan_states
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    eprintln!(
        "zoftoken: serving (udp {:?}, http {}: the listeners are not part of this build yet; \
         timers and storage are running). Stop with Ctrl-C.",
        loaded.udp, loaded.http
    );
    let mut batch = Batch::new();
    let mut last_tick = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if last_tick.elapsed() < Duration::from_secs(1) {
            continue;
        }
        last_tick = Instant::now();
        engine.tick(now_ms(), &mut batch);
        if !batch.is_empty() {
            store
                .commit(&batch.mutations, &engine)
                .context("committing timer changes")?;
            engine.publish(&mut batch);
        }
        engine.export_metrics();
    }
    eprintln!("zoftoken: stopping: flushing the database");
    store.flush().context("flushing the database")?;
    eprintln!("zoftoken: stopped");
    Ok(ExitCode::SUCCESS)
}
