//! A newcomer's first minutes, with real processes: `zoftoken serve` on the demo
//! configuration (`config/demo.yaml`, as `./scripts/run.sh` starts it) creates an admin
//! authkey at its first start, and the README's commands that follow `./scripts/run.sh` read
//! it and enroll a user through the HTTP API; a second start creates and prints no other key,
//! and the first one still works.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;
use common::wait_for;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// Where the README's commands find the API: `listen.http` of the demo configuration.
const README_API: &str = "http://127.0.0.1:8080";
/// The key file, as the README names it (relative to the directory `run.sh` runs in).
const README_KEY_FILE: &str = "data/demo-admin.authkey";

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The README's commands right after `./scripts/run.sh`: the indented block that reads the
/// demo's admin authkey (and enrolls with it).
fn readme_first_call() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_file("README.md")).unwrap();
    let lines: Vec<&str> = readme.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("    ") && l.contains(&format!("$(cat {README_KEY_FILE})")))
        .expect("README.md reads the demo admin authkey after ./scripts/run.sh");
    let block: Vec<String> = lines[start..]
        .iter()
        .take_while(|l| l.starts_with("    "))
        .map(|l| l[4..].to_owned())
        .collect();
    assert!(
        lines[..start]
            .iter()
            .rev()
            .take(12)
            .any(|l| l.trim() == "./scripts/run.sh"),
        "the block follows ./scripts/run.sh:\n{}",
        block.join("\n")
    );
    block
}

struct Demo {
    dir: tempfile::TempDir,
    udp: SocketAddr,
}

struct Server {
    child: Child,
    http: SocketAddr,
    log: String,
}

impl Demo {
    /// A directory with the demo configuration, as `./scripts/run.sh` uses it (only the
    /// listen addresses are moved to free ports, by environment, as an operator may).
    fn new() -> Demo {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            repo_file("config/demo.yaml"),
            dir.path().join("config.yaml"),
        )
        .unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        Demo { dir, udp }
    }

    fn serve(&self) -> Server {
        let mut child = common::zoftoken(self.dir.path(), &["serve"])
            .env("ZOFTOKEN_UDP_LISTEN", self.udp.to_string())
            .env("ZOFTOKEN_HTTP_LISTEN", "127.0.0.1:0")
            .env("ZOFTOKEN_IO_THREADS", "1")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let log = wait_for(&mut err, "serving UDP");
        let http = common::http_addr(&log);
        // Keep draining the log so that the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = err.read_to_string(&mut sink);
        });
        Server { child, http, log }
    }

    fn key_file(&self) -> PathBuf {
        self.dir.path().join(README_KEY_FILE)
    }

    /// Runs the README's block against `server` (its address instead of the default one,
    /// `user` instead of alice) in the demo's directory; the enrollment's answer, which the
    /// block saves in `enroll.json`.
    fn run_readme_block(&self, server: &Server, user: &str) -> Value {
        let block = readme_first_call()
            .join("\n")
            .replace(README_API, &format!("http://{}", server.http))
            .replace("/tokens/alice", &format!("/tokens/{user}"));
        let has_curl = Command::new("curl")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let saved = self.dir.path().join("enroll.json");
        let _ = std::fs::remove_file(&saved);
        if has_curl {
            let o = Command::new("bash")
                .args(["-euo", "pipefail", "-c", &block])
                .current_dir(self.dir.path())
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{block}\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
            // The HTTP status, as the README says.
            assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "201", "{block}");
        } else {
            eprintln!("curl is not installed: the README's request is made in Rust");
            self.readme_block_without_curl(&block, &saved);
        }
        let out = std::fs::read_to_string(&saved).unwrap();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\nfrom:\n{block}"))
    }

    /// The README's two commands done here, after checking that they are exactly: read the
    /// key file, POST with the key as a bearer token, the answer saved in `saved`.
    fn readme_block_without_curl(&self, block: &str, saved: &Path) {
        let mut lines = block.lines().map(|l| l.split(" #").next().unwrap().trim());
        assert_eq!(
            lines.next(),
            Some(format!("ADMIN_KEY=$(cat {README_KEY_FILE})").as_str())
        );
        let curl = lines.next().unwrap();
        let prefix = "curl -s -o enroll.json -w '%{http_code}\\n' -X POST \
                      -H \"Authorization: Bearer $ADMIN_KEY\" http://";
        let url = curl.strip_prefix(prefix).expect(curl);
        let (addr, path) = url.split_at(url.find('/').unwrap());
        let key = std::fs::read_to_string(self.key_file()).unwrap();
        let (status, body) = http_post(addr.parse().unwrap(), path, key.trim());
        assert_eq!(status, 201, "{body}");
        std::fs::write(saved, body).unwrap();
    }
}

