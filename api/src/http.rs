//! The listener: its own tokio runtime on its own thread, one task per connection (HTTP/1.1
//! with keep-alive, header read timeout, a head limit, the authkey verified last on it),
//! bounds on connections in total and per source address, graceful shutdown.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{watch, Semaphore};
use zoftoken_engine::Engine;
use zoftoken_storage::Store;

use crate::connection_key::ConnectionKey;
use crate::context::State;
use crate::dispatch;
use crate::{ApiConfig, ApiError, ApiServer, Clock, MetricsRender, SHUTDOWN_GRACE};

/// Connections served at once at most (the default of [`ApiConfig::max_connections`]);
/// further ones wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 16_384;
/// Largest request head (request line and headers, at most 100 headers): a larger one is
/// answered 431 and the connection closed.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;
/// File descriptors kept for everything but API connections (the database's files, the UDP
/// sockets, webhook connections, logs) when the limit is small: [`connection_cap`] keeps
/// this many or a quarter of the limit, whichever is more.
pub const FD_RESERVE: u64 = 512;

/// The connection cap that fits a process whose file-descriptor limit is `nofile`: at most
/// [`MAX_CONNECTIONS`], leaving [`FD_RESERVE`] descriptors or a quarter of the limit
/// (whichever is more) for the rest of the process; at least 1.
pub fn connection_cap(nofile: u64) -> usize {
    let reserve = FD_RESERVE.max(nofile / 4);
    let cap = nofile.saturating_sub(reserve).max(1);
    usize::try_from(cap).map_or(MAX_CONNECTIONS, |c| c.min(MAX_CONNECTIONS))
}

/// Connections open per source (an IPv4 address, or an IPv6 /64).
struct PerAddress {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection counted in [`PerAddress`]; uncounted when dropped.
struct AddressSlot {
    table: Arc<PerAddress>,
    key: IpAddr,
}

impl PerAddress {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new connection from `ip`, or `None` if its source has `max` open.
    fn admit(table: &Arc<PerAddress>, ip: IpAddr) -> Option<AddressSlot> {
        let key = crate::limiter::source_key(ip);
        let mut open = table.lock();
        let n = open.entry(key).or_insert(0);
        if *n >= table.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: table.clone(),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.lock();
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}
/// Threads of the blocking pool (storage writes).
const BLOCKING_THREADS: usize = 4;

pub(crate) fn start(
    config: ApiConfig,
    engine: Arc<Engine>,
    store: Arc<Store>,
    metrics: Option<MetricsRender>,
    clock: Clock,
) -> Result<ApiServer, ApiError> {
    if config.threads == 0 {
        return Err(ApiError::Config("threads must be at least 1"));
    }
    if config.max_body_bytes == 0 {
        return Err(ApiError::Config("max_body_bytes must be at least 1"));
    }
    if config.max_connections == 0 {
        return Err(ApiError::Config("max_connections must be at least 1"));
    }
    if config.max_connections_per_address == 0 {
        return Err(ApiError::Config(
            "max_connections_per_address must be at least 1",
        ));
    }
    let addr = config.listen;
    let bind = |source| ApiError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind)?;
    listener.set_nonblocking(true).map_err(bind)?;
    let local_addr = listener.local_addr().map_err(bind)?;
    let mut builder = if config.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.threads);
        b
    };
    let runtime = builder
        .enable_io()
        .enable_time()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("zoftoken-api")
        .build()
        .map_err(ApiError::Runtime)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = Arc::new(State::new(
        config,
        engine,
        store,
        metrics,
        clock,
        shutdown_rx.clone(),
    ));
    // Register the listener with the runtime before returning, so that errors surface here.
    let listener = {
        let _guard = runtime.enter();
        tokio::net::TcpListener::from_std(listener).map_err(bind)?
    };
    let served = state.clone();
    let thread = std::thread::Builder::new()
        .name("zoftoken-api".into())
        .spawn(move || {
            runtime.block_on(serve(listener, served, shutdown_rx));
            runtime.shutdown_timeout(Duration::from_millis(100));
        })
        .map_err(ApiError::Runtime)?;
    Ok(ApiServer {
        local_addr,
        state,
        shutdown: shutdown_tx,
        thread: Some(thread),
    })
}

