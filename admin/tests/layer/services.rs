//! Services: listings redacted, changes validated, written, then run by the engine.

use zoftoken_admin::{AdminError, ErrorKind, FileDocuments, Registry, ServiceChanges, Tokens};
use zoftoken_storage::REDACTED;

use super::{engine, hooked, service, store};

#[test]
fn created_services_are_listed_redacted_and_run_by_the_running_engine() {
    let store = store();
    let running = engine(&[]);
    let reg = Registry::database(store.clone()).with_running_engine(running.clone());
    let created = reg.service_create(hooked("shop", "hook-secret")).unwrap();
    assert_eq!(created.webhook.as_ref().unwrap().secret, REDACTED);
    assert_eq!(
        reg.services().unwrap()[0].webhook.as_ref().unwrap().secret,
        REDACTED
    );
    assert_eq!(reg.service("shop").unwrap().name, "shop");
    // Stored with its secret, and running at once.
    assert_eq!(
        store.services().unwrap()[0]
            .webhook
            .as_ref()
            .unwrap()
            .secret,
        "hook-secret"
    );
    assert!(running.service_index_of("shop").is_some());
    let e = reg.service_create(service("shop")).unwrap_err();
    assert!(
        matches!(&e, AdminError::ServiceExists(n) if n == "shop"),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::Refused);
    let e = reg.service("nope").unwrap_err();
    assert!(matches!(&e, AdminError::UnknownService(n) if n == "nope"));
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[test]
fn invalid_services_are_refused_with_every_problem_and_nothing_is_written() {
    let reg = Registry::database(store());
    let mut bad = service("bad");
    bad.window = 999_999;
    bad.endpoints.clear();
    let AdminError::InvalidService(problems) = reg.service_create(bad).unwrap_err() else {
        panic!("not InvalidService");
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["service.endpoints", "service.window"]);
    assert!(reg.services().unwrap().is_empty());
    let e = reg
        .service_create(service("a\nb"))
        .expect_err("control characters");
    assert_eq!(e.kind(), ErrorKind::Invalid);
    assert!(e.to_string().contains("control characters"), "{e}");
}

#[test]
fn redacted_secrets_keep_the_stored_ones_in_every_kind_of_change() {
    let store = store();
    let reg = Registry::database(store.clone());
    // `<redacted>` with nothing stored stands for nothing.
    let e = reg.service_create(hooked("shop", REDACTED)).unwrap_err();
    assert!(matches!(e, AdminError::NothingRedacted), "{e}");
    reg.service_create(hooked("shop", "s1")).unwrap();
    // A document read back (redacted) and written again keeps the secret.
    let mut doc = reg.service("shop").unwrap();
    doc.window = 60;
    reg.service_replace("shop", doc).unwrap();
    // So does a field edit that passes `<redacted>` (the command line once stored it as the
    // secret itself).
    let changes = ServiceChanges {
        webhook_secret: Some(REDACTED.into()),
        window: Some(90),
        ..ServiceChanges::default()
    };
    reg.service_edit("shop", changes).unwrap();
    let stored = &store.services().unwrap()[0];
    assert_eq!(
        (
            stored.window,
            stored.webhook.as_ref().unwrap().secret.as_str()
        ),
        (90, "s1")
    );
    // A new webhook from field changes cannot be `<redacted>` either.
    let e = reg
        .service_create_with(
            "other",
            ServiceChanges {
                endpoints: Some(vec!["127.0.0.1:1".into()]),
                webhook_url: Some("https://h.example/x".into()),
                webhook_secret: Some(REDACTED.into()),
                ..ServiceChanges::default()
            },
        )
        .unwrap_err();
    assert!(matches!(e, AdminError::NothingRedacted), "{e}");
}

#[test]
fn field_changes_need_a_webhook_for_webhook_settings() {
    let reg = Registry::database(store());
    let e = reg
        .service_create_with(
            "shop",
            ServiceChanges {
                webhook_url: Some("https://h.example/x".into()),
                ..ServiceChanges::default()
            },
        )
        .unwrap_err();
    assert!(matches!(e, AdminError::WebhookNeedsSecret), "{e}");
    let created = reg
        .service_create_with(
            "shop",
            ServiceChanges {
                endpoints: Some(vec!["127.0.0.1:1".into()]),
                window: Some(300),
                ..ServiceChanges::default()
            },
        )
        .unwrap();
    assert_eq!((created.window, created.otp.length), (300, 6));
    let e = reg
        .service_edit(
            "shop",
            ServiceChanges {
                webhook_events: Some(vec!["opened".into()]),
                ..ServiceChanges::default()
            },
        )
        .unwrap_err();
    assert!(matches!(e, AdminError::NoWebhook), "{e}");
    let e = reg
        .service_edit("nope", ServiceChanges::default())
        .unwrap_err();
    assert!(matches!(&e, AdminError::UnknownService(n) if n == "nope"));
    let e = reg.service_replace("shop", service("other")).unwrap_err();
    assert!(matches!(e, AdminError::ServiceNameMismatch { .. }), "{e}");
}

#[test]
fn ca_files_come_from_the_operator_only() {
    let store = store();
    let mut doc = hooked("shop", "s");
    doc.webhook.as_mut().unwrap().ca_file = Some("/etc/ssl/extra.pem".into());
    let remote = Registry::database(store.clone()).for_remote_callers();
    let e = remote.service_create(doc.clone()).unwrap_err();
    assert!(matches!(e, AdminError::CaFileRefused), "{e}");
    assert_eq!(e.kind(), ErrorKind::Invalid);
    // The operator may name one; a remote caller then keeps it, but may not change it.
    Registry::database(store.clone())
        .service_create(doc)
        .unwrap();
    let mut read = remote.service("shop").unwrap();
    read.window = 30;
    remote.service_replace("shop", read.clone()).unwrap();
    read.webhook.as_mut().unwrap().ca_file = Some("/etc/passwd".into());
    let e = remote.service_replace("shop", read).unwrap_err();
    assert!(matches!(e, AdminError::CaFileRefused), "{e}");
    assert_eq!(
        store.services().unwrap()[0]
            .webhook
            .as_ref()
            .unwrap()
            .ca_file
            .as_deref(),
        Some("/etc/ssl/extra.pem")
    );
}

#[test]
fn a_service_with_tokens_is_deleted_only_when_forced_and_leaves_the_engine() {
    let store = store();
    let running = engine(&[service("shop")]);
    let reg = Registry::database(store.clone()).with_running_engine(running.clone());
    reg.service_create(service("shop")).unwrap();
    Tokens::new(&store, &running)
        .enroll(1_000, "shop", "ana")
        .unwrap();
    let e = reg.service_delete("shop", false).unwrap_err();
    assert!(
        matches!(&e, AdminError::ServiceHasTokens { name, tokens: 1 } if name == "shop"),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::Refused);
    assert_eq!(reg.service_delete("shop", true).unwrap(), 1);
    assert!(running.service_index_of("shop").is_none());
    // Its token stays stored, but an unknown service is unknown, tokens or not (the command
    // line once answered that it has tokens).
    let e = reg.service_delete("shop", false).unwrap_err();
    assert!(
        matches!(&e, AdminError::UnknownService(n) if n == "shop"),
        "{e}"
    );
}

#[test]
fn a_configuration_file_is_read_only() {
    let docs = FileDocuments {
        services: vec![hooked("bank", "file-secret")],
        authkeys: Vec::new(),
    };
    let reg = Registry::file(docs);
    assert!(!reg.in_database());
    assert_eq!(
        reg.services().unwrap()[0].webhook.as_ref().unwrap().secret,
        REDACTED
    );
    for e in [
        reg.service_create(service("x")).unwrap_err(),
        reg.service_edit("bank", ServiceChanges::default())
            .unwrap_err(),
        reg.service_replace("bank", service("bank")).unwrap_err(),
    ] {
        assert!(matches!(e, AdminError::ConfigSourceFile), "{e}");
        assert_eq!(e.kind(), ErrorKind::Refused);
    }
    assert!(matches!(
        reg.service_delete("bank", true),
        Err(AdminError::ConfigSourceFile)
    ));
    // A running server's file configuration is read from its engine.
    let reg = Registry::running_file(engine(&[service("bank"), service("shop")]));
    let names: Vec<String> = reg
        .services()
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["bank", "shop"]);
    assert!(matches!(
        reg.service_create(service("x")),
        Err(AdminError::ConfigSourceFile)
    ));
}
