//! The `udp-echo` server's loop, in-process, under the load generator: every request comes
//! back and is counted as an echo.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use zoftoken_bench::echo;
use zoftoken_loadgen::{run, IoChoice, LoadConfig, TokenSet};
use zoftoken_net::DriverKind;

#[test]
fn echo_server_echoes_every_request() {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (drivers, addr) = echo::open(DriverKind::Mmsg, addr, 2).unwrap();
    assert_ne!(addr.port(), 0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let servers: Vec<_> = drivers
            .into_iter()
            .map(|mut d| {
                let stop = &stop;
                s.spawn(move || echo::serve(d.as_mut(), stop))
            })
            .collect();
        let mut c = LoadConfig::new(vec![addr], TokenSet::new("demo", 5, 1_000));
        c.threads = 2;
        c.duration = Duration::from_millis(500);
        c.window = 32;
        c.timeout = Duration::from_millis(200);
        c.io = IoChoice::Mmsg;
        let summary = run(&c, |_| {}).unwrap();
        stop.store(true, Ordering::Relaxed);
        let echoed: u64 = servers.into_iter().map(|h| h.join().unwrap()).sum();
        println!("{}", summary.to_json());
        assert!(summary.sent > 1_000, "{summary:?}");
        assert_eq!(summary.echoed, summary.sent);
        assert_eq!((summary.answered, summary.lost, summary.errors), (0, 0, 0));
        assert_eq!(echoed, summary.sent);
    });
}
