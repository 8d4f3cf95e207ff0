//! Codes across servers: one-time codes, TOTP codes, backup codes and offline responses are
//! each accepted once, wrong ones count toward the same three strikes, and a code made or
//! replaced through one server is checked right through another.

use super::*;
use zoftoken_testkit::authenticator::{base32_decode, otpauth_param};

/// The same POST to every server at the same moment; the answers.
fn post_everywhere(s: &[Server], path: &str, body: &str) -> Vec<(u16, Value)> {
    let posts: Vec<_> = s
        .iter()
        .map(|server| {
            let (addr, path, body) = (server.http, path.to_owned(), body.to_owned());
            std::thread::spawn(move || http(addr, "POST", &path, ADMIN_KEY, &body))
        })
        .collect();
    posts.into_iter().map(|t| t.join().unwrap()).collect()
}

fn accepted(answers: &[(u16, Value)]) -> usize {
    assert!(answers.iter().all(|(code, _)| *code == 200), "{answers:?}");
    answers
        .iter()
        .filter(|(_, v)| v["accepted"] == true)
        .count()
}

#[test]
fn a_backup_code_sent_to_two_servers_at_once_is_accepted_once() {
    let inst = Instance::new(2, "file");
    let s = inst.serve_all();
    let _phone = pair_alice(&s[0]);
    until_state(&s[1], "closed");
    let (code, v) = http(
        s[0].http,
        "POST",
        &format!("{ALICE}/backup-codes"),
        ADMIN_KEY,
        "{}",
    );
    assert_eq!(code, 201, "{v}");
    let codes: Vec<String> = serde_json::from_value(v["codes"].clone()).unwrap();
    for code in codes.iter().take(3) {
        let answers = post_everywhere(
            &s,
            &format!("{ALICE}/backup-codes/verify"),
            &json!({ "code": code }).to_string(),
        );
        assert_eq!(accepted(&answers), 1, "{answers:?}");
    }
}

/// Pairs `user` through server 0 and waits until server 1 knows the token.
fn paired_at_both(s: &[Server], user: &str) -> Phone {
    let phone = pair(&s[0], user);
    until_known(&s[1], user);
    phone
}

