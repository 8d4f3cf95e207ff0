//! The `zoftoken` binary end to end: configuration errors, the master key (generated, missing,
//! wrong), every admin command in both configuration modes, export/import, and `serve` with a
//! clean shutdown and the database lock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;
use common::wait_for;

use std::io::BufReader;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new(config: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        Env { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        common::zoftoken(self.dir.path(), args)
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?}: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
}

fn code_and_err(o: &Output) -> (i32, String) {
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const FILE_CONFIG: &str = "
data_dir: data
services:
  - name: bank
    endpoints: [\"127.0.0.1:7878\"]
    webhook: { url: \"https://hooks.example/zt\", secret: \"hook-secret-123\" }
";

#[test]
fn invalid_configuration_is_reported_with_paths_and_exit_code_2() {
    let e = Env::new(
        "services:\n  - name: bank\n    window: 100000\n    endpoints: []\nauthkeys:\n  - name: k\n    user_mask: \"(\"\n    secret: x\n",
    );
    let (code, err) = code_and_err(&e.run(&["token", "list"]));
    assert_eq!(code, 2, "{err}");
    for needle in [
        "services[0].window",
        "services[0].endpoints",
        "authkeys[0].user_mask",
    ] {
        assert!(err.contains(needle), "{needle} missing in: {err}");
    }
    let e = Env::new("services:\n  - name: bank\n    windw: 5\n");
    let (code, err) = code_and_err(&e.run(&["check-config"]));
    assert_eq!(code, 2);
    assert!(err.contains("windw"), "{err}");
    assert!(
        !e.path("data").exists(),
        "nothing may be created for an invalid config"
    );
}

#[test]
fn tokens_enroll_list_show_delete_and_survive_export_import() {
    let e = Env::new(FILE_CONFIG);
    let o = e.run(&[
        "token",
        "enroll",
        "--service",
        "bank",
        "--user",
        "alice",
        "--json",
    ]);
    let (code, err) = code_and_err(&o);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("generated a new master key"), "{err}");
    let key = std::fs::read_to_string(e.path("data/master.key")).unwrap();
    assert_eq!(key.trim().len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(e.path("data/master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir = std::fs::metadata(e.path("data"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir & 0o777, 0o700, "the data directory is private");
    }
    let t: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(t["deeplink"].as_str().unwrap().starts_with("zoftoken://"));
    assert!(!t["manual_code"].as_str().unwrap().is_empty());
    e.ok(&["token", "enroll", "--service", "bank", "--user", "bob"]);
    let list = e.json(&["token", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["state"], "pending");
    let show = e.json(&["token", "show", "--service", "bank", "--user", "alice"]);
    assert_eq!(show["username"], "alice");
    assert!(show["enrollment_expires_ms"].as_u64().is_some());
    let (code, _) =
        code_and_err(&e.run(&["token", "show", "--service", "bank", "--user", "nobody"]));
    assert_eq!(code, 4);
    let (code, err) =
        code_and_err(&e.run(&["token", "enroll", "--service", "nope", "--user", "x"]));
    assert_eq!(code, 4, "{err}");
    assert!(e.ok(&["db", "check"]).contains("database OK"));

    // Export: secrets stay sealed (the webhook secret is not in clear either).
    e.ok(&["db", "export", "-o", "dump.jsonl"]);
    let dump = std::fs::read_to_string(e.path("dump.jsonl")).unwrap();
    assert!(dump.lines().count() > 4);
    assert!(!dump.contains(&hex_of("hook-secret-123")));
    // Import into a fresh data directory with the same key.
    std::fs::create_dir_all(e.path("copy")).unwrap();
    std::fs::copy(e.path("data/master.key"), e.path("copy.key")).unwrap();
    let copy = |args: &[&str]| {
        let mut c = e.cmd(args);
        c.env("ZOFTOKEN_DATA_DIR", e.path("copy"))
            .env("ZOFTOKEN_MASTER_KEY_FILE", e.path("copy.key"));
        c.output().unwrap()
    };
    let o = copy(&["db", "import", "-i", "dump.jsonl"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = copy(&["token", "list", "--json"]);
    let copied: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(copied, list);
    // Importing twice is refused.
    assert_eq!(
        copy(&["db", "import", "-i", "dump.jsonl"]).status.code(),
        Some(1)
    );

    e.ok(&["token", "delete", "--service", "bank", "--user", "alice"]);
    assert_eq!(e.json(&["token", "list"]).as_array().unwrap().len(), 1);
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_missing_or_wrong_master_key_is_a_clear_error() {
    let e = Env::new(FILE_CONFIG);
    e.ok(&["token", "enroll", "--service", "bank", "--user", "alice"]);
    std::fs::rename(e.path("data/master.key"), e.path("saved.key")).unwrap();
    let (code, err) = code_and_err(&e.run(&["token", "list"]));
    assert_ne!(code, 0);
    assert!(
        err.contains("master key missing") && err.contains("needs the key"),
        "{err}"
    );
    assert!(
        !e.path("data/master.key").exists(),
        "no new key over an existing database"
    );
    let wrong = "11".repeat(32);
    let o = e
        .cmd(&["token", "list"])
        .env("ZOFTOKEN_MASTER_KEY", &wrong)
        .output()
        .unwrap();
    let (code, err) = code_and_err(&o);
    assert_eq!(code, 1);
    assert!(err.contains("does not match"), "{err}");
    let o = e
        .cmd(&["token", "list"])
        .env("ZOFTOKEN_MASTER_KEY", "short")
        .output()
        .unwrap();
    assert!(code_and_err(&o).1.contains("64 hexadecimal digits"));
    let right = std::fs::read_to_string(e.path("saved.key")).unwrap();
    let o = e
        .cmd(&["token", "list"])
        .env("ZOFTOKEN_MASTER_KEY", right.trim())
        .output()
        .unwrap();
    assert!(o.status.success());
}

#[test]
fn database_mode_services_and_authkeys() {
    let e = Env::new("config_source: database\ndata_dir: data\n");
    e.ok(&[
        "service",
        "create",
        "shop",
        "--endpoint",
        "shop.example:7878",
        "--window",
        "300",
    ]);
    let (code, err) = code_and_err(&e.run(&["service", "create", "shop", "--endpoint", "a:1"]));
    assert_eq!(code, 2, "{err}");
    let (code, err) = code_and_err(&e.run(&["service", "create", "bad", "--window", "999999"]));
    assert_eq!(code, 2);
    assert!(
        err.contains("service.window") && err.contains("service.endpoints"),
        "{err}"
    );
    e.ok(&[
        "service",
        "edit",
        "shop",
        "--webhook-url",
        "https://h.example/x",
        "--webhook-secret",
        "s3cret-value",
    ]);
    let list = e.json(&["service", "list"]);
    assert_eq!(list[0]["window"], 300);
    assert_eq!(list[0]["webhook"]["secret"], "<redacted>");
    assert!(!e.ok(&["service", "list"]).contains("s3cret-value"));
    e.ok(&["token", "enroll", "--service", "shop", "--user", "u1"]);
    let (code, _) = code_and_err(&e.run(&["service", "delete", "shop"]));
    assert_eq!(code, 2, "tokens exist");

    let created = e.json(&[
        "authkey",
        "create",
        "api",
        "--admin",
        "--service-mask",
        "shop",
    ]);
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 64);
    assert_eq!(created["stored"], true);
    let listed = e.ok(&["authkey", "list", "--json"]);
    assert!(!listed.contains(&secret));
    assert!(listed.contains("\"api\""));
    // The database holds the hash only.
    e.ok(&["db", "export", "-o", "d.jsonl"]);
    let dump = std::fs::read_to_string(e.path("d.jsonl")).unwrap();
    assert!(!dump.contains(&hex_of(&secret)) && !dump.contains(&secret));
    let b64 = e.json(&["authkey", "create", "ro", "--format", "base64"]);
    assert_eq!(b64["secret"].as_str().unwrap().len(), 43);
    e.ok(&["authkey", "revoke", "ro"]);
    assert_eq!(e.run(&["authkey", "revoke", "ro"]).status.code(), Some(4));
    e.ok(&["token", "delete", "--service", "shop", "--user", "u1"]);
    e.ok(&["service", "delete", "shop"]);
    assert_eq!(e.json(&["service", "list"]).as_array().unwrap().len(), 0);
}

#[test]
fn file_mode_refuses_database_edits_and_prints_an_authkey_entry() {
    let e = Env::new(FILE_CONFIG);
    let (code, err) = code_and_err(&e.run(&["service", "create", "x", "--endpoint", "a:1"]));
    assert_eq!(code, 2);
    assert!(err.contains("config_source: file"), "{err}");
    let out = e.ok(&["authkey", "create", "api", "--admin"]);
    assert!(
        out.contains("secret_hash:") && out.contains("Nothing was stored"),
        "{out}"
    );
    assert!(e.ok(&["authkey", "list"]).contains("no authkeys"));
    // Nothing was stored, and nothing was created either: no data directory, no master key.
    assert!(
        !e.path("data").exists(),
        "authkey create/list touched the disk"
    );
    // A mask with surrounding whitespace is refused (it would not be the mask it reads as).
    let (code, err) = code_and_err(&e.run(&[
        "authkey",
        "create",
        "pad",
        "--admin",
        "--service-mask",
        ".* ",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("whitespace"), "{err}");
    // The printed entry pastes into the file as a working key.
    let mut entry = String::from(FILE_CONFIG);
    entry.push_str("authkeys:\n");
    entry.push_str(out.split("configuration file:\n\n").nth(1).unwrap());
    std::fs::write(e.path("config.yaml"), entry).unwrap();
    assert!(e.ok(&["authkey", "list"]).contains("api  admin=true"));
    assert!(!e.path("data").exists());
}

#[test]
fn names_with_control_characters_are_refused() {
    let e = Env::new("data_dir: data\nconfig_source: database\n");
    let (code, err) = code_and_err(&e.run(&["service", "create", "a\nb", "--endpoint", "a:1"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("control characters"), "{err}");
    e.ok(&["service", "create", "bank", "--endpoint", "127.0.0.1:7878"]);
    let (code, err) =
        code_and_err(&e.run(&["token", "enroll", "--service", "bank", "--user", "alice\n"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("control characters"), "{err}");
    let (code, err) = code_and_err(&e.run(&["authkey", "create", "k\tx"]));
    assert_eq!(code, 2, "{err}");
    let (code, err) = code_and_err(&e.run(&[
        "authkey",
        "create",
        "k",
        "--admin",
        "--user-mask",
        " (?s).*",
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("whitespace"), "{err}");
}

fn signal(pid: u32, sig: &str) {
    let s = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(s.success());
}

#[test]
fn serve_loads_locks_the_database_and_stops_cleanly() {
    let e = Env::new(FILE_CONFIG);
    e.ok(&["token", "enroll", "--service", "bank", "--user", "alice"]);
    let mut child = e
        .cmd(&["serve"])
        .env("ZOFTOKEN_UDP_LISTEN", "127.0.0.1:0")
        .env("ZOFTOKEN_HTTP_LISTEN", "127.0.0.1:0")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let log = wait_for(&mut err, "serving");
    assert!(log.contains("1 pending enrollments"), "{log}");
    // The admin commands see the lock.
    let (code, msg) = code_and_err(&e.run(&["token", "list"]));
    assert_eq!(code, 3, "{msg}");
    assert!(msg.contains("server is running"), "{msg}");
    signal(child.id(), "-TERM");
    wait_for(&mut err, "stopped");
    assert!(child.wait().unwrap().success());
    assert!(e.ok(&["db", "check"]).contains("database OK"));
}
