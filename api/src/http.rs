//! The listener: its own tokio runtime on its own thread, one task per connection (HTTP/1.1
//! with keep-alive, header read timeout), a bound on connections, graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{watch, Semaphore};
use zoftoken_engine::Engine;
use zoftoken_storage::Store;

use crate::handlers::{self, State};
use crate::{ApiConfig, ApiError, ApiServer, Clock, MetricsRender, SHUTDOWN_GRACE};

/// Connections served at once; further ones wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 16_384;
/// Largest request head (request line and headers) hyper buffers.
const MAX_HEAD_BYTES: usize = 32 * 1024;
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
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        let _ = stream.set_nodelay(true);
        tasks.spawn(connection(
            stream,
            peer,
            state.clone(),
            shutdown.clone(),
            permit,
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
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let svc_state = state.clone();
    let service = service_fn(move |req| {
        let state = svc_state.clone();
        async move { Ok::<_, Infallible>(handlers::handle(&state, peer, req).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.header_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    if *shutdown.borrow() {
        conn.as_mut().graceful_shutdown();
    }
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = shutdown.changed() => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}
