//! The engine's packet path behind the AEAD (built with `insecure-fuzzing-aead`): sequences of
//! datagrams, with the virtual clock moving and timers running, against four paired tokens.
//! The header's token id is rewritten to one of them so every input reaches the state
//! machine. Properties: no panic, no reply larger than its request, at most three failures,
//! and a blocked token never reads open.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zoftoken_engine::{
    Batch, Engine, EngineConfig, MemoryCommit, PacketOutcome, ServiceConfig, TokenRecord,
    TokenState, TokenStateRecord,
};
use zoftoken_proto::{SecretBytes, TokenId};

const T0: u64 = 1_800_000_060_000;

fn engine() -> (Engine, Vec<TokenId>) {
    let mut instant = ServiceConfig::new("door", &["127.0.0.1:4500"]);
    instant.window_s = 0;
    let mut strict = ServiceConfig::new("strict", &["127.0.0.1:4500"]);
    strict.duress_allowed = false;
    let services = vec![
        ServiceConfig::new("bank", &["127.0.0.1:4500"]),
        instant,
        strict,
    ];
    let mut config = EngineConfig::new(services, 3, [1; 32]);
    config.shards = 4;
    let engine = Engine::new(config).unwrap();
    let mut ids = Vec::new();
    for (i, service) in [0u16, 0, 1, 2].into_iter().enumerate() {
        let id = TokenId::derive("fuzz", &format!("user{i}"));
        engine
            .load_token(&TokenRecord {
                kind: zoftoken_engine::TokenKind::App,
                service,
                secret: SecretBytes::new([i as u8; 32]),
                pin_verifier: SecretBytes::new([1; 32]),
                duress_verifier: (i % 2 == 0).then(|| SecretBytes::new([2; 32])),
                status: TokenStateRecord::new(id),
            })
            .unwrap();
        ids.push(id);
    }
    (engine, ids)
}

fuzz_target!(|data: &[u8]| {
    let (engine, ids) = engine();
    let mut now = T0;
    let mut batch = Batch::new();
    // The durable write: an explicit log in memory.
    let mut log = MemoryCommit::default();
    let mut out = [0u8; 1200];
    let src = std::net::SocketAddr::from(([192, 0, 2, 1], 1000));
    let mut rest = data;
    // Records: [len_hi, len_lo, step, datagram...]; step 255 runs the timers.
    while let [hi, lo, step, tail @ ..] = rest {
        let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        rest = next;
        if *step == 255 {
            now += 600_000;
            engine.tick(now, &mut batch);
        } else {
            now += u64::from(*step) * 1000;
        }
        let mut d = datagram.to_vec();
        if let (Some(which), Some(id)) = (d.get(8).copied(), d.get_mut(8..24)) {
            id.copy_from_slice(&ids[usize::from(which) % ids.len()].0);
        }
        if let PacketOutcome::Reply(n) =
            engine.handle_packet(now, src, &mut d, &mut out, &mut batch)
        {
            assert!(n <= datagram.len(), "reply larger than request");
        }
        engine.commit(&mut log, &mut batch).unwrap();
        log.log.clear();
        for id in &ids {
            let s = engine.status_by_id(now, id).unwrap();
            assert!(s.failures <= 3);
            if s.failures == 3 {
                assert_eq!(s.state, TokenState::Blocked);
            }
        }
    }
});
