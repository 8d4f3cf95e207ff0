//! Helpers shared by the `zoftoken` binary's end-to-end tests.
#![allow(clippy::unwrap_used, clippy::panic, dead_code)]

use std::io::BufRead;
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
    use std::io::Write;
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
