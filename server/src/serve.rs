//! `zoftoken serve`: open the database, rebuild the engine's tables in parallel (reporting
//! progress and the time taken), start the UDP IO threads (driver chosen and logged) and the
//! group commit, the webhook pipeline and the HTTP API (each on threads of its own), run the
//! timers, reload services and authkeys on SIGHUP, and on SIGINT or SIGTERM stop the API,
//! stop receiving, answer the batches in flight, stop the webhooks (undelivered events stay in
//! the outbox), flush and exit 0. With `demo_admin_authkey: true` (demos only), the first
//! start on a new database creates the demo admin authkey.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use zoftoken_admin::NewAuthkey;
use zoftoken_api::{ApiConfig, ApiServer};
use zoftoken_engine::{Batch, Engine};
use zoftoken_server::admin::file_registry;
use zoftoken_server::config::ConfigSource;
use zoftoken_server::config::{self, Loaded};
use zoftoken_server::follow::{Following, ReloadConfiguration};
use zoftoken_server::now_ms;
use zoftoken_server::open::{
    build_engine, database_exists, describe_database, effective_config, open_store,
    write_demo_admin_authkey, OpenError,
};
use zoftoken_server::udp::{choose_driver, UdpServer};
use zoftoken_storage::{Committer, CommitterConfig, Store};
use zoftoken_webhooks::{LeaseTimes, LeasedPipeline, Pipeline, PipelineConfig};

/// The webhook pipeline of a database this server holds alone, or of a shared one (run
/// while this server holds the delivery lease).
enum Delivery {
    Alone(Pipeline),
    Leased(LeasedPipeline),
}

