//! The generator against an in-process UDP echo and an in-process engine responder.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use zoftoken_engine::{Engine, EngineConfig, ServiceConfig};
use zoftoken_loadgen::{run, IoChoice, LoadConfig, Mix, Summary, TokenSet};
use zoftoken_proto::{DropReason, SecretBytes};
use zoftoken_testkit::Responder;

/// The instance PIN-tree secret of the test engines, given to the generator too.
const PIN_TREE: [u8; 32] = [0x71; 32];

fn engine_with(set: &TokenSet) -> Arc<Engine> {
    let mut service = ServiceConfig::new(set.service(), &["127.0.0.1:4500"]);
    service.window_s = 600;
    let mut config = EngineConfig::new(vec![service], 1, [7; 32]);
    config.shards = 4;
    config.pin_tree_secret = PIN_TREE;
    let engine = Engine::new(config).unwrap();
    for i in 0..set.count() {
        engine.load_token(&set.record(i, 0)).unwrap();
    }
    Arc::new(engine)
}

fn config(endpoints: Vec<SocketAddr>, set: &TokenSet, io: IoChoice) -> LoadConfig {
    let mut c = LoadConfig::new(endpoints, set.clone());
    c.duration = Duration::from_millis(600);
    c.window = 16;
    c.timeout = Duration::from_millis(150);
    c.io = io;
    c.pin_tree_secret = Some(SecretBytes::new(PIN_TREE));
    c
}

fn check_totals(s: &Summary) {
    assert_eq!(s.sent, s.sent_by_type.iter().sum::<u64>(), "{s:?}");
    assert_eq!(s.sent, s.answered + s.echoed + s.lost, "{s:?}");
    assert!(s.p50_us > 0 && s.p50_us <= s.p99_us && s.p99_us <= s.p999_us && s.p999_us <= s.max_us);
    let json = s.to_json();
    assert!(json.starts_with("{\"sent\":") && json.ends_with('}') && !json.contains('\n'));
    assert!(json.contains(&format!("\"answered\":{},", s.answered)));
}

#[test]
fn echo_replies_are_counted_as_echoes() {
    for io in [IoChoice::Std, IoChoice::Mmsg] {
        let echo = Responder::echo();
        let set = TokenSet::new("demo", 3, 100);
        let mut progress = 0;
        let s = run(&config(vec![echo.addr], &set, io), |_| progress += 1).unwrap();
        println!("echo {io:?}: {}", s.to_json());
        check_totals(&s);
        assert!(s.sent > 1_000, "{s:?}");
        assert_eq!(s.answered, 0);
        assert_eq!(s.lost, 0);
        assert_eq!(s.errors, 0);
        assert_eq!(s.echoed, s.sent);
        assert_eq!(echo.received(), s.sent);
        assert!(s.sent_pps > 1_000.0 && s.answered_pps > 1_000.0);
    }
}

#[test]
fn engine_answers_every_request_across_runs_and_endpoints() {
    let set = TokenSet::new("demo", 11, 500);
    let engine = engine_with(&set);
    let a = Responder::engine(engine.clone(), |_| true);
    let b = Responder::engine(engine.clone(), |_| true);
    let mut last = None;
    for (run_no, io) in [IoChoice::Mmsg, IoChoice::Std].into_iter().enumerate() {
        let mut c = config(vec![a.addr, b.addr], &set, io);
        c.threads = 2;
        let mut ticks = Vec::new();
        let s = run(&c, |p| ticks.push(p.clone())).unwrap();
        println!("engine run {run_no} {io:?}: {}", s.to_json());
        check_totals(&s);
        assert!(s.sent > 1_000, "{s:?}");
        assert_eq!(s.answered, s.sent, "{s:?}");
        assert_eq!((s.echoed, s.lost, s.errors, s.refused), (0, 0, 0, 0));
        // Both endpoints served, roughly evenly.
        let (ra, rb) = (a.received(), b.received());
        let (pa, pb) = last.unwrap_or((0, 0));
        let (da, db) = (ra - pa, rb - pb);
        assert_eq!(da + db, s.sent);
        assert!(da.abs_diff(db) <= s.sent / 10, "{da} / {db}");
        last = Some((ra, rb));
        // The mix, roughly: 60/20/20 within 5 points.
        for (n, pct) in s.sent_by_type.iter().zip([60.0, 20.0, 20.0]) {
            let got = 100.0 * *n as f64 / s.sent as f64;
            assert!((got - pct).abs() < 5.0, "{:?}", s.sent_by_type);
        }
    }
    // No counter was ever replayed or stale, in either run (the second run's floor is above
    // the first run's counters).
    for r in [
        DropReason::Replayed,
        DropReason::Stale,
        DropReason::Unauthentic,
        DropReason::UnknownToken,
    ] {
        assert_eq!(engine.drops(r), 0, "{r:?}");
    }
}

