//! Webhook dead letters and disabled endpoints: listed (bounded), replayed, deleted.

use zoftoken_admin::{
    dead_letter_limit, dead_letters, delete_dead_letter, disabled_endpoints,
    replay_all_dead_letters, replay_dead_letter, AdminError, ErrorKind, DEAD_LETTERS_DEFAULT,
    DEAD_LETTERS_MAX,
};
use zoftoken_engine::{Actor, EventKind};
use zoftoken_proto::TokenId;
use zoftoken_storage::{DeadLetterRecord, DeliveryWrite, DisabledEndpoint, OutboxEvent, Store};

use super::store;

fn kill(store: &Store, seq: u64) {
    let mut w = DeliveryWrite::new();
    w.dead_letter(&DeadLetterRecord {
        event: OutboxEvent {
            seq,
            index: 0,
            kind: EventKind::Opened,
            token_id: TokenId([4; 16]),
            service: "bank".into(),
            username: Some("ana".into()),
            time_ms: 77,
            actor: Actor::Device,
            open_until_ms: None,
            duress: false,
            tx_id: None,
            operation: None,
            sequence: seq,
        },
        attempts: 8,
        last_status: Some(503),
        last_error: "HTTP 503".into(),
        dead_at_ms: 1000,
    });
    store.write_deliveries(w).unwrap();
}

#[test]
fn dead_letters_are_listed_replayed_and_deleted() {
    let store = store();
    kill(&store, 1);
    kill(&store, 2);
    let listed = dead_letters(&store, None).unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(dead_letters(&store, Some(1)).unwrap().len(), 1);
    let (first, second) = (listed[0].id.clone(), listed[1].id.clone());
    replay_dead_letter(&store, &first).unwrap();
    delete_dead_letter(&store, &second).unwrap();
    for e in [
        replay_dead_letter(&store, "msg_nope").unwrap_err(),
        delete_dead_letter(&store, &second).unwrap_err(),
    ] {
        assert!(matches!(e, AdminError::UnknownDeadLetter(_)), "{e}");
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }
    // The one replayed is queued already: only the new one is.
    kill(&store, 3);
    assert_eq!(replay_all_dead_letters(&store).unwrap(), 1);
}

#[test]
fn listings_are_bounded_for_every_caller() {
    assert_eq!(dead_letter_limit(None), DEAD_LETTERS_DEFAULT);
    assert_eq!(dead_letter_limit(Some(5)), 5);
    assert_eq!(dead_letter_limit(Some(1_000_000)), DEAD_LETTERS_MAX);
}

#[test]
fn disabled_endpoints_are_listed() {
    let store = store();
    assert!(disabled_endpoints(&store).unwrap().is_empty());
    let gone = DisabledEndpoint {
        service: "bank".into(),
        url: "https://hooks.example/z".into(),
        status: 410,
        at_ms: 5,
        fingerprint: [1; 32],
    };
    let mut w = DeliveryWrite::new();
    w.disable(&gone);
    store.write_deliveries(w).unwrap();
    assert_eq!(disabled_endpoints(&store).unwrap(), vec![gone]);
}
