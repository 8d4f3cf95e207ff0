//! Codec benchmarks: header parse, the server's open + seal of every request type, the
//! device's seal, key derivation, the per-request PIN keys (server derivation, PIN root,
//! device ring, verifier sealing), and the AEAD crate comparison that chose `ring`.
//!
//! `cargo bench --profile release --workspace --bench codec` (the `bench` profile is the
//! test suite's, with debug assertions: see the workspace's Cargo.toml)
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use zoftoken_bench::Fixture;
use zoftoken_proto::packet::seal_request;
use zoftoken_proto::pairing::Ephemeral;
use zoftoken_proto::wire::{check_request, Header, MsgType, VerifierBlock, MAX_DATAGRAM};
use zoftoken_proto::{EnrollmentSecret, PinKeyRing, PinRoot, PinVerifier, TokenId, TokenSecret};

fn header(c: &mut Criterion) {
    let f = Fixture::new();
    let status = f
        .packets
        .iter()
        .find(|p| p.0 == MsgType::Status)
        .unwrap()
        .1
        .clone();
    c.bench_function("header/check_request", |b| {
        b.iter(|| check_request(black_box(&status)).map(|r| r.counter()))
    });
}

fn packets(c: &mut Criterion) {
    let f = Fixture::new();
    let mut g = c.benchmark_group("server_open_seal");
    for (t, request, reply_body) in &f.packets {
        g.throughput(Throughput::Elements(1));
        let mut buf = request.clone();
        let mut out = [0u8; MAX_DATAGRAM];
        assert!(f.server_round(&mut buf, reply_body, &mut out) > 0);
        g.bench_function(t.name(), |b| {
            b.iter(|| {
                // Opening decrypts in place, so each iteration starts from the sealed bytes.
                buf.copy_from_slice(request);
                f.server_round(black_box(&mut buf), reply_body, &mut out)
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("device_seal");
    for t in [MsgType::Open, MsgType::Status, MsgType::TxFetch] {
        let body = vec![0u8; t.request_body_len()];
        let mut out = [0u8; MAX_DATAGRAM];
        g.bench_function(t.name(), |b| {
            b.iter(|| seal_request(&f.keys.d2s, t, f.token_id, black_box(9), &body, &mut out))
        });
    }
    g.finish();
}

fn keys(c: &mut Criterion) {
    let secret = TokenSecret::from_bytes([3; 32]);
    let enrollment = EnrollmentSecret::new(vec![5; 32]);
    let mut g = c.benchmark_group("keys");
    g.bench_function("token_id", |b| {
        b.iter(|| TokenId::derive(black_box("Banco Ejemplo"), black_box("alice@example.com")))
    });
    g.bench_function("token_keys (4 derive_key)", |b| {
        b.iter(|| black_box(&secret).keys())
    });
    g.bench_function("enrollment_keys (3 derive_key)", |b| {
        b.iter(|| black_box(&enrollment).keys())
    });
    let device = Ephemeral::from_random([9; 32]).public();
    g.bench_function("pairing server X25519 + token secret", |b| {
        b.iter(|| Ephemeral::from_random(black_box([4; 32])).server_agree(&device, &[1; 16]))
    });
    let v = PinVerifier::from_bytes([6; 32]);
    let pin_key = PinRoot::from_bytes([8; 32]).key(5).unwrap();
    g.bench_function("pin_proof", |b| {
        b.iter(|| black_box(&v).proof(&pin_key, MsgType::Open, &[1; 16], black_box(5)))
    });
    g.finish();
    pin_keys(c);
    let mut g = c.benchmark_group("argon2id");
    g.sample_size(10);
    let id = TokenId::derive("s", "u");
    g.bench_function("pin_verifier (19 MiB, t=2)", |b| {
        b.iter(|| PinVerifier::derive(black_box("2468"), &id))
    });
    g.finish();
}

/// Per-request PIN keys: what the server adds to a PIN request (its PIN root from the
/// instance secret and the token secret, then the request's key in three keyed hashes), what
/// the device does per PIN request (take a key from its ring), and sealing new verifiers.
fn pin_keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("pin_keys");
    let root = PinRoot::from_bytes([8; 32]);
    g.bench_function("server key (3 keyed hashes)", |b| {
        b.iter(|| black_box(&root).key(black_box(0x12_3456)))
    });
    g.bench_function("pin_root", |b| {
        b.iter(|| zoftoken_engine::pin_root(black_box(&[1; 32]), black_box(&[2; 32])))
    });
    let fresh = PinKeyRing::new(root.clone());
    g.bench_function("device take", |b| {
        b.iter_custom(|iters| {
            let mut ring = fresh.clone();
            let mut elapsed = std::time::Duration::ZERO;
            for _ in 0..iters {
                if ring.is_exhausted() {
                    ring = fresh.clone();
                }
                let t = std::time::Instant::now();
                let key = black_box(ring.take().unwrap());
                elapsed += t.elapsed();
                drop(key);
            }
            elapsed
        })
    });
    let key = root.key(7).unwrap();
    let header = Header::request(MsgType::ChangePin, [4; 16], 12);
    let block = VerifierBlock {
        pin_verifier: [1; 32],
        duress_verifier: [0; 32],
        flags: 0,
        zero: [0; 7],
    }
    .to_bytes();
    g.bench_function("seal_verifiers", |b| {
        b.iter(|| black_box(&key).seal_verifiers(&header, black_box(&block)))
    });
    // What the server does for one OPEN's PIN: the root, the index's key, the proof checked
    // against the normal and the duress verifier.
    let normal = PinVerifier::from_bytes([6; 32]);
    let duress = PinVerifier::from_bytes([7; 32]);
    let proof = normal.proof(&root.key(9).unwrap(), MsgType::Open, &[1; 16], 5);
    g.bench_function("server PIN check (root, key, 2 proofs)", |b| {
        b.iter(|| {
            let root = zoftoken_engine::pin_root(black_box(&[1; 32]), black_box(&[2; 32]));
            let key = root.key(black_box(9)).unwrap();
            zoftoken_proto::pin::check_proof(
                black_box(&proof),
                &key,
                &normal,
                Some(&duress),
                MsgType::Open,
                &[1; 16],
                5,
            )
        })
    });
    // The alternative weighed in SECURITY.md: one X25519 agreement with a server key per
    // PIN-bearing request (the server's share of the work, no key generation).
    let server = Ephemeral::from_random([4; 32]);
    let device = Ephemeral::from_random([9; 32]).public();
    g.bench_function("alternative: X25519 agreement per request", |b| {
        b.iter(|| black_box(&server).server_agree(black_box(&device), &[1; 16]))
    });
    g.finish();
}

/// The AEAD crates on a 48-byte body (a typical request body plus header-sized AAD), one seal
/// and one open + seal each. Run a second time with `RUSTFLAGS="--cfg poly1305_force_soft"`
/// for RustCrypto's portable Poly1305 (see BENCHMARKS.md).
fn aead(c: &mut Criterion) {
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    let key_bytes = [7u8; 32];
    let aad = [1u8; 32];
    let mut g = c.benchmark_group("aead_48B");
    let ring_key = zoftoken_proto::aead::PacketKey::new(key_bytes);
    let mut body = [0u8; 48];
    g.bench_function("ring seal", |b| {
        b.iter(|| ring_key.seal_in_place(0, black_box(1), &aad, &mut body))
    });
    let mut sealed = [0u8; 64];
    let tag = ring_key
        .seal_in_place(0, 1, &aad, &mut sealed[..48])
        .unwrap();
    sealed[48..].copy_from_slice(&tag);
    g.bench_function("ring open+seal", |b| {
        b.iter(|| {
            let mut d = sealed;
            let n = ring_key
                .open_in_place(0, 1, &aad, &mut d)
                .map(|p| p.len())
                .unwrap_or(0);
            let mut reply = [0u8; 48];
            (n, ring_key.seal_in_place(1, 1, &aad, &mut reply))
        })
    });
    let rc = chacha20poly1305::ChaCha20Poly1305::new(&key_bytes.into());
    let nonce = chacha20poly1305::Nonce::from_slice(&[0u8; 12]);
    g.bench_function("rustcrypto seal", |b| {
        b.iter(|| rc.encrypt_in_place_detached(nonce, &aad, black_box(&mut body)))
    });
    let mut rc_sealed = [0u8; 48];
    let rc_tag = rc
        .encrypt_in_place_detached(nonce, &aad, &mut rc_sealed)
        .unwrap();
    g.bench_function("rustcrypto open+seal", |b| {
        b.iter(|| {
            let mut d = rc_sealed;
            let ok = rc
                .decrypt_in_place_detached(nonce, &aad, &mut d, &rc_tag)
                .is_ok();
            let mut reply = [0u8; 48];
            (ok, rc.encrypt_in_place_detached(nonce, &aad, &mut reply))
        })
    });
    g.finish();
}

criterion_group!(benches, header, packets, keys, aead);
criterion_main!(benches);
