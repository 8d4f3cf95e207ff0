//! Services and authkeys changed through one server apply on the others.

use super::*;

#[test]
fn authkeys_and_services_changed_through_one_server_apply_on_the_others() {
    let inst = Instance::new(2, "database");
    let admin: Value =
        serde_json::from_str(&inst.admin(0, &["--json", "authkey", "create", "root", "--admin"]))
            .unwrap();
    let root = admin["secret"].as_str().unwrap().to_owned();
    let s = inst.serve_all();
    // A service created through server 0 is used through server 1.
    let endpoints: Vec<String> = inst.udp.iter().map(ToString::to_string).collect();
    let (code, v) = http(
        s[0].http,
        "POST",
        "/v1/services",
        &root,
        &json!({ "name": "bank", "window": 600, "endpoints": endpoints }).to_string(),
    );
    assert_eq!(code, 201, "{v}");
    let t = Instant::now();
    loop {
        let (code, v) = http(s[1].http, "POST", ALICE, &root, "{}");
        if code == 201 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{code} {v}");
        std::thread::sleep(Duration::from_millis(5));
    }
    // An authkey created through server 1 works at server 0; revoked through server 0, it is
    // refused at server 1.
    let (code, v) = http(
        s[1].http,
        "POST",
        "/v1/authkeys",
        &root,
        r#"{"name":"reader","admin":false,"service_mask":"bank","user_mask":".*"}"#,
    );
    assert_eq!(code, 201, "{v}");
    let reader = v["secret"].as_str().unwrap().to_owned();
    let until = |server: &Server, want: u16| {
        let t = Instant::now();
        loop {
            let (code, _) = http(server.http, "GET", ALICE, &reader, "");
            if code == want {
                return;
            }
            assert!(t.elapsed() < Duration::from_secs(5), "{code}, not {want}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    until(&s[0], 200);
    let (code, v) = http(s[0].http, "DELETE", "/v1/authkeys/reader", &root, "");
    assert!(code == 200 || code == 204, "{code} {v}");
    until(&s[1], 401);
}
