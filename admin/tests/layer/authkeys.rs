//! Authkeys: secrets shown once and stored as hashes, names and masks checked with the whole
//! list, listings without secrets, revocation effective at once.

use zoftoken_admin::{
    AdminError, ErrorKind, FileDocuments, NewAuthkey, Registry, SecretFormat, AUTHKEY_NAME_MAX,
    SECRET_HASH_PREFIX,
};
use zoftoken_engine::Access;
use zoftoken_storage::AuthkeyDoc;

use super::{engine, store};

#[test]
fn a_created_key_is_shown_once_stored_as_a_hash_and_works_at_once() {
    let store = store();
    let running = engine(&[]);
    let reg = Registry::database(store.clone()).with_running_engine(running.clone());
    let key = reg
        .authkey_create(NewAuthkey {
            admin: true,
            ..NewAuthkey::new("api")
        })
        .unwrap();
    assert!(key.stored);
    assert_eq!(key.secret.len(), 64);
    assert!(!format!("{key:?}").contains(key.secret.as_str()));
    let stored = store.authkeys().unwrap();
    assert_eq!(stored[0].secret, None);
    assert_eq!(
        stored[0].secret_hash.as_deref(),
        Some(key.secret_hash.as_str())
    );
    assert!(matches!(
        running.authorize_unrestricted(&key.secret),
        Access::Allowed(_)
    ));
    let listed = reg.authkeys().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].secret_hash_prefix.as_deref(),
        key.secret_hash.get(..SECRET_HASH_PREFIX)
    );
    let b64 = reg
        .authkey_create(NewAuthkey {
            format: SecretFormat::Base64,
            ..NewAuthkey::new("ro")
        })
        .unwrap();
    assert_eq!(b64.secret.len(), 43);
    let e = reg.authkey_create(NewAuthkey::new("ro")).unwrap_err();
    assert!(
        matches!(&e, AdminError::AuthkeyExists(n) if n == "ro"),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::Refused);
    // Revoked: gone from the database and from the running engine.
    reg.authkey_revoke("api").unwrap();
    assert!(matches!(
        running.authorize_unrestricted(&key.secret),
        Access::Unknown
    ));
    let e = reg.authkey_revoke("api").unwrap_err();
    assert!(
        matches!(&e, AdminError::UnknownAuthkey(n) if n == "api"),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[test]
fn names_and_masks_are_checked_the_same_for_every_caller() {
    let reg = Registry::database(store());
    // The length limit holds for the command line too (it once stored longer names).
    for name in [String::new(), "k".repeat(AUTHKEY_NAME_MAX + 1)] {
        let e = reg.authkey_create(NewAuthkey::new(&name)).unwrap_err();
        assert!(matches!(e, AdminError::InvalidAuthkeyName), "{e}");
        assert_eq!(e.kind(), ErrorKind::Invalid);
    }
    reg.authkey_create(NewAuthkey::new(&"k".repeat(AUTHKEY_NAME_MAX)))
        .unwrap();
    let e = reg.authkey_create(NewAuthkey::new("k\tx")).unwrap_err();
    let AdminError::InvalidAuthkey(problems) = &e else {
        panic!("{e}");
    };
    assert_eq!(problems.iter().next().unwrap().path, "authkey.name");
    let padded = NewAuthkey {
        service_mask: ".* ".into(),
        ..NewAuthkey::new("pad")
    };
    let e = reg.authkey_create(padded).unwrap_err();
    assert!(e.to_string().contains("whitespace"), "{e}");
    let e = reg
        .authkey_create(NewAuthkey {
            user_mask: "(".into(),
            ..NewAuthkey::new("x")
        })
        .unwrap_err();
    assert!(
        e.to_string().contains("authkey.user_mask"),
        "paths name the new key: {e}"
    );
    assert_eq!(reg.authkeys().unwrap().len(), 1);
}

#[test]
fn with_a_configuration_file_a_key_is_made_for_the_file_and_nothing_is_stored() {
    let docs = FileDocuments {
        services: Vec::new(),
        authkeys: vec![AuthkeyDoc::new("web", "web-secret", false, "bank", ".*")],
    };
    let reg = Registry::file(docs);
    let key = reg.authkey_create(NewAuthkey::new("api")).unwrap();
    assert!(!key.stored);
    assert_eq!(key.secret_hash.len(), 64);
    let e = reg.authkey_create(NewAuthkey::new("web")).unwrap_err();
    assert!(matches!(e, AdminError::AuthkeyExists(_)), "{e}");
    let listed = reg.authkeys().unwrap();
    assert_eq!(listed.len(), 1, "nothing was added");
    assert_eq!(listed[0].secret_hash_prefix.as_ref().unwrap().len(), 8);
    assert!(matches!(
        reg.authkey_revoke("web"),
        Err(AdminError::ConfigSourceFile)
    ));
    // A running server whose keys come from its file makes none: its file is edited.
    let reg = Registry::running_file(engine(&[]));
    assert!(matches!(
        reg.authkey_create(NewAuthkey::new("api")),
        Err(AdminError::ConfigSourceFile)
    ));
    assert!(reg.authkeys().unwrap().is_empty());
}
