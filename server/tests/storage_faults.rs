//! A real `zoftoken serve` on storage that fails:
//! - a data directory on a small filesystem that fills up under load (a tmpfs mounted for the
//!   test; it needs root, and is skipped with a message where mounting is impossible): writes
//!   really fail, nothing that was not written is answered, `/readyz` says so, the server
//!   recovers by itself once there is room again, stops with exit code 0, and after a restart
//!   holds exactly what it acknowledged; a disk already full at start is exit code 5;
//! - a write-ahead log damaged in the middle (after `kill -9`): the start stops with exit code
//!   6 and says what to do; `zoftoken db recover` opens it with loss and reports the loss.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;
use common::{free_port, wait_for};

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

/// A tmpfs mounted on a directory of the test, unmounted when dropped.
struct Mount {
    point: PathBuf,
}

impl Mount {
    fn tmpfs(point: &Path, size_mb: u32) -> Option<Mount> {
        std::fs::create_dir_all(point).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(point)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here ({}); the full-disk test needs root",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Mount {
            point: point.to_owned(),
        })
    }

    /// Fills the filesystem but for `left_kb` KiB; returns the filler file.
    fn fill(&self, left_kb: u64) -> PathBuf {
        let out = Command::new("df")
            .args(["--output=avail", "-k"])
            .arg(&self.point)
            .output()
            .unwrap();
        let avail: u64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let filler = self.point.join("filler");
        let s = Command::new("fallocate")
            .args(["-l", &format!("{}k", avail.saturating_sub(left_kb))])
            .arg(&filler)
            .status()
            .unwrap();
        assert!(s.success());
        filler
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.point).status();
    }
}

