//! A UDP echo server with the server's batching and nothing else (no parsing, no crypto, no
//! state): the baseline of the load test. Each thread owns one `SO_REUSEPORT` socket and its
//! `zoftoken_net` driver, receives a batch of up to 32 datagrams and sends the same datagrams
//! back to their peers.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use zoftoken_net::{Driver, DriverKind, PacketBatch};

/// Datagrams per receive batch (as the server).
pub const BATCH: usize = 32;

/// Echoes on `driver` until `stop` is set (checked at least every 100 ms). Returns the number
/// of datagrams echoed.
pub fn serve(driver: &mut dyn Driver, stop: &AtomicBool) -> u64 {
    let mut batch = PacketBatch::with_capacity(BATCH);
    let mut echoed = 0;
    while !stop.load(Ordering::Relaxed) {
        batch.clear();
        match driver.recv(&mut batch, Duration::from_millis(100)) {
            Ok(0) | Err(_) => continue,
            Ok(n) => {
                // Best effort, as UDP: refusals are counted by the driver.
                let _ = driver.send(&batch);
                echoed += n as u64;
            }
        }
    }
    echoed
}

/// Opens `threads` drivers of `kind` sharing `addr` (`SO_REUSEPORT`; port 0 picks one port
/// for all) and returns them with the bound address.
pub fn open(
    kind: DriverKind,
    addr: SocketAddr,
    threads: usize,
) -> io::Result<(Vec<Box<dyn Driver>>, SocketAddr)> {
    zoftoken_net::open_drivers(kind, addr, threads)
}