pub fn serve(config_path: &Path, loaded: Loaded) -> anyhow::Result<ExitCode> {
    // Before anything opens files: every connection, database file and socket takes one.
    let nofile = zoftoken_server::limits::raise_nofile_limit();
    let mut warnings = Vec::new();
    let env = |k: &str| std::env::var(k).ok();
    let new_database = !database_exists(&loaded)?;
    if loaded.config.demo_admin_authkey && new_database {
        refuse_an_earlier_demo_admin_authkey(&loaded)?;
    }
    let store = Arc::new(open_store(&loaded, &env, &mut warnings)?);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    if loaded.config.demo_admin_authkey {
        demo_admin_authkey_at_first_start(&loaded, new_database)?;
    }
    let epoch = store.next_epoch()?;
    let engine = Arc::new(build_engine(&loaded, &store, epoch)?);
    // On a database other processes write: where its change feed stands before the tables
    // are read, so that nothing committed while they load is missed.
    let follower = store
        .follower(u64::from(epoch))
        .context("reading the database's change feed")?;
    let threads = loaded
        .config
        .load_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    tracing::info!(
        "loading tokens from {} with {threads} threads",
        describe_database(&loaded)
    );
    let started = Instant::now();
    let report = store
        .load(&engine, now_ms(), threads, &|n| {
            tracing::info!(
                "… {n} tokens loaded ({:.1} s)",
                started.elapsed().as_secs_f64()
            )
        })
        .context("loading the database")?;
    tracing::info!(
        tokens = report.tokens,
        enrollments = report.enrollments,
        transactions = report.transactions,
        epoch,
        "loaded {} tokens, {} pending enrollments, {} transactions in {:.2} s (epoch {epoch})",
        report.tokens,
        report.enrollments,
        report.transactions,
        report.elapsed.as_secs_f64()
    );
    for (service, n) in &report.unknown_service {
        tracing::warn!(
            "{n} tokens of service `{service}` are not loaded: the service \
             is not configured (they stay in the database)"
        );
    }
    if report.orphan_states > 0 {
        tracing::info!(
            "{} leftover state records of deleted tokens ignored",
            report.orphan_states
        );
    }
    let (kind, why_not_uring) = choose_driver(loaded.config.io).map_err(anyhow::Error::msg)?;
    if let Some(why) = why_not_uring {
        tracing::warn!("io_uring unavailable ({why}); using recvmmsg/sendmmsg");
    }
    let io_threads = loaded
        .config
        .io_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut commit_config = CommitterConfig::new(
        loaded.config.durability.into(),
        io_threads * loaded.udp.len(),
    );
    if store.kv().is_shared() {
        commit_config = commit_config.over_the_network();
        // Other processes write this database too: memory answers reads only while the
        // database answered recently.
        store.health().set_staleness_bound(loaded.staleness_bound());
    }
    let committer = Committer::start(store.clone(), engine.clone(), commit_config)
        .context("starting the group commit")?;
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
        .context("installing signal handlers")?;
    let udp = UdpServer::start(
        engine.clone(),
        &committer,
        store.clone(),
        &loaded.udp,
        kind,
        io_threads,
        stop.clone(),
    )
    .context("starting the UDP listeners")?;
    // Metrics: one process-wide Prometheus recorder, rendered by the API's /metrics.
    let metrics = match zoftoken_api::install_prometheus() {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!("metrics unavailable: {e}");
            None
        }
    };
    // `webhook_threads: 0` pauses delivery: events stay in the durable outbox until a
    // server with a pipeline runs (nothing is lost, nothing is sent).
    // On a shared database one server at a time delivers (the database's delivery lease).
    let hooks = match loaded.config.webhook_threads.unwrap_or(1) {
        0 => None,
        threads => {
            let config = PipelineConfig {
                worker_threads: threads,
                retry_for: loaded
                    .config
                    .webhook_retry_seconds
                    .map_or(zoftoken_webhooks::DEFAULT_RETRY_FOR, Duration::from_secs),
                ..PipelineConfig::default()
            };
            Some(if store.kv().is_shared() {
                Delivery::Leased(
                    LeasedPipeline::start(
                        config,
                        store.clone(),
                        engine.clone(),
                        u64::from(epoch),
                        LeaseTimes::default(),
                    )
                    .context("starting the webhook delivery lease")?,
                )
            } else {
                Delivery::Alone(
                    Pipeline::start(config, store.clone(), engine.clone())
                        .context("starting the webhook pipeline")?,
                )
            })
        }
    };
    let max_connections = zoftoken_api::connection_cap(nofile.now);
    let per_address = loaded
        .config
        .api
        .max_connections_per_address
        .unwrap_or(zoftoken_api::DEFAULT_CONNECTIONS_PER_ADDRESS);
    tracing::info!(
        "file descriptors: limit {} (was {}); the HTTP API serves at most \
         {max_connections} connections, {per_address} per address",
        nofile.now,
        nofile.before
    );
    let api_config = ApiConfig {
        listen: loaded.http,
        threads: loaded.config.api_threads.unwrap_or(1).max(1),
        config_source_database: loaded.config.config_source == ConfigSource::Database,
        service_details: service_details(&loaded.config),
        trusted_proxies: loaded.trusted_proxies.clone(),
        max_connections,
        max_connections_per_address: per_address,
        ..ApiConfig::default()
    };
    let api = ApiServer::start(
        api_config,
        engine.clone(),
        store.clone(),
        metrics,
        Arc::new(now_ms),
    )
    .with_context(|| format!("starting the HTTP API on {}", loaded.http))?;
    tracing::info!(
        "serving UDP on {} ({} driver, {io_threads} threads per address, group commit {}); \
         the HTTP API on http://{}; webhooks {}. Stop with Ctrl-C.",
        udp.addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        udp.driver,
        if commit_config.writer_thread {
            "on a writer thread"
        } else {
            "inline"
        },
        api.local_addr(),
        match hooks {
            Some(Delivery::Alone(_)) => "on",
            Some(Delivery::Leased(_)) => "on, by one server of the database at a time",
            None => "paused (webhook_threads: 0; events are kept)",
        }
    );
    let following = match follower {
        None => None,
        Some(follower) => {
            let for_reload = loaded.clone();
            let reload: ReloadConfiguration = Box::new(move |store: &Store, engine: &Engine| {
                if for_reload.config.config_source != ConfigSource::Database {
                    return Ok(());
                }
                let (services, authkeys) =
                    effective_config(&for_reload, store).map_err(|e| e.to_string())?;
                engine
                    .reload_services(services)
                    .and_then(|()| engine.reload_authkeys(&authkeys))
                    .map_err(|e| e.to_string())
            });
            Some(
                Following::start(
                    follower,
                    store.clone(),
                    engine.clone(),
                    loaded.follow_interval(),
                    loaded.feed_retention(),
                    reload,
                    stop.clone(),
                )
                .context("starting the change-feed follower")?,
            )
        }
    };
    let mut batch = Batch::new();
    let mut last_tick = Instant::now();
    let mut timer_writes_failing = false;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if hup.swap(false, Ordering::Relaxed) {
            reload(config_path, &store, &engine, &api);
        }
        if last_tick.elapsed() < Duration::from_secs(1) {
            continue;
        }
        last_tick = Instant::now();
        let now = now_ms();
        // While the database cannot write: find out whether it can again (and retry the
        // restores of tokens that could not be read back).
        store.probe(&engine, now);
        engine.tick(now, &mut batch);
        if !batch.is_empty() {
            // A failed write restores the tokens the tick expired (a later tick expires them
            // again) and keeps the rest of the batch, written with the next tick's changes
            // (records are versioned, a retry never overwrites a newer state); events are
            // published only once durable. The server keeps serving.
            match store.commit_timers(&engine, now, &mut batch) {
                Ok(_) => {
                    if std::mem::take(&mut timer_writes_failing) {
                        tracing::info!("timer changes written again after failures");
                    }
                }
                Err(e) => {
                    metrics::counter!("zoftoken_timer_commit_failures_total").increment(1);
                    if !std::mem::replace(&mut timer_writes_failing, true) {
                        tracing::error!(
                            error = %e,
                            "cannot write timer changes ({} pending): {e}; \
                             retrying every second",
                            batch.mutations.len()
                        );
                    }
                }
            }
        }
        engine.export_metrics();
        export_storage_metrics(&store, &engine, &udp.stats, following.as_ref());
        if let Some(Delivery::Leased(p)) = &hooks {
            let s = &p.state;
            let held = s.holding.load(Ordering::Relaxed);
            metrics::gauge!("zoftoken_webhook_lease_held").set(if held { 1.0 } else { 0.0 });
            metrics::counter!("zoftoken_webhook_lease_taken_total")
                .absolute(s.taken.load(Ordering::Relaxed));
            metrics::counter!("zoftoken_webhook_lease_lost_total")
                .absolute(s.lost.load(Ordering::Relaxed));
        }
    }
    tracing::info!("stopping: answering the batches in flight");
    let fell_behind = following.as_ref().is_some_and(Following::fell_behind);
    if let Some(f) = following {
        f.shutdown();
    }
    let stats = udp.stats.clone();
    api.shutdown();
    udp.join();
    committer.shutdown();
    // Undelivered events stay in the outbox; the pipeline goes on with them at the next start.
    match hooks {
        Some(Delivery::Alone(p)) => p.shutdown(),
        Some(Delivery::Leased(p)) => p.shutdown(),
        None => {}
    }
    tracing::info!(
        datagrams = stats.handled.load(Ordering::Relaxed),
        replies = stats.replied.load(Ordering::Relaxed),
        withheld = stats.withheld.load(Ordering::Relaxed),
        "handled {} datagrams, sent {} replies, withheld {} (failed commits: {})",
        stats.handled.load(Ordering::Relaxed),
        stats.replied.load(Ordering::Relaxed),
        stats.withheld.load(Ordering::Relaxed),
        stats.failed_commits.load(Ordering::Relaxed)
    );
    tracing::info!("flushing the database");
    store.flush().context("flushing the database")?;
    if fell_behind {
        tracing::info!("stopped: fell behind the database's change feed (exit code 7)");
        return Ok(ExitCode::from(7));
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// `demo_admin_authkey: true` (demos only, `config_source: file`): on a new database, creates
/// the demo admin authkey as `zoftoken authkey create demo-admin --admin` does, writes its
/// secret to the data directory (0600) and says once where it is; the engine then reads it
/// from there with the configuration's authkeys, at this start and every later one. Nothing
/// is created for a database that exists already (a later start, or one made by an admin
/// command before the first start).
fn demo_admin_authkey_at_first_start(loaded: &Loaded, new_database: bool) -> anyhow::Result<()> {
    let file = loaded.demo_admin_authkey_file();
    if !new_database {
        if !file.exists() {
            tracing::info!(
                "demo_admin_authkey: {} does not exist and the database is \
                 not new, so there is no demo admin authkey (it is made at the first start of \
                 a new database only; `zoftoken authkey create NAME --admin` makes a key)",
                file.display()
            );
        }
        return Ok(());
    }
    let mut key = NewAuthkey::new(config::DEMO_ADMIN_AUTHKEY);
    key.admin = true;
    let created = file_registry(loaded)
        .authkey_create(key)
        .context("creating the demo admin authkey")?;
    let secret = created.secret;
    let file = write_demo_admin_authkey(loaded, &secret)?;
    tracing::warn!(
        "created the admin authkey `{}` for this demo (demo_admin_authkey: true; \
         never in production). Its secret is in {} (mode 0600) and shown nowhere else: send \
         it as `Authorization: Bearer $(cat {})`. Delete the file to revoke the key.",
        config::DEMO_ADMIN_AUTHKEY,
        file.display(),
        file.display()
    );
    Ok(())
}

/// Before a new database is created: a demo admin authkey file left from an earlier database
/// is refused, not taken over (it would be the new demo's key without having been made and
/// shown for it).
fn refuse_an_earlier_demo_admin_authkey(loaded: &Loaded) -> Result<(), OpenError> {
    let file = loaded.demo_admin_authkey_file();
    if file.exists() {
        return Err(OpenError::DemoAuthkey {
            path: file,
            message: "exists, but the database is new: it holds the key of an earlier \
                      database; delete it and start again"
                .into(),
        });
    }
    Ok(())
}

/// The database's health and what it cost: whether it can write, how long since it last
/// answered, failed commits, replies withheld because their batch was not written or because
/// memory was too stale to answer from, tokens waiting for their change's outcome.
fn export_storage_metrics(
    store: &Store,
    engine: &Engine,
    udp: &zoftoken_server::udp::UdpStats,
    following: Option<&Following>,
) {
    let health = store.health();
    if let Some(f) = following {
        let s = &f.stats;
        metrics::gauge!("zoftoken_cache_lag_seconds").set(health.stale_for().as_secs_f64());
        metrics::counter!("zoftoken_feed_reads_total").absolute(s.reads.load(Ordering::Relaxed));
        metrics::counter!("zoftoken_feed_read_failures_total")
            .absolute(s.failures.load(Ordering::Relaxed));
        metrics::counter!("zoftoken_cache_reloads_total", "what" => "token")
            .absolute(s.tokens.load(Ordering::Relaxed));
        metrics::counter!("zoftoken_cache_reloads_total", "what" => "transaction")
            .absolute(s.transactions.load(Ordering::Relaxed));
        metrics::counter!("zoftoken_cache_reloads_total", "what" => "configuration")
            .absolute(s.configuration_reloads.load(Ordering::Relaxed));
        metrics::counter!("zoftoken_commit_conflicts_total").absolute(health.conflicts());
    }
    metrics::gauge!("zoftoken_storage_writable").set(if health.writable() { 1.0 } else { 0.0 });
    metrics::counter!("zoftoken_commit_failures_total").absolute(health.failed_commits());
    metrics::counter!("zoftoken_replies_withheld_total")
        .absolute(udp.withheld.load(Ordering::Relaxed));
    metrics::counter!("zoftoken_replies_stale_withheld_total")
        .absolute(udp.stale.load(Ordering::Relaxed));
    metrics::gauge!("zoftoken_storage_unreached_seconds").set(health.unreached_for().as_secs_f64());
    metrics::gauge!("zoftoken_tokens_unsettled").set(engine.unsettled_count() as f64);
}

/// SIGHUP: reads the configuration file again and replaces the engine's services and
/// authkeys (packets keep flowing; the engine swaps its snapshots). Listen addresses, the
/// data directory and the other start-up settings keep their values until a restart.
fn reload(config_path: &Path, store: &Store, engine: &Engine, api: &ApiServer) {
    let env = |k: &str| std::env::var(k).ok();
    let result = config::load(config_path, &env)
        .map_err(|e| e.to_string())
        .and_then(|loaded| {
            let (services, authkeys) =
                effective_config(&loaded, store).map_err(|e| e.to_string())?;
            let n = services.len();
            engine
                .reload_services(services)
                .and_then(|()| engine.reload_authkeys(&authkeys))
                .map_err(|e| e.to_string())?;
            api.set_service_details(service_details(&loaded.config));
            Ok((n, authkeys.len()))
        });
    match result {
        Ok((services, authkeys)) => tracing::info!(
            "SIGHUP: reloaded {services} services and {authkeys} authkeys from {}",
            config_path.display()
        ),
        Err(e) => {
            tracing::error!("SIGHUP: reload failed, keeping the running configuration: {e}")
        }
    }
}

/// The services' details JSON of the configuration file (served by the API in file mode).
fn service_details(config: &config::Config) -> HashMap<String, serde_json::Value> {
    config
        .services
        .iter()
        .filter_map(|s| Some((s.name.clone(), s.details.clone()?)))
        .collect()
}
