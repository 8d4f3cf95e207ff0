//! Tokens: changes refused while the database cannot write, tokens loaded when stored,
//! committed before they are shown, typed errors naming the token.

use std::sync::Arc;

use zoftoken_admin::{stored_token, stored_tokens, AdminError, ErrorKind, Tokens};
use zoftoken_engine::{EngineError, Force, TokenState};
use zoftoken_storage::MemoryKv;
use zoftoken_storage_conformance::FaultyKv;

use super::{engine, service, store, store_on};

const NOW: u64 = 1_800_000_000_000;

#[test]
fn enrolled_tokens_are_stored_listed_and_deleted() {
    let store = store();
    let running = engine(&[service("bank"), service("shop")]);
    let tokens = Tokens::new(&store, &running);
    let enrolled = tokens.enroll(NOW, "bank", "ana").unwrap();
    assert!(enrolled.deeplink.starts_with("zoftoken://"));
    tokens.enroll_totp(NOW, "shop", "bob").unwrap();
    let ana = stored_token(&store, "bank", "ana").unwrap();
    assert_eq!(ana.token_id, enrolled.token_id);
    assert_eq!(
        (ana.state, ana.enrollment_expires_ms.is_some()),
        (None, true)
    );
    let bob = stored_token(&store, "shop", "bob").unwrap();
    assert_eq!(bob.state.map(|s| s.state), Some(TokenState::Closed));
    assert_eq!(stored_tokens(&store, None).unwrap().len(), 2);
    assert_eq!(stored_tokens(&store, Some("shop")).unwrap(), vec![bob]);
    assert_eq!(
        tokens.delete(NOW, "bank", "ana").unwrap(),
        enrolled.token_id
    );
    let e = stored_token(&store, "bank", "ana").unwrap_err();
    assert!(matches!(e, AdminError::UnknownToken { .. }), "{e}");
    let e = tokens.delete(NOW, "bank", "ana").unwrap_err();
    assert!(
        matches!(&e, AdminError::UnknownToken { service, username } if service == "bank" && username == "ana"),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[test]
fn errors_name_what_is_missing_or_wrong() {
    let store = store();
    let running = engine(&[service("bank")]);
    let tokens = Tokens::new(&store, &running);
    let e = tokens.enroll(NOW, "nope", "ana").unwrap_err();
    assert!(
        matches!(&e, AdminError::UnknownService(s) if s == "nope"),
        "{e}"
    );
    let e = tokens.enroll(NOW, "bank", "ana\n").unwrap_err();
    assert!(
        matches!(e, AdminError::Engine(EngineError::Invalid(_))),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::Invalid);
    let e = tokens
        .change(NOW, "bank", "nobody", |e, now, id, batch| {
            e.force(now, id, Force::Open, batch)
        })
        .unwrap_err();
    assert!(matches!(e, AdminError::UnknownToken { .. }), "{e}");
}

#[test]
fn a_fresh_engine_loads_the_stored_token_first() {
    // The command line's engine is built empty for each command.
    let store = store();
    Tokens::new(&store, &engine(&[service("bank")]))
        .enroll_totp(NOW, "bank", "ana")
        .unwrap();
    let fresh = engine(&[service("bank")]);
    let st = Tokens::new(&store, &fresh)
        .change(NOW, "bank", "ana", |e, now, id, batch| {
            e.force(now, id, Force::Blocked, batch)
        })
        .unwrap();
    assert_eq!(st.state, TokenState::Blocked);
    let stored = stored_token(&store, "bank", "ana").unwrap();
    assert_eq!(stored.state.map(|s| s.state), Some(TokenState::Blocked));
}

#[test]
fn nothing_is_shown_that_was_not_written() {
    let faulty = Arc::new(FaultyKv::new(Arc::new(MemoryKv::new())));
    let store = store_on(faulty.clone());
    let running = engine(&[service("bank")]);
    let tokens = Tokens::new(&store, &running);
    faulty.set_failing(true);
    let e = tokens.enroll(NOW, "bank", "ana").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    // Not written, so not in the engine either; and refused up front while the database
    // still cannot write.
    assert!(running.status(NOW, "bank", "ana").is_err());
    let e = tokens.enroll(NOW, "bank", "ana").unwrap_err();
    assert!(matches!(e, AdminError::StorageUnavailable), "{e}");
    // Once it can (the next probe, a second later), changes go through again.
    faulty.set_failing(false);
    let later = NOW + 1_000;
    tokens.enroll(later, "bank", "ana").unwrap();
    assert_eq!(
        running.status(later, "bank", "ana").unwrap().state,
        TokenState::Pending
    );
}
