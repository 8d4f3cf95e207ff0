//! The `udp-echo` server's loop, in-process, under the load generator: every request comes
//! back and is counted as an echo, with and without the floor's work.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use zoftoken_bench::echo;
use zoftoken_loadgen::{run, IoChoice, LoadConfig, TokenSet};
use zoftoken_net::{DriverKind, MAX_DATAGRAM};
use zoftoken_proto::wire::{MsgType, HEADER_LEN};

#[test]
fn echo_server_echoes_every_request() {
    echo_every_request(echo::Floor::none);
}

/// The floor's work (AEAD, table, log) changes nothing the generator sees, and its log holds
/// one record per OPEN and CLOSE echoed.
#[test]
fn echo_server_with_the_floor_still_echoes_every_request() {
    let dir = std::env::temp_dir().join(format!("zoftoken-floor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let logs: Vec<_> = (0..2).map(|i| dir.join(format!("log.{i}"))).collect();
    let files = std::sync::Mutex::new(
        logs.iter()
            .map(|p| std::fs::File::create(p).unwrap())
            .collect::<Vec<_>>(),
    );
    let summary = echo_every_request(|| {
        let f = files.lock().unwrap().pop();
        echo::Floor::new(true, 1_000, f)
    });
    let logged: u64 = logs
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        logged,
        summary.sent_by_type[1..].iter().sum::<u64>() * echo::LOG_RECORD as u64
    );
}

/// The engine benchmark's floor run takes every packet of a stream through the floor's work,
/// in batches: its log holds one record per OPEN and CLOSE of the stream.
#[test]
fn floor_run_handles_every_packet_of_a_stream() {
    use zoftoken_bench::engine_fixture::{run_floor, streams};
    let path = std::env::temp_dir().join(format!("zoftoken-floor-run-{}", std::process::id()));
    let mut floor = echo::Floor::new(true, 50, Some(std::fs::File::create(&path).unwrap()));
    let mut counters = vec![1u64; 50];
    let stream = streams(50, 1, 200, &mut counters, 3).pop().unwrap();
    let changes = stream
        .packets
        .iter()
        .filter(|&&(start, _)| {
            let t = stream.bytes[start + 1];
            t == MsgType::Open.request_byte() || t == MsgType::Close.request_byte()
        })
        .count();
    assert!(changes > 0);
    assert_eq!(run_floor(&mut floor, &stream), 200);
    drop(floor);
    let logged = std::fs::metadata(&path).unwrap().len();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(logged, (changes * echo::LOG_RECORD) as u64);
}

/// The floor's AEAD work is real: a datagram sealed under its key opens, a changed one does not.
#[test]
fn aead_work_opens_what_its_key_sealed() {
    let fixture = zoftoken_bench::Fixture::new();
    let key = &fixture.keys.d2s;
    let (_, request, _) = fixture
        .packets
        .iter()
        .find(|(t, _, _)| *t == MsgType::Status)
        .unwrap();
    let mut datagram = request.clone();
    let mut scratch = [0u8; MAX_DATAGRAM];
    assert!(echo::aead_work(key, &datagram, &mut scratch));
    datagram[40] ^= 1;
    assert!(!echo::aead_work(key, &datagram, &mut scratch));
    assert!(!echo::aead_work(
        key,
        &datagram[..HEADER_LEN + 8],
        &mut scratch
    ));
}

fn echo_every_request(floor: impl Fn() -> echo::Floor + Sync) -> zoftoken_loadgen::Summary {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (drivers, addr) = echo::open(DriverKind::Mmsg, addr, 2).unwrap();
    assert_ne!(addr.port(), 0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let servers: Vec<_> = drivers
            .into_iter()
            .map(|mut d| {
                let stop = &stop;
                let mut f = floor();
                s.spawn(move || echo::serve(d.as_mut(), stop, &mut f))
            })
            .collect();
        let mut c = LoadConfig::new(vec![addr], TokenSet::new("demo", 5, 1_000));
        c.threads = 2;
        c.duration = Duration::from_millis(500);
        c.window = 32;
        c.timeout = Duration::from_millis(200);
        c.io = IoChoice::Mmsg;
        // The echo checks no proof; any instance secret gives the generator its usual work.
        c.pin_tree_secret = Some(zoftoken_proto::SecretBytes::new([9; 32]));
        let summary = run(&c, |_| {}).unwrap();
        stop.store(true, Ordering::Relaxed);
        let echoed: u64 = servers.into_iter().map(|h| h.join().unwrap()).sum();
        println!("{}", summary.to_json());
        assert!(summary.sent > 1_000, "{summary:?}");
        assert_eq!(summary.echoed, summary.sent);
        assert_eq!((summary.answered, summary.lost, summary.errors), (0, 0, 0));
        assert_eq!(echoed, summary.sent);
        summary
    })
}