#[test]
fn a_repeated_counter_floor_is_dropped_as_replay() {
    let set = TokenSet::new("demo", 12, 20);
    let engine = engine_with(&set);
    let r = Responder::engine(engine.clone(), |_| true);
    let mut c = config(vec![r.addr], &set, IoChoice::Mmsg);
    c.duration = Duration::from_millis(200);
    c.counter_floor = Some(1_000);
    let first = run(&c, |_| {}).unwrap();
    assert_eq!(first.answered, first.sent);
    let second = run(&c, |_| {}).unwrap();
    // Same counters again: the engine drops them silently, the generator counts them lost.
    assert!(second.lost > 0, "{second:?}");
    assert!(engine.drops(DropReason::Replayed) > 0);
}

#[test]
fn a_counters_file_continues_every_token_in_order_across_runs() {
    let set = TokenSet::new("demo", 13, 50);
    let engine = engine_with(&set);
    let r = Responder::engine(engine.clone(), |_| true);
    let dir = std::env::temp_dir().join(format!("zoftoken-loadgen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("counters");
    let _ = std::fs::remove_file(&file);
    let mut c = config(vec![r.addr], &set, IoChoice::Mmsg);
    c.duration = Duration::from_millis(200);
    c.counters_file = Some(file.clone());
    let mut sent = 0;
    for _ in 0..2 {
        let s = run(&c, |_| {}).unwrap();
        assert_eq!(s.answered, s.sent, "{s:?}");
        assert_eq!(s.lost, 0);
        sent += s.sent;
    }
    // Every request of both runs used the next counter of its token: the file holds, per
    // token, one more than the counters used, and they add up to what was sent.
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.len(), 50 * 8);
    let used: u64 = bytes
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()) - 1)
        .sum();
    assert_eq!(used, sent);
    assert_eq!(engine.drops(DropReason::Replayed), 0);
    // A file of another token set is refused, not misused.
    let other = TokenSet::new("demo", 13, 49);
    let mut c2 = config(vec![r.addr], &other, IoChoice::Mmsg);
    c2.counters_file = Some(file.clone());
    assert!(run(&c2, |_| {}).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unanswered_requests_are_lost() {
    let set = TokenSet::new("demo", 13, 200);
    let engine = engine_with(&set);
    let r = Responder::engine(engine.clone(), |i| i % 2 == 0);
    let mut c = config(vec![r.addr], &set, IoChoice::Mmsg);
    c.mix = "0/50/50".parse::<Mix>().unwrap();
    c.timeout = Duration::from_millis(50);
    c.window = 64;
    let s = run(&c, |_| {}).unwrap();
    println!("every other: {}", s.to_json());
    check_totals(&s);
    assert!(s.sent > 500, "{s:?}");
    assert_eq!(s.sent_by_type[0], 0);
    assert_eq!(s.errors, 0);
    assert_eq!(s.answered + s.lost, s.sent);
    // Half are answered (±1 for the datagram in flight at the end).
    assert!(s.answered.abs_diff(s.lost) <= 1, "{s:?}");
    assert_eq!(engine.drops(DropReason::Replayed), 0);
}

#[test]
fn a_wrong_pin_verifier_is_answered_but_refused() {
    // Same secrets, another PIN verifier on the server: every OPEN is answered WRONG_PIN
    // (then BLOCKED, and every request of a blocked token is refused).
    let set = TokenSet::new("demo", 23, 20);
    let mut service = ServiceConfig::new("demo", &["127.0.0.1:4500"]);
    service.window_s = 600;
    let mut engine_config = EngineConfig::new(vec![service], 1, [7; 32]);
    engine_config.pin_tree_secret = PIN_TREE;
    let engine = Arc::new(Engine::new(engine_config).unwrap());
    for i in 0..set.count() {
        let mut r = set.record(i, 0);
        r.pin_verifier = zoftoken_proto::SecretBytes::new([0x99; 32]);
        engine.load_token(&r).unwrap();
    }
    let r = Responder::engine(engine.clone(), |_| true);
    let mut c = config(vec![r.addr], &set, IoChoice::Mmsg);
    c.duration = Duration::from_millis(200);
    let s = run(&c, |_| {}).unwrap();
    check_totals(&s);
    assert_eq!(s.answered, s.sent);
    assert!(s.refused >= s.sent_by_type[1] && s.refused > 0, "{s:?}");
}

#[test]
fn wrong_secrets_get_no_reply() {
    // The server holds seed 21; the generator uses the same ids with seed 22's secrets: no
    // reply at all (unauthentic requests are dropped silently), all lost.
    let engine = engine_with(&TokenSet::new("demo", 21, 20));
    let r = Responder::engine(engine.clone(), |_| true);
    let mut c = config(vec![r.addr], &TokenSet::new("demo", 22, 20), IoChoice::Mmsg);
    c.duration = Duration::from_millis(200);
    c.timeout = Duration::from_millis(50);
    let s = run(&c, |_| {}).unwrap();
    assert!(s.sent > 0);
    assert_eq!((s.answered, s.echoed), (0, 0));
    assert_eq!(s.lost, s.sent);
    assert_eq!(engine.drops(DropReason::Unauthentic), s.sent);
}

#[test]
fn a_rate_is_kept_when_sending_in_groups() {
    for io in [IoChoice::Std, IoChoice::Mmsg] {
        let echo = Responder::echo();
        let set = TokenSet::new("demo", 5, 100);
        let mut c = config(vec![echo.addr], &set, io);
        c.window = 64;
        c.rate = Some(2_000);
        c.burst = 20;
        let s = run(&c, |_| {}).unwrap();
        println!("groups of 20 at 2 000/s, {io:?}: {}", s.to_json());
        check_totals(&s);
        // 600 ms at 2 000/s: 1 200 due by the end, sent only in whole groups of 20 (the
        // last group may not have come due); none early.
        assert!((1_100..=1_200).contains(&s.sent), "{s:?}");
        assert_eq!(s.echoed, s.sent, "{s:?}");
        assert_eq!(echo.received(), s.sent);
    }
}

#[test]
fn each_run_draws_its_own_sequence_unless_a_seed_is_given() {
    // The (type, token id) of the first 40 requests a run sends.
    let first_requests = |seed: Option<u64>| {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let responder = Responder::start(move |_, _, d, out| {
            let mut seen = record.lock().unwrap();
            if seen.len() < 40 && d.len() >= 24 {
                seen.push((d[1], d[8..24].to_vec()));
            }
            out[..d.len()].copy_from_slice(d);
            Some(d.len())
        });
        let set = TokenSet::new("demo", 5, 1000);
        let mut c = config(vec![responder.addr], &set, IoChoice::Std);
        c.duration = Duration::from_millis(200);
        c.rate = Some(1_000);
        // One request at a time: no draw ever meets a token with a request in flight (which
        // is drawn again), so the sequence depends on the seed alone.
        c.window = 1;
        c.burst = 1;
        c.sequence_seed = seed;
        run(&c, |_| {}).unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 40);
        seen
    };
    assert_eq!(first_requests(Some(7)), first_requests(Some(7)));
    assert_ne!(first_requests(Some(7)), first_requests(Some(8)));
    assert_ne!(first_requests(None), first_requests(None));
}

