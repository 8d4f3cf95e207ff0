//! The `zoftoken` command line itself: shell completions and manual pages generated from its
//! definitions, and the device options given after the device command.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::process::Output;

/// Commands every generated artefact must know.
const COMMANDS: [&str; 12] = [
    "serve",
    "service",
    "authkey",
    "token",
    "db",
    "webhook",
    "check-config",
    "device",
    "loadgen",
    "completions",
    "man",
    "open",
];

fn run(dir: &std::path::Path, args: &[&str]) -> Output {
    // No configuration file exists: none is needed.
    common::zoftoken(dir, args).output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn completions_name_every_command_in_every_shell() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef zoftoken"),
        ("fish", "complete -c zoftoken"),
        ("elvish", "edit:completion:arg-completer[zoftoken]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let script = ok(&run(dir.path(), &["completions", shell]));
        assert!(script.contains(marker), "{shell}: no `{marker}`");
        for command in COMMANDS {
            assert!(script.contains(command), "{shell}: `{command}` missing");
        }
        // Options of the device commands, after the command as before it.
        assert!(script.contains("pin-stdin"), "{shell}");
    }
    assert!(!dir.path().join("data").exists(), "nothing else is created");
    let o = run(dir.path(), &["completions", "tcsh"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "an unknown shell is invalid input"
    );
}

#[test]
fn manual_pages_are_written_for_every_command_readable_by_all() {
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man/man1");
    let listed = ok(&run(dir.path(), &["man", man.to_str().unwrap()]));
    for page in [
        "zoftoken.1",
        "zoftoken-serve.1",
        "zoftoken-device.1",
        "zoftoken-device-open.1",
        "zoftoken-authkey-create.1",
        "zoftoken-loadgen-run.1",
        "zoftoken-completions.1",
    ] {
        let path = man.join(page);
        assert!(listed.contains(path.to_str().unwrap()), "{page} not listed");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: roff"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{page}");
    }
    let main = std::fs::read_to_string(man.join("zoftoken.1")).unwrap();
    for command in COMMANDS.iter().filter(|c| **c != "open") {
        // roff writes a hyphen as `\-`.
        let roff = command.replace('-', "\\-");
        assert!(main.contains(&roff), "zoftoken.1: `{command}` missing");
    }
    let open = std::fs::read_to_string(man.join("zoftoken-device-open.1")).unwrap();
    assert!(open.contains("pin\\-stdin"), "{open}");
    // Written again over the same pages.
    ok(&run(dir.path(), &["man", man.to_str().unwrap()]));
}

#[test]
fn device_options_may_follow_the_device_command() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("phone.json");
    let state = state.to_str().unwrap();
    for args in [
        &[
            "device",
            "--state",
            state,
            "--pin-stdin",
            "status",
            "--json",
        ][..],
        &[
            "device",
            "status",
            "--state",
            state,
            "--pin-stdin",
            "--json",
        ],
        &[
            "device",
            "open",
            "--pin-stdin",
            "--state",
            state,
            "--timeout-ms",
            "200",
            "--json",
        ],
    ] {
        // Parsed: the error is the command's own (no token paired: 4), not a usage error (2).
        let o = run(dir.path(), args);
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            o.status.code(),
            Some(4),
            "{args:?}: {out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["ok"], false);
        assert!(json["error"].as_str().unwrap().contains("no token paired"));
    }
}
