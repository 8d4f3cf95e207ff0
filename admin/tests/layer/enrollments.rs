//! Mass enrollment: one commit for the batch, an answer per user in order, users who have a
//! token left alone on request, the whole call refused only for what concerns all of it.

use std::sync::Arc;

use zoftoken_admin::{
    stored_token, stored_tokens, AdminError, BatchEnrolled, Existing, Tokens, MAX_BATCH_ENROLLMENT,
};
use zoftoken_engine::{EngineError, EventKind, TokenKind, TokenState};
use zoftoken_proto::TokenId;
use zoftoken_storage::MemoryKv;
use zoftoken_storage_conformance::FaultyKv;

use super::{engine, hooked, service, store, store_on};

const NOW: u64 = 1_800_000_000_000;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Each answer's kind, for comparing a batch's answers at a glance.
fn kinds(answers: &[BatchEnrolled]) -> Vec<String> {
    answers
        .iter()
        .map(|a| match a {
            BatchEnrolled::Enrolled(_) => "enrolled".to_owned(),
            BatchEnrolled::Skipped(e) => format!("skipped {}", e.name()),
            BatchEnrolled::Failed(AdminError::Engine(EngineError::Invalid(why))) => {
                format!("invalid: {why}")
            }
            BatchEnrolled::Failed(e) => format!("failed: {e}"),
            _ => "other".to_owned(),
        })
        .collect()
}

#[test]
fn a_batch_is_one_commit_with_an_answer_per_user_in_order() {
    let kv = Arc::new(FaultyKv::new(Arc::new(MemoryKv::new())));
    let store = store_on(kv.clone());
    let running = engine(&[service("bank")]);
    let tokens = Tokens::new(&store, &running);
    let before = kv.writes();
    let answers = tokens
        .enroll_batch(
            NOW,
            "bank",
            &names(&["ana", "bad\nname", "", "ana", "bob"]),
            false,
        )
        .unwrap();
    assert_eq!(
        kinds(&answers),
        [
            "enrolled",
            "invalid: username must not contain control characters",
            "invalid: username must be 1 to 1024 bytes",
            "invalid: username listed twice in the batch",
            "enrolled",
        ]
    );
    assert_eq!(kv.writes() - before, 1, "one group commit");
    for (answer, user) in [(&answers[0], "ana"), (&answers[4], "bob")] {
        let BatchEnrolled::Enrolled(ticket) = answer else {
            panic!("{answer:?}")
        };
        assert!(ticket.deeplink.starts_with("zoftoken://"));
        let stored = stored_token(&store, "bank", user).unwrap();
        assert_eq!(stored.token_id, ticket.token_id);
        assert_eq!(stored.enrollment_expires_ms, Some(ticket.expires_ms));
    }
    assert_eq!(stored_tokens(&store, None).unwrap().len(), 2);
}

#[test]
fn a_batch_tells_the_webhook_of_each_user_enrolled() {
    let store = store_on(Arc::new(MemoryKv::new()));
    let running = engine(&[hooked("bank", "whsec-batch")]);
    let tokens = Tokens::new(&store, &running);
    tokens
        .enroll_batch(NOW, "bank", &names(&["ana", "bad\nname", "bob"]), false)
        .unwrap();
    let events: Vec<(EventKind, TokenId, String)> = store
        .outbox(0, 100)
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.token_id, e.service))
        .collect();
    let enrolled = |user| {
        (
            EventKind::Enrolled,
            TokenId::derive("bank", user),
            "bank".into(),
        )
    };
    assert_eq!(events, [enrolled("ana"), enrolled("bob")]);
}

#[test]
fn if_absent_leaves_paired_tokens_and_usable_enrollments_alone() {
    let store = store();
    let running = engine(&[service("bank")]);
    let tokens = Tokens::new(&store, &running);
    let pending = tokens.enroll(NOW, "bank", "ana").unwrap();
    tokens.enroll_totp(NOW, "bank", "tom").unwrap();
    let users = names(&["ana", "tom", "new"]);
    let answers = tokens.enroll_batch(NOW, "bank", &users, true).unwrap();
    assert_eq!(
        kinds(&answers),
        ["skipped pending", "skipped paired", "enrolled"]
    );
    // Left as they were: ana's deeplink still the one handed out, tom's token still usable.
    let ana = stored_token(&store, "bank", "ana").unwrap();
    assert_eq!(ana.enrollment_expires_ms, Some(pending.expires_ms));
    let tom = running
        .status(NOW, "bank", "tom")
        .map(|s| (s.kind, s.state))
        .unwrap();
    assert_eq!(tom, (TokenKind::Totp, TokenState::Closed));
    // An enrollment whose time ran out is no longer a reason to skip.
    let later = pending.expires_ms + 1;
    let answers = tokens
        .enroll_batch(later, "bank", &names(&["ana"]), true)
        .unwrap();
    assert_eq!(kinds(&answers), ["enrolled"]);
    // Without the flag, enrolling again replaces (the documented rule).
    let answers = tokens
        .enroll_batch(later, "bank", &names(&["tom"]), false)
        .unwrap();
    assert_eq!(kinds(&answers), ["enrolled"]);
    assert_eq!(
        running.status(later, "bank", "tom").unwrap().state,
        TokenState::Pending
    );
}

#[test]
fn if_absent_sees_stored_tokens_a_fresh_engine_has_not_loaded() {
    // The command line's engine is built empty for each command.
    let store = store();
    Tokens::new(&store, &engine(&[service("bank")]))
        .enroll_totp(NOW, "bank", "tom")
        .unwrap();
    let fresh = engine(&[service("bank")]);
    let answers = Tokens::new(&store, &fresh)
        .enroll_batch(NOW, "bank", &names(&["tom", "ana"]), true)
        .unwrap();
    assert_eq!(kinds(&answers), ["skipped paired", "enrolled"]);
    assert!(matches!(
        answers[0],
        BatchEnrolled::Skipped(Existing::Paired)
    ));
}

#[test]
fn the_whole_batch_is_refused_only_for_what_concerns_all_of_it() {
    let kv = Arc::new(FaultyKv::new(Arc::new(MemoryKv::new())));
    let store = store_on(kv.clone());
    let running = engine(&[service("bank")]);
    let tokens = Tokens::new(&store, &running);
    let e = tokens
        .enroll_batch(NOW, "nope", &names(&["ana"]), false)
        .unwrap_err();
    assert!(
        matches!(&e, AdminError::UnknownService(s) if s == "nope"),
        "{e}"
    );
    let many: Vec<String> = (0..=MAX_BATCH_ENROLLMENT)
        .map(|i| format!("u{i}"))
        .collect();
    let e = tokens.enroll_batch(NOW, "bank", &many, false).unwrap_err();
    assert!(
        matches!(e, AdminError::Engine(EngineError::Invalid(_))),
        "{e}"
    );
    kv.set_failing(true);
    let e = tokens
        .enroll_batch(NOW, "bank", &names(&["ana"]), false)
        .unwrap_err();
    assert!(
        matches!(e, AdminError::StorageUnavailable | AdminError::Store(_)),
        "{e}"
    );
    kv.set_failing(false);
    assert!(
        stored_tokens(&store, None).unwrap().is_empty(),
        "nothing written"
    );
    assert!(matches!(
        running.status(NOW, "bank", "ana"),
        Err(EngineError::UnknownToken)
    ));
}