#[test]
fn opens_need_the_instance_pin_tree_secret() {
    // Another instance's secret: the PIN keys differ, every OPEN is a wrong PIN, while the
    // packets themselves are authentic (STATUS and CLOSE are answered OK).
    let set = TokenSet::new("demo", 24, 20);
    let engine = engine_with(&set);
    let r = Responder::engine(engine.clone(), |_| true);
    let mut c = config(vec![r.addr], &set, IoChoice::Mmsg);
    c.duration = Duration::from_millis(200);
    c.mix = "0/100/0".parse().unwrap();
    c.pin_tree_secret = Some(SecretBytes::new([0x72; 32]));
    let s = run(&c, |_| {}).unwrap();
    assert_eq!(s.answered, s.sent, "{s:?}");
    assert_eq!(s.refused, s.sent, "{s:?}");
    // With the instance's secret every OPEN of fresh tokens is accepted.
    let set = TokenSet::new("demo", 25, 20);
    let engine = engine_with(&set);
    let r = Responder::engine(engine.clone(), |_| true);
    let mut c = config(vec![r.addr], &set, IoChoice::Mmsg);
    c.duration = Duration::from_millis(200);
    c.mix = "0/100/0".parse().unwrap();
    let s = run(&c, |_| {}).unwrap();
    assert!(s.sent > 0);
    assert_eq!((s.answered, s.refused), (s.sent, 0), "{s:?}");
    // Without one, a mix with OPENs is refused before anything is sent; one without runs.
    c.pin_tree_secret = None;
    let e = run(&c, |_| {}).unwrap_err();
    assert!(e.to_string().contains("PIN-tree secret"), "{e}");
    c.mix = "50/0/50".parse().unwrap();
    let s = run(&c, |_| {}).unwrap();
    assert_eq!(s.answered, s.sent);
}

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: zoftoken_loadgen::LoadgenArgs,
}