struct Server {
    child: Child,
    err: BufReader<ChildStderr>,
    http: SocketAddr,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let mut child = common::zoftoken(dir, &["serve"])
            .env("ZOFTOKEN_IO", "mmsg")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let log = wait_for(&mut err, "serving UDP");
        let http = common::http_addr(&log);
        Server { child, err, http }
    }

    fn readyz(&self) -> u16 {
        let mut c = TcpStream::connect(self.http).unwrap();
        write!(
            c,
            "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        text.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    /// SIGTERM; the exit code and the rest of the log.
    fn stop(mut self) -> (Option<i32>, String) {
        let s = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(s.success());
        let mut rest = String::new();
        self.err.read_to_string(&mut rest).unwrap();
        (self.child.wait().unwrap().code(), rest)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the load generator (opens and closes) for `secs`; its JSON summary.
fn load(dir: &Path, udp: SocketAddr, secs: u32, acked: &Path) -> serde_json::Value {
    let out = common::zoftoken(
        dir,
        &[
            "--json",
            "loadgen",
            "run",
            "--endpoint",
            &udp.to_string(),
            "--tokens",
            "2000",
            "--seed",
            "7",
            "--duration",
            &secs.to_string(),
            "--rate",
            "5000",
            "--mix",
            "0/50/50",
            "--timeout-ms",
            "300",
            "--counters",
            dir.join("counters.txt").to_str().unwrap(),
            "--acked",
            acked.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::last_json_line(&out.stdout)
}

/// Every settled acknowledgement of `acked` (token → state, failures) must be what the
/// database holds; returns how many were checked.
fn check_acknowledged(dir: &Path, acked: &Path) -> usize {
    let o = common::zoftoken(dir, &["token", "list", "--service", "bank", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let db: HashMap<String, (String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["token_id"].as_str().unwrap().to_owned(),
                (
                    r["state"].as_str().unwrap().to_owned(),
                    r["failures"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(db.len(), 2000);
    let mut checked = 0;
    for line in std::fs::read_to_string(acked).unwrap().lines() {
        if line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        let [id, _index, _counter, state, attempts_left, "1"] = f[..] else {
            continue;
        };
        let failures = 3 - attempts_left.parse::<u64>().unwrap();
        let (db_state, db_failures) = &db[id];
        assert_eq!(
            (db_state.as_str(), (*db_failures).min(3)),
            (state, failures),
            "token {id}: acknowledged {state}, the database says {db_state}"
        );
        checked += 1;
    }
    checked
}

#[test]
fn a_full_disk_withholds_what_it_cannot_write_and_the_server_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = Mount::tmpfs(&dir.path().join("volume"), 48) else {
        return;
    };
    let udp = prepare(dir.path(), "volume/data", 2000);

    // 1.5 MiB left: the write-ahead log fills it within a second of load.
    let filler = mount.fill(1536);
    let server = Server::start(dir.path());
    assert_eq!(server.readyz(), 200);
    let acked = dir.path().join("acked.txt");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let summary = load(dir.path(), udp, 2, &acked);
        eprintln!("load while the disk fills: {summary}");
        if server.readyz() == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "the disk never filled up");
    }
    // While it cannot write: changes are not answered (the load loses most requests).
    let failing = load(dir.path(), udp, 2, &acked);
    eprintln!("load on a full disk: {failing}");
    let (sent, answered) = (
        failing["sent"].as_u64().unwrap(),
        failing["answered"].as_u64().unwrap(),
    );
    assert!(answered * 2 < sent, "answered on a full disk: {failing}");
    assert_eq!(server.readyz(), 503);

    // Room again: the server resumes by itself, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.readyz() != 200 {
        assert!(Instant::now() < deadline, "no recovery");
        std::thread::sleep(Duration::from_millis(200));
    }
    let back = load(dir.path(), udp, 2, &acked);
    eprintln!("load after recovery: {back}");
    let (sent, answered) = (
        back["sent"].as_u64().unwrap(),
        back["answered"].as_u64().unwrap(),
    );
    assert!(answered * 100 >= sent * 99, "after recovery: {back}");
    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "{log}");
    // The failure was logged once, not per packet, and so was the recovery.
    assert_eq!(
        log.matches("cannot write to the database").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("can write again").count(), 1, "{log}");

    // Restarted, the database holds exactly what was acknowledged.
    let server = Server::start(dir.path());
    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "{log}");
    let checked = check_acknowledged(dir.path(), &acked);
    assert!(checked > 1000, "{checked} acknowledgements checked");
    drop(mount);
}

/// `config.yaml` in `dir` for one service on a free UDP port, the database in `data_dir`
/// holding `tokens` test tokens (seed 7); returns the UDP address.
fn prepare(dir: &Path, data_dir: &str, tokens: u32) -> SocketAddr {
    let udp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    write_config(dir, udp, data_dir);
    let o = common::zoftoken(
        dir,
        &[
            "loadgen",
            "prepare",
            "--tokens",
            &tokens.to_string(),
            "--seed",
            "7",
        ],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    udp
}

/// `config.yaml` in `dir` for one service on `udp`, the database in `data_dir`.
fn write_config(dir: &Path, udp: SocketAddr, data_dir: &str) {
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "listen: {{ udp: [\"{udp}\"], http: \"127.0.0.1:0\" }}\ndata_dir: {data_dir}\n\
             io_threads: 1\nservices:\n  - name: bank\n    window: 3600\n    endpoints: [\"{udp}\"]\n"
        ),
    )
    .unwrap();
}

#[test]
fn a_disk_full_at_start_is_a_clear_error_with_exit_code_5() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = Mount::tmpfs(&dir.path().join("volume"), 16) else {
        return;
    };
    prepare(dir.path(), "volume/data", 100);
    mount.fill(0);
    let o = common::zoftoken(dir.path(), &["serve"])
        .env("ZOFTOKEN_IO", "mmsg")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(5), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
}

#[test]
fn a_wal_damaged_in_the_middle_stops_the_start_and_db_recover_reports_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let udp = prepare(dir.path(), "data", 2000);
    // Acknowledged changes in the write-ahead log only: a load, then kill -9.
    let mut server = Server::start(dir.path());
    let acked = dir.path().join("acked.txt");
    let summary = load(dir.path(), udp, 2, &acked);
    assert!(summary["answered"].as_u64().unwrap() > 1000, "{summary}");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(server);
    let log = std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&log).unwrap();
    assert!(bytes.len() > 100_000, "{} bytes of log", bytes.len());
    let middle = bytes.len() / 2;
    bytes[middle..middle + 64].fill(0x5A);
    std::fs::write(&log, &bytes).unwrap();

    // The start refuses: exit code 6, where, how much, and what to do.
    let o = common::zoftoken(dir.path(), &["serve"])
        .env("ZOFTOKEN_IO", "mmsg")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(6), "{err}");
    assert!(err.contains("zoftoken db recover"), "{err}");
    assert!(err.contains("would be lost"), "{err}");

    // The explicit recovery reports what it dropped; then the server starts.
    let o = common::zoftoken(dir.path(), &["--json", "db", "recover"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["damaged"], true, "{report}");
    assert!(report["dropped_batches"].as_u64().unwrap() > 0, "{report}");
    let again = common::zoftoken(dir.path(), &["--json", "db", "recover"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(report["damaged"], false, "{report}");
    let server = Server::start(dir.path());
    let (code, log) = server.stop();
    assert_eq!(code, Some(0), "{log}");
}
