//! Both drivers on loopback: echo, truncation, slot reuse, shared ports.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;

fn kinds() -> Vec<DriverKind> {
    let mut kinds = vec![DriverKind::Mmsg];
    match probe_uring() {
        Ok(()) => kinds.push(DriverKind::Uring),
        // Where io_uring is blocked (a container's seccomp profile) only the fallback runs;
        // the CI machine has io_uring, and `uring_is_available_here` says so.
        Err(e) => eprintln!("io_uring not available: {e}"),
    }
    kinds
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A driver of `kind` on a new loopback socket, and its address.
fn driver_on(kind: DriverKind) -> (Box<dyn Driver>, SocketAddr) {
    open_driver(kind, loopback()).unwrap()
}

/// Receives into `batch` until it holds `n` datagrams or 2 s pass.
fn recv_n(driver: &mut dyn Driver, batch: &mut PacketBatch, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while batch.len() < n && Instant::now() < deadline {
        driver.recv(batch, Duration::from_millis(20)).unwrap();
    }
}

#[test]
fn uring_is_available_here() {
    // This machine (and CI) runs a kernel with io_uring enabled; skip with
    // ZOFTOKEN_NO_URING=1 where it is not.
    if std::env::var_os("ZOFTOKEN_NO_URING").is_none() {
        assert_eq!(probe_uring(), Ok(()));
    }
}

#[test]
fn echoes_batches_in_both_drivers() {
    for kind in kinds() {
        let (mut driver, addr) = driver_on(kind);
        let client = UdpSocket::bind(loopback()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        for i in 0..20u8 {
            client.send_to(&[i; 100], addr).unwrap();
        }
        let mut batch = PacketBatch::with_capacity(32);
        recv_n(driver.as_mut(), &mut batch, 20);
        assert_eq!(batch.len(), 20, "{kind:?}");
        for (i, (peer, data)) in batch.iter().enumerate() {
            assert_eq!(peer, client.local_addr().unwrap());
            assert_eq!(data, &[i as u8; 100][..], "{kind:?}: order and content");
        }
        driver.send(&batch).unwrap();
        let mut buf = [0u8; 4096];
        for i in 0..20u8 {
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!(from, addr);
            assert_eq!(&buf[..n], &[i; 100][..]);
        }
        // io_uring counts a send at its completion, which the next call reaps.
        let _ = driver.recv(
            &mut PacketBatch::with_capacity(1),
            Duration::from_millis(10),
        );
        let stats = driver.stats();
        assert_eq!(stats.received.load(Ordering::Relaxed), 20);
        assert_eq!(stats.sent.load(Ordering::Relaxed), 20, "{kind:?}");
    }
}

#[test]
fn oversize_datagrams_are_dropped_and_counted() {
    for kind in kinds() {
        let (mut driver, addr) = driver_on(kind);
        let client = UdpSocket::bind(loopback()).unwrap();
        client.send_to(&[7; MAX_DATAGRAM + 1], addr).unwrap();
        client.send_to(&[8; 10], addr).unwrap();
        let mut batch = PacketBatch::with_capacity(8);
        recv_n(driver.as_mut(), &mut batch, 1);
        // Give a late oversize datagram a chance to be (wrongly) delivered.
        driver.recv(&mut batch, Duration::from_millis(50)).unwrap();
        assert_eq!(batch.len(), 1, "{kind:?}");
        assert_eq!(batch.get(0).unwrap().1, &[8; 10][..]);
        assert_eq!(
            driver.stats().truncated.load(Ordering::Relaxed),
            1,
            "{kind:?}"
        );
    }
}

#[test]
fn more_replies_than_send_slots_all_leave() {
    for kind in kinds() {
        let (mut driver, _) = driver_on(kind);
        let client = UdpSocket::bind(loopback()).unwrap();
        let peer = client.local_addr().unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut batch = PacketBatch::with_capacity(64);
        let mut received = 0;
        let mut buf = [0u8; 256];
        // 40 batches of 64 (2 560 replies, more than the 1 024 io_uring send slots), read as
        // they come so that the client's socket buffer never overflows.
        for round in 0..40u32 {
            batch.clear();
            for i in 0..64u32 {
                assert!(batch.push(peer, &(round * 64 + i).to_be_bytes()));
            }
            driver.send(&batch).unwrap();
            while let Ok((n, _)) = client.recv_from(&mut buf) {
                assert_eq!(n, 4);
                received += 1;
                if received % 64 == 0 {
                    break;
                }
            }
        }
        assert_eq!(received, 40 * 64, "{kind:?}");
    }
}

#[test]
fn several_sockets_share_a_port() {
    let first = bind_reuseport(loopback()).unwrap();
    let addr = first.local_addr().unwrap();
    let second = bind_reuseport(addr).unwrap();
    assert_eq!(second.local_addr().unwrap(), addr);
    // A plain socket without SO_REUSEPORT cannot join.
    assert!(UdpSocket::bind(addr).is_err());
}

#[test]
fn a_port_served_by_another_server_is_refused_and_threads_still_share_one() {
    for kind in kinds() {
        // One server's threads share a port...
        let (drivers, addr) = open_drivers(kind, loopback(), 2).unwrap();
        assert_eq!(drivers.len(), 2);
        // ...and a second server on the same port is refused with a clear error.
        let err = open_drivers(kind, addr, 2).err().expect("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("already in use"), "{err}");
        // Once the first is gone, the port can be served again.
        drop(drivers);
        let (again, same) = open_drivers(kind, addr, 1).unwrap();
        assert_eq!((again.len(), same), (1, addr));
    }
}

#[test]
fn a_driver_is_dropped_cleanly_while_receiving_and_sending() {
    for kind in kinds() {
        let (mut driver, addr) = driver_on(kind);
        let client = UdpSocket::bind(loopback()).unwrap();
        let mut batch = PacketBatch::with_capacity(16);
        for _ in 0..16 {
            batch.push(client.local_addr().unwrap(), &[1; 64]);
        }
        driver.send(&batch).unwrap();
        client.send_to(&[2; 64], addr).unwrap();
        drop(driver);
        // A new driver on a new socket works after the old one is gone.
        let (mut again, _) = driver_on(kind);
        assert_eq!(
            again
                .recv(&mut PacketBatch::with_capacity(1), Duration::ZERO)
                .unwrap(),
            0
        );
    }
}