#[test]
fn the_master_key_is_found_as_the_server_finds_it() {
    use clap::Parser;
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("zoftoken-loadgen-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hex = "3f".repeat(32);
    let expected = *zoftoken_storage::MasterKey::from_hex(&hex)
        .unwrap()
        .pin_tree_secret()
        .expose();
    let file = dir.join("master.key");
    std::fs::write(&file, format!("{hex}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let parse = |extra: &[&str]| {
        let mut argv = vec!["loadgen", "--endpoint", "127.0.0.1:9", "--service", "demo"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    };
    let no_env = |_: &str| None;
    let args = parse(&["--master-key-file", file.to_str().unwrap()]);
    assert_eq!(
        args.pin_tree_secret(&no_env, None).unwrap().expose(),
        &expected
    );
    // The generator's configuration carries it when the mix has OPENs.
    let c = args.config(None).unwrap();
    assert_eq!(c.pin_tree_secret.unwrap().expose(), &expected);
    // The environment, as the server reads it: the key itself, or its file.
    let bare = parse(&[]);
    let key_env = |n: &str| (n == "ZOFTOKEN_MASTER_KEY").then(|| hex.clone());
    assert_eq!(
        bare.pin_tree_secret(&key_env, None).unwrap().expose(),
        &expected
    );
    let path = file.to_str().unwrap().to_owned();
    let file_env = |n: &str| (n == "ZOFTOKEN_MASTER_KEY_FILE").then(|| path.clone());
    assert_eq!(
        bare.pin_tree_secret(&file_env, None).unwrap().expose(),
        &expected
    );
    // The embedding server's configured key file.
    assert_eq!(
        bare.pin_tree_secret(&no_env, Some(&file)).unwrap().expose(),
        &expected
    );
    // A key file others may read is refused, as the server refuses it.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = args.pin_tree_secret(&no_env, None).unwrap_err();
    assert!(e.contains("too open"), "{e}");
    // A malformed key, and no key at all, are clear errors.
    let bad_env = |n: &str| (n == "ZOFTOKEN_MASTER_KEY").then(|| "xyz".to_owned());
    assert!(bare
        .pin_tree_secret(&bad_env, None)
        .unwrap_err()
        .contains("ZOFTOKEN_MASTER_KEY"));
    if !std::path::Path::new("data/master.key").exists() {
        let e = bare.pin_tree_secret(&no_env, None).unwrap_err();
        assert!(e.contains("--master-key-file"), "{e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn invalid_configurations_are_refused() {
    let set = TokenSet::new("demo", 1, 10);
    assert!(run(&LoadConfig::new(vec![], set.clone()), |_| {}).is_err());
    let mut c = LoadConfig::new(vec!["127.0.0.1:9".parse().unwrap()], set);
    c.window = 0;
    assert!(run(&c, |_| {}).is_err());
    c.window = 1;
    c.burst = 0;
    assert!(run(&c, |_| {}).is_err());
    assert!("60/20".parse::<Mix>().is_err());
    assert!("60/20/30".parse::<Mix>().is_err());
    assert_eq!("60/20/20".parse::<Mix>().unwrap(), Mix::default());
}
