//! `dist/systemd/zoftoken.service`: the hardening the server is meant to run under, and
//! `systemd-analyze verify` on it (with this build's binary in `ExecStart=`) where systemd's
//! tools are installed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALLED_BINARY: &str = "/usr/local/bin/zoftoken";

fn dist(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dist")
        .join(path)
}

/// The `[Service]` settings, `key=value` lines without comments.
fn settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .map(|l| {
            let (k, v) = l.split_once('=').expect(l);
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn values<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn the_unit_is_hardened_and_reloads_with_sighup() {
    let unit = std::fs::read_to_string(dist("systemd/zoftoken.service")).unwrap();
    let s = settings(&unit);
    for (key, value) in [
        ("User", "zoftoken"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("StateDirectory", "zoftoken"),
        ("StateDirectoryMode", "0700"),
        ("UMask", "0077"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        // A call outside the filter (io_uring on an old systemd) fails instead of killing
        // the server: the io_uring probe then falls back to recvmmsg.
        ("SystemCallErrorNumber", "EPERM"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        (
            "ExecStart",
            &format!("{INSTALLED_BINARY} --config /etc/zoftoken/config.yaml serve"),
        ),
        // Ports above 1024: no capability at all.
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
    ] {
        assert!(
            values(&s, key).contains(&value),
            "{key}={value} missing: {:?}",
            values(&s, key)
        );
    }
    let nofile: u64 = values(&s, "LimitNOFILE")[0].parse().unwrap();
    assert!(nofile >= 16_384 + 512, "room for the API's connection cap");
    assert!(
        !values(&s, "SystemCallFilter")
            .iter()
            .any(|v| v.contains("@aio") && v.starts_with('~')),
        "io_uring (in @aio) stays allowed"
    );
    let users = std::fs::read_to_string(dist("sysusers.d/zoftoken.conf")).unwrap();
    assert!(
        users.lines().any(|l| l.starts_with("u zoftoken ")),
        "{users}"
    );
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: the unit is not verified by systemd");
        return;
    };
    assert!(version.status.success());
    let dir = tempfile::tempdir().unwrap();
    // `verify` checks that ExecStart's binary exists: this build's stands in for the installed
    // one. Documentation= names the manual pages, which need not be installed here.
    let unit = std::fs::read_to_string(dist("systemd/zoftoken.service"))
        .unwrap()
        .replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_zoftoken"));
    let path = dir.path().join("zoftoken.service");
    std::fs::write(&path, unit).unwrap();
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{said}");
    // Unknown or misspelt settings are only warned about: none may be.
    assert!(!said.contains("zoftoken.service"), "{said}");
}
