//! The UDP path when the disk is slow or failing, through real sockets with the server's IO
//! threads and group commit over a store whose writes are delayed or fail on demand
//! ([`FaultyKv`]): replies wait for durability, the server keeps serving with bounded queues
//! (at most `MAX_IN_FLIGHT` receive batches per thread wait for their commit), no request
//! whose change could not be written is ever answered, and it recovers with the disk.
//! Both commit modes (a writer thread, inline in the IO thread) are exercised.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use zoftoken_engine::{Engine, EngineConfig, ServiceConfig};
use zoftoken_loadgen::{run, LoadConfig, Mix, Summary, TokenSet};
use zoftoken_net::DriverKind;
use zoftoken_server::udp::UdpServer;
use zoftoken_storage::{Committer, CommitterConfig, Durability, MasterKey, MemoryKv, Store};
use zoftoken_storage_conformance::FaultyKv;

struct Rig {
    kv: Arc<FaultyKv>,
    set: TokenSet,
    udp: Option<UdpServer>,
    committer: Option<Committer>,
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    /// The engine's PIN-tree secret: the generator derives the PIN keys of its OPENs from it.
    pin_tree_secret: [u8; 32],
}

impl Rig {
    fn start(writer_thread: bool) -> Rig {
        let set = TokenSet::new("bank", 3, 500);
        let mut service = ServiceConfig::new(set.service(), &["127.0.0.1:4500"]);
        service.window_s = 600;
        let config = EngineConfig::new(vec![service], 1, [7; 32]);
        let pin_tree_secret = config.pin_tree_secret;
        let engine = Engine::new(config).unwrap();
        for i in 0..set.count() {
            engine.load_token(&set.record(i, 0)).unwrap();
        }
        let engine = Arc::new(engine);
        let kv = Arc::new(FaultyKv::new(Arc::new(MemoryKv::new())));
        let store = Arc::new(
            Store::open(kv.clone(), MasterKey::from_bytes([1; 32]), Durability::Wal).unwrap(),
        );
        // The tokens are durable, as a server's are (a failed write restores them from here).
        store
            .commit(&set.server_mutations(0..set.count()), &*engine)
            .unwrap();
        let mut config = CommitterConfig::new(Durability::Wal, 1);
        config.writer_thread = writer_thread;
        let committer = Committer::start(store.clone(), engine.clone(), config).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let udp = UdpServer::start(
            engine,
            &committer,
            store,
            &["127.0.0.1:0".parse().unwrap()],
            DriverKind::Mmsg,
            1,
            stop.clone(),
        )
        .unwrap();
        let addr = udp.addrs[0];
        Rig {
            kv,
            set,
            udp: Some(udp),
            committer: Some(committer),
            stop,
            addr,
            pin_tree_secret,
        }
    }

    /// Opens (every request changes the token's state) at `rate` for `secs`.
    fn load(&self, rate: u64, secs: f64, timeout: Duration) -> Summary {
        let mut c = LoadConfig::new(vec![self.addr], self.set.clone());
        c.pin_tree_secret = Some(zoftoken_proto::SecretBytes::new(self.pin_tree_secret));
        c.rate = Some(rate);
        c.duration = Duration::from_secs_f64(secs);
        c.window = 512;
        c.timeout = timeout;
        c.mix = Mix {
            status: 0,
            open: 100,
            close: 0,
            wrong_pin: 0,
        };
        run(&c, |_| {}).unwrap()
    }

    fn stats(&self) -> (u64, u64, u64) {
        let s = &self.udp.as_ref().unwrap().stats;
        (
            s.replied.load(Ordering::Relaxed),
            s.withheld.load(Ordering::Relaxed),
            s.failed_commits.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(u) = self.udp.take() {
            u.join();
        }
        if let Some(c) = self.committer.take() {
            c.shutdown();
        }
    }
}

fn slow_then_failing_then_healthy(writer_thread: bool) {
    let mode = if writer_thread {
        "writer thread"
    } else {
        "inline"
    };
    let rig = Rig::start(writer_thread);
    let healthy = rig.load(3000, 1.0, Duration::from_secs(1));
    assert!(
        healthy.answered * 100 >= healthy.sent * 99,
        "{mode}: {healthy:?}"
    );

    // A disk that takes 40 ms per write: every reply waits for its write, the server keeps
    // answering (group commit takes the batches queued meanwhile in one write).
    rig.kv.set_write_delay(Duration::from_millis(40));
    let writes_before = rig.kv.writes();
    let slow = rig.load(2000, 2.0, Duration::from_secs(3));
    let writes = rig.kv.writes() - writes_before;
    eprintln!(
        "{mode}, 40 ms writes: {} of {} answered, {} lost, p50 {} µs, p99 {} µs, {writes} writes",
        slow.answered, slow.sent, slow.lost, slow.p50_us, slow.p99_us
    );
    assert!(
        slow.answered > 0,
        "{mode}: nothing answered on a slow disk: {slow:?}"
    );
    assert!(
        slow.p50_us >= 40_000,
        "{mode}: replies before the write? {slow:?}"
    );
    // One write per 40 ms at most, whatever the load: the writes never pile up.
    let elapsed_ms = (slow.elapsed.as_secs_f64() * 1000.0) as u64 + 3000;
    assert!(writes <= elapsed_ms / 40 + 2, "{mode}: {writes} writes");

    // A failing disk: nothing that needed writing is answered, and it is counted.
    rig.kv.set_write_delay(Duration::ZERO);
    rig.kv.set_failing(true);
    let (_, withheld_before, failed_before) = rig.stats();
    let failing = rig.load(2000, 1.0, Duration::from_millis(500));
    let (_, withheld, failed) = rig.stats();
    assert_eq!(
        failing.answered, 0,
        "{mode}: answered without a durable write: {failing:?}"
    );
    assert!(
        withheld - withheld_before >= failing.sent * 9 / 10,
        "{mode}"
    );
    assert!(failed > failed_before, "{mode}");

    // The disk is back: the server answers everything again, without a restart.
    rig.kv.set_failing(false);
    let back = rig.load(3000, 1.0, Duration::from_secs(1));
    assert!(back.answered * 100 >= back.sent * 99, "{mode}: {back:?}");
}

#[test]
fn a_slow_or_failing_disk_delays_or_withholds_replies_and_the_server_recovers() {
    slow_then_failing_then_healthy(true);
    slow_then_failing_then_healthy(false);
}