impl Server {
    fn stop(mut self) {
        let s = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(s.success());
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One POST on a new connection with a bearer key; the status and the body.
fn http_post(addr: SocketAddr, path: &str, key: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

fn assert_enrolled(answer: &Value, user: &str) {
    let id = zoftoken_proto::TokenId::derive("demo", user);
    assert_eq!(answer["token_id"], hex::encode(id.0), "{answer}");
    assert_eq!(answer["kind"], "app", "{answer}");
    let link = answer["deeplink"].as_str().unwrap_or_default();
    assert!(link.starts_with("zoftoken://"), "{answer}");
}

#[test]
fn the_readme_reaches_an_enrollment_and_a_second_start_keeps_the_demo_key() {
    let demo = Demo::new();
    let server = demo.serve();
    // The first start says where the key is, never what it is.
    let key = std::fs::read_to_string(demo.key_file()).unwrap();
    let secret = key.trim();
    assert_eq!(secret.len(), 64, "256 random bits in hex");
    assert!(
        server
            .log
            .contains("created the admin authkey `demo-admin`")
            && server.log.contains(README_KEY_FILE),
        "{}",
        server.log
    );
    assert!(!server.log.contains(secret), "{}", server.log);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(demo.key_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_enrolled(&demo.run_readme_block(&server, "alice"), "alice");
    // Another key is refused: the key is what lets the call through.
    let (status, _) = http_post(server.http, "/v1/services/demo/tokens/carol", "not-the-key");
    assert_eq!(status, 401);
    server.stop();

    // The second start: no new key, nothing printed about one, the same key works.
    let server = demo.serve();
    assert!(!server.log.contains("demo-admin"), "{}", server.log);
    assert_eq!(std::fs::read_to_string(demo.key_file()).unwrap(), key);
    assert_enrolled(&demo.run_readme_block(&server, "bob"), "bob");
    server.stop();

    // Deleting the file revokes the key at the next start, and none is made again.
    std::fs::remove_file(demo.key_file()).unwrap();
    let server = demo.serve();
    assert!(!demo.key_file().exists());
    assert!(
        server.log.contains("no demo admin authkey"),
        "{}",
        server.log
    );
    let (status, _) = http_post(server.http, "/v1/services/demo/tokens/dave", secret);
    assert_eq!(status, 401);
    server.stop();
}

#[test]
fn a_key_file_of_an_earlier_database_is_refused_before_anything_is_created() {
    let demo = Demo::new();
    demo.serve().stop();
    let key = std::fs::read_to_string(demo.key_file()).unwrap();
    // The database goes, its key file stays.
    for entry in std::fs::read_dir(demo.dir.path().join("data")).unwrap() {
        let path = entry.unwrap().path();
        if path != demo.key_file() {
            std::fs::remove_file(path).unwrap();
        }
    }
    let o = common::zoftoken(demo.dir.path(), &["serve"])
        .env("ZOFTOKEN_UDP_LISTEN", demo.udp.to_string())
        .env("ZOFTOKEN_HTTP_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("exists, but the database is new"), "{err}");
    assert!(
        !demo.dir.path().join("data/CURRENT").exists(),
        "no database made"
    );
    assert_eq!(std::fs::read_to_string(demo.key_file()).unwrap(), key);
}

#[test]
fn without_the_setting_no_key_is_made() {
    let demo = Demo::new();
    let config = demo.dir.path().join("config.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace("demo_admin_authkey: true", "demo_admin_authkey: false");
    std::fs::write(&config, text).unwrap();
    let server = demo.serve();
    assert!(!demo.key_file().exists());
    assert!(!server.log.contains("demo-admin"), "{}", server.log);
    server.stop();
}