async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(state.config.max_connections));
    let per_address = Arc::new(PerAddress {
        max: state.config.max_connections_per_address,
        open: Mutex::new(HashMap::new()),
    });
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        // Reap finished connection tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(_) => {
                // Out of file descriptors and the like: back off a little.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let trusted = state
            .config
            .trusted_proxies
            .iter()
            .any(|r| r.contains(peer.ip()));
        let slot = if trusted {
            None
        } else {
            match PerAddress::admit(&per_address, peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    // Closed at once: one source cannot take every connection.
                    metrics::counter!("zoftoken_api_connections_refused_total", "reason" => "per_address")
                        .increment(1);
                    drop(stream);
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        tasks.spawn(connection(
            stream,
            peer,
            state.clone(),
            shutdown.clone(),
            (permit, slot),
        ));
    }
    drop(listener);
    // Let in-flight requests finish, within the grace period.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
    _permits: (tokio::sync::OwnedSemaphorePermit, Option<AddressSlot>),
) {
    // What every request of the connection shares: one reference counted per request.
    let shared = Arc::new((state.clone(), ConnectionKey::default()));
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move {
            let (state, key) = &*shared;
            Ok::<_, Infallible>(dispatch::handle(state, peer, key, req).await)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.header_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_BYTES)
        // The head limit itself: `max_buf_size` alone bounds the buffer's reads, and one
        // read may fill more than it.
        .max_header_size(MAX_HEAD_BYTES)
        // Head and body copied into one buffer and sent with one `send`: for the small
        // answers of the hot path, fewer instructions than two `writev` slices (measured).
        .writev(false);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    if *shutdown.borrow() {
        conn.as_mut().graceful_shutdown();
    }
    tokio::select! {
        // The connection first (no random order to draw at every wake-up).
        biased;
        _ = conn.as_mut() => return,
        _ = shutdown.changed() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_a_reserve_under_the_limit() {
        assert_eq!(connection_cap(1024), 512);
        assert_eq!(connection_cap(4096), 3072);
        assert_eq!(connection_cap(20_000), 15_000);
        assert_eq!(connection_cap(1 << 20), MAX_CONNECTIONS);
        assert_eq!(connection_cap(u64::MAX), MAX_CONNECTIONS);
        assert_eq!(connection_cap(100), 1);
        for n in [600u64, 1024, 2048, 8192, 30_000, 65_536] {
            let cap = connection_cap(n) as u64;
            assert!(cap + FD_RESERVE <= n, "{n}: {cap}");
        }
    }

    #[test]
    fn per_address_slots_are_counted_and_released() {
        let t = Arc::new(PerAddress {
            max: 2,
            open: Mutex::new(HashMap::new()),
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0; 4]));
        let v6a: IpAddr = "2001:db8::1".parse().unwrap_or(IpAddr::from([0; 4]));
        let v6b: IpAddr = "2001:db8::2".parse().unwrap_or(IpAddr::from([0; 4]));
        let s1 = PerAddress::admit(&t, a);
        let s2 = PerAddress::admit(&t, a);
        assert!(s1.is_some() && s2.is_some());
        assert!(PerAddress::admit(&t, a).is_none());
        drop(s1);
        assert!(PerAddress::admit(&t, a).is_some());
        // One /64 is one source.
        let _x = PerAddress::admit(&t, v6a);
        let _y = PerAddress::admit(&t, v6b);
        assert!(PerAddress::admit(&t, v6a).is_none());
        drop(s2);
        assert!(t.lock().get(&a).is_none(), "emptied entries are removed");
    }
}
