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

    /// As [`Env::ok`], with environment variables set; the standard output's bytes.
    fn ok_with(&self, vars: &[(&str, &str)], args: &[&str]) -> Vec<u8> {
        let o = self.cmd(args).envs(vars.iter().copied()).output().unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
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

/// `c` run under umask 022 (the usual default, which leaves new files 0644), whatever the
/// test's own umask.
fn under_umask_022(c: &Command) -> Command {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("umask 022 && exec \"$0\" \"$@\"")
        .arg(c.get_program())
        .args(c.get_args());
    if let Some(d) = c.get_current_dir() {
        sh.current_dir(d);
    }
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh
}

#[cfg(unix)]
fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[cfg(unix)]
#[test]
fn database_files_exports_and_the_data_directory_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let e = Env::new(FILE_CONFIG);
    // A data directory made beforehand by hand, open to everyone for reading.
    std::fs::create_dir(e.path("data")).unwrap();
    std::fs::set_permissions(e.path("data"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |args: &[&str]| {
        let o = under_umask_022(&e.cmd(args)).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let err = run(&["token", "enroll", "--service", "bank", "--user", "alice"]);
    assert!(
        err.contains("had mode 0755; set it to 0700"),
        "the tightening is logged: {err}"
    );
    assert_eq!(mode(&e.path("data")), 0o700);
    let err = run(&["token", "enroll", "--service", "bank", "--user", "bob"]);
    assert!(!err.contains("set it to 0700"), "{err}");
    // Every file RocksDB wrote (and the generated key) is the owner's only.
    let mut files = 0;
    for entry in std::fs::read_dir(e.path("data")).unwrap() {
        let path = entry.unwrap().path();
        let m = mode(&path);
        assert_eq!(m & 0o077, 0, "{} has mode {m:04o}", path.display());
        files += 1;
    }
    assert!(files > 3, "RocksDB's files are there");
    // Exports: a new file, and an existing file that was open to others.
    run(&["db", "export", "-o", "dump.jsonl"]);
    assert_eq!(mode(&e.path("dump.jsonl")), 0o600);
    std::fs::write(e.path("old.jsonl"), "old").unwrap();
    std::fs::set_permissions(e.path("old.jsonl"), std::fs::Permissions::from_mode(0o644)).unwrap();
    run(&["db", "export", "-o", "old.jsonl"]);
    assert_eq!(mode(&e.path("old.jsonl")), 0o600);
    assert_eq!(
        std::fs::read(e.path("old.jsonl")).unwrap(),
        std::fs::read(e.path("dump.jsonl")).unwrap()
    );
}

#[cfg(unix)]
#[test]
fn a_master_key_file_open_to_others_is_refused_with_exit_code_2() {
    use std::os::unix::fs::PermissionsExt;
    let e = Env::new(FILE_CONFIG);
    e.ok(&["token", "enroll", "--service", "bank", "--user", "alice"]);
    let key = e.path("data/master.key");
    for bad in [0o644, 0o640, 0o604, 0o660, 0o606, 0o610] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(bad)).unwrap();
        let (code, err) = code_and_err(&e.run(&["token", "list"]));
        assert_eq!(code, 2, "mode {bad:04o}: {err}");
        assert!(
            err.contains(&format!("has mode {bad:04o}")) && err.contains("chmod 600"),
            "{err}"
        );
    }
    // `serve` refuses it too (and would serve on if it did not: give it 30 s).
    let mut child = e
        .cmd(&["serve"])
        .env("ZOFTOKEN_UDP_LISTEN", "127.0.0.1:0")
        .env("ZOFTOKEN_HTTP_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("serve started with a key file open to others");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    // A key file elsewhere (master_key.file / ZOFTOKEN_MASTER_KEY_FILE) is checked too.
    std::fs::copy(&key, e.path("elsewhere.key")).unwrap();
    std::fs::set_permissions(
        e.path("elsewhere.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let o = e
        .cmd(&["token", "list"])
        .env("ZOFTOKEN_MASTER_KEY_FILE", e.path("elsewhere.key"))
        .output()
        .unwrap();
    assert_eq!(code_and_err(&o).0, 2, "{}", code_and_err(&o).1);
    // Owner-only modes are accepted.
    for good in [0o600, 0o400] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(good)).unwrap();
        e.ok(&["token", "list"]);
    }
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
fn the_command_line_follows_the_rules_of_the_api() {
    let e = Env::new("config_source: database\ndata_dir: data\n");
    // `<redacted>` stands for a stored secret (as every listing shows one): with none stored
    // it is refused, never stored as the secret itself.
    let hooked = |name| {
        [
            "service",
            "create",
            name,
            "--endpoint",
            "shop.example:7878",
            "--webhook-url",
            "https://h.example/x",
            "--webhook-secret",
        ]
    };
    let mut args = hooked("shop").to_vec();
    args.push("<redacted>");
    let (code, err) = code_and_err(&e.run(&args));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("<redacted>"), "{err}");
    let mut args = hooked("shop").to_vec();
    args.push("s3cret-value");
    e.ok(&args);
    e.ok(&[
        "service",
        "edit",
        "shop",
        "--webhook-secret",
        "<redacted>",
        "--window",
        "60",
    ]);
    // Authkey names are 1 to 255 bytes here too.
    let long = "k".repeat(256);
    let (code, err) = code_and_err(&e.run(&["authkey", "create", &long]));
    assert_eq!(code, 2, "{err}");
    // An unknown service is not found, whether or not tokens of that name are stored.
    e.ok(&["token", "enroll", "--service", "shop", "--user", "u1"]);
    e.ok(&["service", "delete", "shop", "--force"]);
    assert_eq!(e.run(&["service", "delete", "shop"]).status.code(), Some(4));
    // With `config_source: file`, listing services opens no database.
    let e = Env::new(FILE_CONFIG);
    assert!(e.ok(&["service", "list"]).contains("bank"));
    assert!(!e.path("data").exists());
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

#[test]
fn no_output_that_shows_a_service_contains_a_secret() {
    let secrets = [
        "hook-secret-123",
        "previous-secret-456",
        "shared-token-789",
        "authkey-secret-0",
    ];
    let e = Env::new(&format!(
        "data_dir: data
services:
  - name: bank
    endpoints: [\"127.0.0.1:7878\"]
    webhook:
      url: \"https://hooks.example/zt\"
      secret: \"{}\"
      previous_secret: \"{}\"
      shared_token: \"{}\"
authkeys:
  - name: api
    admin: true
    secret: \"{}\"
",
        secrets[0], secrets[1], secrets[2], secrets[3]
    ));
    let mut shown = Vec::new();
    for args in [
        &["check-config"][..],
        &["check-config", "--json"],
        &["service", "list"],
        &["service", "list", "--json"],
    ] {
        let o = e.run(args);
        assert!(o.status.success(), "{args:?}");
        shown.push(String::from_utf8_lossy(&o.stdout).into_owned());
        shown.push(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    for out in &shown {
        for s in secrets {
            assert!(!out.contains(s), "{out} shows {s}");
        }
    }
    assert!(shown[0].contains("<redacted>"), "{}", shown[0]);
    let json: serde_json::Value = serde_json::from_str(&shown[2]).unwrap();
    let w = &json["services"][0]["webhook"];
    assert_eq!(
        (&w["secret"], &w["previous_secret"], &w["shared_token"]),
        (
            &serde_json::json!("<redacted>"),
            &serde_json::json!("<redacted>"),
            &serde_json::json!("<redacted>")
        )
    );

    // Database mode: created and edited services are printed redacted too.
    let e = Env::new("config_source: database\ndata_dir: data\n");
    let out = e.ok(&[
        "service",
        "create",
        "shop",
        "--endpoint",
        "shop.example:7878",
        "--webhook-url",
        "https://h.example/x",
        "--webhook-secret",
        secrets[0],
        "--json",
    ]);
    assert!(!out.contains(secrets[0]), "{out}");
    let out = e.ok(&["service", "edit", "shop", "--window", "60", "--json"]);
    assert!(!out.contains(secrets[0]), "{out}");
}

#[test]
fn plain_http_webhooks_are_refused_on_the_command_line_unless_allowed() {
    let e = Env::new("config_source: database\ndata_dir: data\n");
    let args = [
        "service",
        "create",
        "shop",
        "--endpoint",
        "shop.example:7878",
        "--webhook-url",
        "http://hooks.example/x",
        "--webhook-secret",
        "s",
    ];
    let (code, err) = code_and_err(&e.run(&args));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("allow_insecure_http"), "{err}");
    let mut allowed = args.to_vec();
    allowed.extend(["--webhook-allow-insecure-http", "true"]);
    e.ok(&allowed);
    e.ok(&[
        "service",
        "edit",
        "shop",
        "--webhook-url",
        "http://127.0.0.1:9/x",
        "--webhook-allow-insecure-http",
        "false",
    ]);
    let (code, err) = code_and_err(&e.run(&[
        "service",
        "edit",
        "shop",
        "--webhook-url",
        "http://10.1.2.3/x",
    ]));
    assert_eq!(code, 2, "{err}");
    // config.yaml too.
    let e = Env::new(
        "data_dir: data\nservices:\n  - name: bank\n    endpoints: [\"127.0.0.1:7878\"]\n    webhook: { url: \"http://hooks.example/zt\", secret: \"s\" }\n",
    );
    let (code, err) = code_and_err(&e.run(&["check-config"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("services[0].webhook.url"), "{err}");
}

/// `--webhook-ca-file` names the webhook's extra CA file (read by the servers when they
/// deliver) and `""` removes it; without a webhook it is refused.
#[test]
fn the_command_line_sets_and_removes_a_webhook_ca_file() {
    let e = Env::new("config_source: database\ndata_dir: data\n");
    let ca = e.path("extra-ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let ca = ca.to_str().unwrap();
    let base = [
        "service",
        "create",
        "shop",
        "--endpoint",
        "shop.example:7878",
    ];
    let (code, err) = code_and_err(&e.run(&[&base[..], &["--webhook-ca-file", ca]].concat()));
    assert_eq!(code, 2, "{err}");
    e.ok(&[
        &base[..],
        &[
            "--webhook-url",
            "https://h.example/x",
            "--webhook-secret",
            "s",
        ],
    ]
    .concat());
    let ca_file = |e: &Env| {
        let out = e.ok(&["service", "list", "--json"]);
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        json[0]["webhook"]["ca_file"].clone()
    };
    // Listed as stored (the database mode's list is an array of services).
    let listed: serde_json::Value =
        serde_json::from_str(&e.ok(&["service", "list", "--json"])).unwrap();
    assert_eq!(
        listed[0]["webhook"]["url"], "https://h.example/x",
        "{listed}"
    );
    assert_eq!(ca_file(&e), serde_json::Value::Null);
    e.ok(&["service", "edit", "shop", "--webhook-ca-file", ca]);
    assert_eq!(ca_file(&e), serde_json::json!(ca));
    e.ok(&["service", "edit", "shop", "--webhook-ca-file", ""]);
    assert_eq!(ca_file(&e), serde_json::Value::Null);
}

/// A staleness bound below the once-a-second keep-alive read is refused, with its path.
#[test]
fn a_staleness_bound_too_short_to_hold_is_refused() {
    let e = Env::new(
        "data_dir: data\nstorage:\n  backend: postgres\n  postgres:\n    url: \"host=127.0.0.1 user=z dbname=z\"\n    max_staleness_ms: 500\n",
    );
    let (code, err) = code_and_err(&e.run(&["check-config"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("storage.postgres.max_staleness_ms"), "{err}");
    assert!(err.contains("must be 2000 to 3600000"), "{err}");
}

/// The events of the outbox in a database export, as `(type, sequence)`.
fn exported_events(e: &Env) -> Vec<(String, u64)> {
    e.ok(&["db", "export", "-o", "x.jsonl"]);
    let dump = std::fs::read_to_string(e.path("x.jsonl")).unwrap();
    let mut out = Vec::new();
    for line in dump.lines().skip(1) {
        let l: serde_json::Value = serde_json::from_str(line).unwrap();
        if l["cf"] != "outbox" {
            continue;
        }
        let key = hex::decode(l["key"].as_str().unwrap()).unwrap();
        let seq = u64::from_be_bytes(key.try_into().unwrap());
        let value = hex::decode(l["value"].as_str().unwrap()).unwrap();
        for ev in zoftoken_storage::schema::decode_outbox(seq, &value).unwrap() {
            out.push((ev.kind.name().to_owned(), ev.sequence));
        }
    }
    out
}

#[test]
fn event_sequence_numbers_rise_across_processes() {
    // Each command is a process of its own: the counter starts again in each, so only the
    // floor kept in the database keeps the numbers rising.
    let e = Env::new(
        "data_dir: data\nservices:\n  - name: bank\n    endpoints: [\"127.0.0.1:7878\"]\n    webhook: { url: \"http://127.0.0.1:9/zt\", secret: \"s\" }\n",
    );
    e.ok(&["token", "enroll", "--service", "bank", "--user", "ana"]);
    e.ok(&["token", "delete", "--service", "bank", "--user", "ana"]);
    e.ok(&["token", "enroll", "--service", "bank", "--user", "ana"]);
    let events = exported_events(&e);
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["enrolled", "deleted", "enrolled"]);
    assert!(
        events.windows(2).all(|w| w[0].1 < w[1].1),
        "rising: {events:?}"
    );
}

/// The records of an export other than `meta` (which holds the epoch and sequence floors an
/// import raises on purpose), sorted.
fn exported_records(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text
        .lines()
        .skip(1)
        .filter(|l| !l.contains("\"cf\":\"meta\""))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// A whole instance (services, authkeys, paired tokens with their secrets and state, a
/// pending enrollment, events waiting for a webhook) moves from RocksDB to PostgreSQL and back
/// with `db export` and `db import`, secrets still sealed, record for record.
#[test]
fn a_whole_instance_moves_between_rocksdb_and_postgres_and_back() {
    let e = Env::new("config_source: database\ndata_dir: data\n");
    e.ok(&["service", "create", "bank", "--endpoint", "127.0.0.1:7878"]);
    e.ok(&[
        "service",
        "edit",
        "bank",
        "--webhook-url",
        "https://h.example/x",
        "--webhook-secret",
        "s3cret-value",
    ]);
    e.ok(&["authkey", "create", "api", "--admin"]);
    e.ok(&[
        "loadgen",
        "prepare",
        "--service",
        "bank",
        "--tokens",
        "50",
        "--seed",
        "3",
    ]);
    e.ok(&["token", "enroll", "--service", "bank", "--user", "alice"]);
    let tokens = e.json(&["token", "list"]);
    assert_eq!(tokens.as_array().unwrap().len(), 51);
    e.ok(&["db", "export", "-o", "rocks.jsonl"]);
    let from_rocksdb = exported_records(&e.path("rocks.jsonl"));
    for cf in [
        "services",
        "authkeys",
        "tokens",
        "secrets",
        "state",
        "enrollments",
        "outbox",
    ] {
        let needle = format!("\"cf\":\"{cf}\"");
        assert!(
            from_rocksdb.iter().any(|l| l.contains(&needle)),
            "no {cf} record"
        );
    }

    // Into PostgreSQL, with the same master key.
    let url = zoftoken_testkit::PgCluster::shared().database();
    let key = e.path("data/master.key");
    let key = key.to_str().unwrap();
    let pg_vars = [
        ("ZOFTOKEN_STORAGE_BACKEND", "postgres"),
        ("ZOFTOKEN_DATABASE_URL", url.as_str()),
        ("ZOFTOKEN_MASTER_KEY_FILE", key),
    ];
    let on_postgres = |args: &[&str]| e.ok_with(&pg_vars, args);
    on_postgres(&["db", "import", "-i", "rocks.jsonl"]);
    assert!(String::from_utf8(on_postgres(&["db", "check"]))
        .unwrap()
        .contains("database OK"));
    let listed: serde_json::Value =
        serde_json::from_slice(&on_postgres(&["token", "list", "--json"])).unwrap();
    assert_eq!(listed, tokens);
    on_postgres(&["db", "export", "-o", "pg.jsonl"]);
    assert_eq!(exported_records(&e.path("pg.jsonl")), from_rocksdb);

    // And back into a new RocksDB directory.
    let back_dir = e.path("back");
    let back_vars = [
        ("ZOFTOKEN_DATA_DIR", back_dir.to_str().unwrap()),
        ("ZOFTOKEN_MASTER_KEY_FILE", key),
    ];
    let back = |args: &[&str]| e.ok_with(&back_vars, args);
    back(&["db", "import", "-i", "pg.jsonl"]);
    back(&["db", "export", "-o", "back.jsonl"]);
    assert_eq!(exported_records(&e.path("back.jsonl")), from_rocksdb);
    let listed: serde_json::Value =
        serde_json::from_slice(&back(&["token", "list", "--json"])).unwrap();
    assert_eq!(listed, tokens);
}

/// `db migrate` on PostgreSQL creates the schema and says which version it is; a server's
/// configuration with a password in the file is refused, the password never printed.
#[test]
fn db_migrate_on_postgres_and_no_password_in_the_file() {
    let url = zoftoken_testkit::PgCluster::shared().database();
    let e = Env::new(&format!(
        "data_dir: data\nstorage:\n  backend: postgres\n  postgres:\n    url: \"{url}\"\n"
    ));
    let out = e.json(&["db", "migrate"]);
    assert_eq!(out["backend"], "postgres");
    assert_eq!(
        out["sql_schema"],
        zoftoken_storage_postgres::migrate::VERSION
    );
    let e = Env::new(
        "storage:\n  backend: postgres\n  postgres:\n    url: \"postgresql://zt:hunter2-pw@127.0.0.1/zt\"\n",
    );
    let (code, err) = code_and_err(&e.run(&["check-config"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("storage.postgres.url") && err.contains("password"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

/// `storage.postgres.tls`: the command line reaches a database that takes TLS only, trusting
/// the configured authority; TLS settings with `sslmode=disable`, or a client certificate
/// without its key, are configuration errors.
#[test]
fn postgres_over_tls_with_the_configured_authority() {
    let (cluster, certs) = zoftoken_testkit::PgCluster::start_tls(&["DNS:db.zoftoken.test"]);
    let url = cluster
        .database()
        .replace("host=127.0.0.1", "host=db.zoftoken.test hostaddr=127.0.0.1");
    let config = |tls: &str| {
        format!(
            "data_dir: data\nstorage:\n  backend: postgres\n  postgres:\n    url: \"{url}\"\n{tls}"
        )
    };
    let ca = format!("    tls:\n      ca_file: \"{}\"\n", certs.ca.display());
    let out = Env::new(&config(&ca)).json(&["db", "migrate"]);
    assert_eq!(
        out["sql_schema"],
        zoftoken_storage_postgres::migrate::VERSION
    );
    // Without the authority the system's anchors do not know the database's certificate.
    let e = Env::new(&config(""));
    let (code, err) = code_and_err(&e.run(&["db", "migrate"]));
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("PostgreSQL"), "{err}");

    let e = Env::new(&format!(
        "storage:\n  backend: postgres\n  postgres:\n    url: \"host=db.example dbname=zt \
         sslmode=disable\"\n{ca}"
    ));
    let (code, err) = code_and_err(&e.run(&["check-config"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("storage.postgres.tls") && err.contains("sslmode=disable"),
        "{err}"
    );
    let e = Env::new(&config("    tls:\n      cert_file: client.pem\n"));
    let (code, err) = code_and_err(&e.run(&["check-config"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("key_file"), "{err}");
}