/// Waits until `s`'s API knows `user`'s paired token.
fn until_known(s: &Server, user: &str) {
    let t = Instant::now();
    while http(s.http, "GET", &token_path(user, ""), ADMIN_KEY, "").0 != 200 {
        assert!(t.elapsed() < Duration::from_secs(5), "{user} never known");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn token_path(user: &str, rest: &str) -> String {
    format!("/v1/services/bank/tokens/{user}{rest}")
}

/// Enrolls `user` with a standard authenticator app through server 0: its secret, digits
/// and period.
fn enroll_totp(s: &[Server], user: &str) -> (Vec<u8>, u8, u32) {
    let (code, v) = http(
        s[0].http,
        "POST",
        &token_path(user, ""),
        ADMIN_KEY,
        r#"{"kind":"totp"}"#,
    );
    assert_eq!(code, 201, "{v}");
    let uri = v["otpauth_uri"].as_str().unwrap();
    until_known(&s[1], user);
    (
        base32_decode(v["secret_base32"].as_str().unwrap()),
        otpauth_param(uri, "digits").parse().unwrap(),
        otpauth_param(uri, "period").parse().unwrap(),
    )
}

fn totp_now(secret: &[u8], digits: u8, period: u32) -> String {
    zoftoken_proto::totp::totp_code(secret, zoftoken_testkit::now_ms() / 1000, period, digits)
}

/// Another code of the same length (each digit moved on by one): wrong.
fn wrong_code(code: &str) -> String {
    code.chars()
        .map(|c| {
            c.to_digit(10)
                .map_or(c, |d| char::from(b'0' + ((d + 1) % 10) as u8))
        })
        .collect()
}

/// A fresh challenge for `user` made through server `i`.
fn challenge(s: &[Server], i: usize, user: &str) -> String {
    let (code, v) = http(
        s[i].http,
        "POST",
        &token_path(user, "/offline/challenge"),
        ADMIN_KEY,
        r#"{"length":8}"#,
    );
    assert_eq!(code, 200, "{v}");
    v["code"].as_str().unwrap().to_owned()
}

/// Sends `code` to both servers at the same moment: exactly one accepts it.
fn accepted_once(s: &[Server], user: &str, code: &str) {
    let answers = post_everywhere(
        s,
        &token_path(user, "/code"),
        &json!({ "code": code }).to_string(),
    );
    assert_eq!(accepted(&answers), 1, "{user}: {answers:?}");
}

#[test]
fn a_one_time_code_of_the_app_or_an_authenticator_sent_to_two_servers_at_once_is_accepted_once() {
    let inst = Instance::new(2, "file");
    let s = inst.serve_all();
    // Codes change once per period: one code for each of several users.
    for user in ["alice", "bob", "carol"] {
        let phone = paired_at_both(&s, user);
        let code = phone
            .token
            .one_time_code(&phone.pin, zoftoken_testkit::now_ms())
            .unwrap();
        accepted_once(&s, user, &code);
    }
    for user in ["dave", "erin", "fred"] {
        let (secret, digits, period) = enroll_totp(&s, user);
        accepted_once(&s, user, &totp_now(&secret, digits, period));
    }
}

#[test]
fn an_offline_response_sent_to_two_servers_at_once_is_accepted_once() {
    let inst = Instance::new(2, "file");
    let s = inst.serve_all();
    let phone = paired_at_both(&s, "alice");
    for round in 0..4 {
        // Made through either server; answered through both at once.
        let code = challenge(&s, round % 2, "alice");
        let response = phone.token.offline_response(&phone.pin, &code).unwrap();
        let answers = post_everywhere(
            &s,
            &token_path("alice", "/offline/response"),
            &json!({ "response": response }).to_string(),
        );
        let accepted: Vec<_> = answers
            .iter()
            .filter(|(code, v)| *code == 200 && v["accepted"] == true)
            .collect();
        assert_eq!(accepted.len(), 1, "{answers:?}");
        // The other finds the challenge used: no challenge, and no failure counted.
        assert!(
            answers
                .iter()
                .any(|(code, v)| *code == 409 && v["error"]["code"] == "no_challenge"),
            "{answers:?}"
        );
    }
    let (_, v) = http(s[1].http, "GET", &token_path("alice", ""), ADMIN_KEY, "");
    assert_eq!(
        (v["state"].as_str(), v["failures"].as_u64()),
        (Some("open"), Some(0)),
        "{v}"
    );
}

/// Sends `wrong` to both servers at once, twice: the four answers must count three
/// failures and then the block, whichever server each reached.
fn two_rounds_of_wrong_answers(s: &[Server], user: &str, path: &str, wrong: &dyn Fn() -> String) {
    let mut left = Vec::new();
    for _ in 0..2 {
        let answers = post_everywhere(s, &token_path(user, path), &wrong());
        for (code, v) in &answers {
            assert_eq!((*code, &v["accepted"]), (200, &json!(false)), "{v}");
            left.push(v["attempts_left"].as_u64().unwrap());
        }
    }
    left.sort_unstable();
    assert_eq!(left, [0, 0, 1, 2], "{user} {path}");
    for server in s {
        let (_, v) = http(server.http, "GET", &token_path(user, ""), ADMIN_KEY, "");
        assert_eq!(
            (v["state"].as_str(), v["failures"].as_u64()),
            (Some("blocked"), Some(3)),
            "{user} at {}: {v}",
            server.http
        );
    }
}

#[test]
fn wrong_codes_and_offline_responses_at_two_servers_at_once_block_at_exactly_three() {
    let inst = Instance::new(2, "file");
    let s = inst.serve_all();
    // One-time codes of the app, made with a wrong PIN.
    let phone = paired_at_both(&s, "alice");
    let wrong_pin = zoftoken_proto::PinVerifier::derive("0000", &phone.token.token_id()).unwrap();
    two_rounds_of_wrong_answers(&s, "alice", "/code", &|| {
        let code = phone
            .token
            .one_time_code(&wrong_pin, zoftoken_testkit::now_ms())
            .unwrap();
        json!({ "code": code }).to_string()
    });
    // Offline responses made with a wrong PIN.
    let phone = paired_at_both(&s, "bob");
    let code = challenge(&s, 0, "bob");
    let wrong_pin = zoftoken_proto::PinVerifier::derive("0000", &phone.token.token_id()).unwrap();
    let response = phone.token.offline_response(&wrong_pin, &code).unwrap();
    two_rounds_of_wrong_answers(&s, "bob", "/offline/response", &|| {
        json!({ "response": response }).to_string()
    });
    // Codes of a standard authenticator app.
    let (secret, digits, period) = enroll_totp(&s, "carol");
    two_rounds_of_wrong_answers(&s, "carol", "/code", &|| {
        json!({ "code": wrong_code(&totp_now(&secret, digits, period)) }).to_string()
    });
}

/// Server 1 reads the change feed only once a second, so its memory of a token is a moment
/// old when a request reaches it right after server 0 changed the token: a challenge or a set
/// of backup codes that server 0 just replaced is still the old one there. The check must
/// follow the database, not that memory.
#[test]
fn a_challenge_or_backup_codes_replaced_through_one_server_are_checked_right_at_another() {
    let inst = Instance::new(2, "file");
    inst.follow_slowly(1);
    let s = inst.serve_all();
    let phone = paired_at_both(&s, "alice");
    for _ in 0..3 {
        // Server 1 has read the first challenge; the second replaces it.
        let _ = challenge(&s, 0, "alice");
        std::thread::sleep(Duration::from_millis(1_200));
        let code = challenge(&s, 0, "alice");
        let response = phone.token.offline_response(&phone.pin, &code).unwrap();
        let (status, v) = http(
            s[1].http,
            "POST",
            &token_path("alice", "/offline/response"),
            ADMIN_KEY,
            &json!({ "response": response }).to_string(),
        );
        assert_eq!((status, &v["accepted"]), (200, &json!(true)), "{v}");
    }
    let codes = |i: usize| -> Vec<String> {
        let (status, v) = http(
            s[i].http,
            "POST",
            &token_path("alice", "/backup-codes"),
            ADMIN_KEY,
            "{}",
        );
        assert_eq!(status, 201, "{v}");
        serde_json::from_value(v["codes"].clone()).unwrap()
    };
    let verify = |i: usize, code: &str| -> Value {
        let (status, v) = http(
            s[i].http,
            "POST",
            &token_path("alice", "/backup-codes/verify"),
            ADMIN_KEY,
            &json!({ "code": code }).to_string(),
        );
        assert_eq!(status, 200, "{v}");
        v
    };
    let old = codes(0);
    std::thread::sleep(Duration::from_millis(1_200));
    let new = codes(0);
    // A code of the replaced set is a wrong code, even where it is still in memory.
    let v = verify(1, &old[0]);
    assert_eq!(
        (&v["accepted"], &v["attempts_left"]),
        (&json!(false), &json!(2)),
        "{v}"
    );
    let v = verify(1, &new[0]);
    assert_eq!(v["accepted"], true, "{v}");
}
