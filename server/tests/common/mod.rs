//! Helpers shared by the `zoftoken` binary's end-to-end tests.
#![allow(clippy::unwrap_used, clippy::panic, dead_code)]

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::process::Command;

/// The `zoftoken` binary run in `dir` with `config.yaml`, without the environment variables
/// that would override the test's configuration.
pub fn zoftoken(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_zoftoken"));
    c.current_dir(dir)
        .env_remove("ZOFTOKEN_MASTER_KEY")
        .env_remove("ZOFTOKEN_DATA_DIR")
        .env_remove("ZOFTOKEN_CONFIG")
        .env_remove("ZOFTOKEN_IO")
        .env_remove("ZOFTOKEN_IO_THREADS")
        .args(["--config", "config.yaml"])
        .args(args);
    c
}

/// Reads lines until one contains `needle`; returns everything read. Panics if the process
/// ends first.
pub fn wait_for(reader: &mut impl BufRead, needle: &str) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("server exited before `{needle}`:\n{all}");
        }
        all.push_str(&line);
        if line.contains(needle) {
            return all;
        }
    }
}

/// `zoftoken device` with the token state in `state`, PINs written on stdin; the exit code,
/// stdout and stderr.
pub fn device(dir: &Path, state: &Path, args: &[&str], pins: &str) -> (i32, String, String) {
    use std::process::Stdio;
    let mut c = zoftoken(dir, &["device", "--pin-stdin", "--timeout-ms", "300"]);
    c.arg("--state").arg(state).args(args);
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pins.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A free UDP port on loopback (bound once and released).
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The HTTP API's address, from `zoftoken serve`'s start-up log.
pub fn http_addr(log: &str) -> std::net::SocketAddr {
    log.split("the HTTP API on http://")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no API address in the log:\n{log}"))
}

/// The load generator's JSON summary, once it has ended.
pub fn load_summary(load: std::process::Child) -> serde_json::Value {
    let out = load.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    last_json_line(&out.stdout)
}

/// The last line of `out` that is a JSON object (a command's summary after its progress).
pub fn last_json_line(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(
        out.split(|b| *b == b'\n')
            .rfind(|l| l.starts_with(b"{"))
            .unwrap(),
    )
    .unwrap()
}

/// Every token whose newest answer in `acked` is settled has, in the database, the state and
/// failure count that answer showed (the others may or may not have taken a later, unanswered
/// change). Returns how many were settled, and how many of them per state.
/// `dir` holds the configuration of a server of the database (its `bank` service has `tokens`
/// tokens).
pub fn assert_acknowledged_in_database(
    dir: &Path,
    tokens: usize,
    acked: &std::path::Path,
    summary: &serde_json::Value,
) -> (usize, std::collections::HashMap<String, usize>) {
    let o = zoftoken(dir, &["token", "list", "--service", "bank", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let db: std::collections::HashMap<&str, (&str, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["token_id"].as_str().unwrap(),
                (
                    r["state"].as_str().unwrap(),
                    r["failures"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(db.len(), tokens);
    let text = std::fs::read_to_string(acked).unwrap();
    let (mut settled, mut unsettled) = (0, 0);
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split(' ').collect();
        let [id, _index, _counter, state, attempts_left, is_settled] = f[..] else {
            panic!("bad line {line:?}");
        };
        let (db_state, db_failures) = db[id];
        if is_settled == "1" {
            settled += 1;
            *seen.entry(state.to_owned()).or_default() += 1;
            let failures = 3 - attempts_left.parse::<u64>().unwrap();
            assert_eq!(
                (db_state, db_failures.min(3)),
                (state, failures),
                "token {id}: acknowledged {state} with {failures} failures, the database \
                 says {db_state} with {db_failures}"
            );
        } else {
            unsettled += 1;
        }
    }
    eprintln!("settled {settled} ({seen:?}), unsettled {unsettled}; load: {summary}");
    (settled, seen)
}

/// One HTTP/1.1 request on a new connection; the status and the JSON body.
pub fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    key: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let json = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .filter(|b| !b.is_empty())
        .map_or(serde_json::Value::Null, |b| {
            serde_json::from_str(b).unwrap()
        });
    (status, json)
}
