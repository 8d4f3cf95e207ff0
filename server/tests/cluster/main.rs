//! Several servers of one instance on one PostgreSQL database, as real processes: the harness
//! (PostgreSQL and `n` servers on loopback ports, a path to the database that can be cut) and
//! the rules that must hold across servers, a module per concern: a token's rules
//! (`tokens`), codes (`codes`), configuration (`configuration`), transactions
//! (`transactions`), webhooks (`webhooks`), losing a server (`failover`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

#[path = "../common/mod.rs"]
mod common;
use common::http;

mod codes;
mod configuration;
mod failover;
mod tokens;
mod transactions;
mod webhooks;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use zoftoken_device::Request;
use zoftoken_proto::WireState;
use zoftoken_testkit::{Link, NoReply, PgCluster, Phone, UdpLink};

const ADMIN_KEY: &str = "cluster-admin-key-0123456789abcdef";

/// PostgreSQL and the configuration of `n` servers sharing it (one directory each, one master
/// key file, one service whose endpoints are every server's UDP address).
struct Instance {
    _cluster: PgCluster,
    dir: tempfile::TempDir,
    udp: Vec<SocketAddr>,
    /// The path between server 0 and the database, when it goes through [`Cut`].
    cut: Option<Cut>,
}

/// One running `zoftoken serve`.
struct Server {
    child: Child,
    udp: SocketAddr,
    http: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Instance {
    /// An instance of `n` servers with `config_source` (`file`: the service `bank` and the
    /// admin key in every configuration; `database`: nothing configured yet).
    fn new(n: usize, config_source: &str) -> Instance {
        Instance::build(n, config_source, None, false)
    }

    /// An instance whose service `bank` has a webhook to `hook`.
    fn with_webhook(n: usize, hook: SocketAddr) -> Instance {
        Instance::build(n, "file", Some(hook), false)
    }

    /// An instance whose server 0 reaches the database through a path the test can cut.
    fn with_cut(n: usize) -> Instance {
        Instance::build(n, "file", None, true)
    }

    fn build(n: usize, config_source: &str, hook: Option<SocketAddr>, cut: bool) -> Instance {
        let cluster = PgCluster::start();
        let url = cluster.database();
        let cut = cut.then(|| {
            let port: u16 = url
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("port="))
                .unwrap()
                .parse()
                .unwrap();
            Cut::to(SocketAddr::from(([127, 0, 0, 1], port)))
        });
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("master.key");
        write_private(&key, &format!("{}\n", "5a".repeat(32)));
        let udp: Vec<SocketAddr> = (0..n)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], common::free_port())))
            .collect();
        let endpoints = udp
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        for (i, addr) in udp.iter().enumerate() {
            let url = match &cut {
                Some(c) if i == 0 => url.replace(
                    &format!("port={}", c.to.port()),
                    &format!("port={}", c.listen.port()),
                ),
                _ => url.clone(),
            };
            let home = dir.path().join(format!("s{i}"));
            std::fs::create_dir(&home).unwrap();
            let webhook = hook.map_or(String::new(), |a| {
                format!("    webhook: {{ url: \"http://{a}/hook\", secret: \"cluster-hook-secret\" }}\n")
            });
            let configured = if config_source == "file" {
                format!(
                    "services:\n  - name: bank\n    window: 600\n    endpoints: [{endpoints}]\n\
                     {webhook}authkeys:\n  - name: admin\n    secret: \"{ADMIN_KEY}\"\n    admin: true\n"
                )
            } else {
                "config_source: database\n".into()
            };
            std::fs::write(
                home.join("config.yaml"),
                format!(
                    "listen: {{ udp: [\"{addr}\"], http: \"127.0.0.1:0\" }}\ndata_dir: data\n\
                     io_threads: 1\nmaster_key: {{ file: \"{}\" }}\n\
                     storage:\n  backend: postgres\n  postgres:\n    url: \"{url}\"\n{configured}",
                    key.display()
                ),
            )
            .unwrap();
        }
        Instance {
            _cluster: cluster,
            dir,
            udp,
            cut,
        }
    }

    /// Makes server `i` read the change feed only once a second (the longest interval), so
    /// that its memory of a token stays a moment old after another server changes it.
    fn follow_slowly(&self, i: usize) {
        let path = self.home(i).join("config.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replacen("    url: ", "    follow_interval_ms: 1000\n    url: ", 1);
        std::fs::write(path, text).unwrap();
    }

    fn home(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("s{i}"))
    }

    /// Starts server `i` and waits until it serves.
    fn serve(&self, i: usize) -> Server {
        let mut child = common::zoftoken(&self.home(i), &["serve"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let first = common::wait_for(&mut err, "serving UDP");
        let http = common::http_addr(&first);
        let log = Arc::new(Mutex::new(first));
        let kept = log.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while err.read_line(&mut line).is_ok_and(|n| n > 0) {
                kept.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Server {
            child,
            udp: self.udp[i],
            http,
            log,
        }
    }

    /// Every server, started one after the other.
    fn serve_all(&self) -> Vec<Server> {
        (0..self.udp.len()).map(|i| self.serve(i)).collect()
    }

    /// The admin command line of server `i`'s configuration.
    fn admin(&self, i: usize, args: &[&str]) -> String {
        let out = common::zoftoken(&self.home(i), args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A TCP path to the database that the test can cut (every connection closed, new ones
/// refused) and restore.
struct Cut {
    listen: SocketAddr,
    to: SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Cut {
    fn to(to: SocketAddr) -> Cut {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = listener.local_addr().unwrap();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if c.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let Ok(db) = TcpStream::connect(to) else {
                    continue;
                };
                let mut o = o.lock().unwrap();
                o.push(conn.try_clone().unwrap());
                o.push(db.try_clone().unwrap());
                for (mut from, mut into) in [
                    (conn.try_clone().unwrap(), db.try_clone().unwrap()),
                    (db, conn),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Cut {
            listen,
            to,
            cut,
            open,
        }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in self.open.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

const ALICE: &str = "/v1/services/bank/tokens/alice";

/// Pairs `user` through `s` (enrolled through its API): the phone.
fn pair(s: &Server, user: &str) -> Phone {
    let (code, enrolled) = http(
        s.http,
        "POST",
        &format!("/v1/services/bank/tokens/{user}"),
        ADMIN_KEY,
        "{}",
    );
    assert_eq!(code, 201, "{enrolled}");
    let mut link = UdpLink::new(s.udp, Duration::from_secs(2));
    Phone::pair_deeplink(&mut link, enrolled["deeplink"].as_str().unwrap(), false)
}

/// Alice enrolled through `s`'s API and paired through `s`'s UDP port.
fn pair_alice(s: &Server) -> Phone {
    pair(s, "alice")
}

fn link(s: &Server) -> UdpLink {
    UdpLink::new(s.udp, Duration::from_millis(400))
}

/// The requests the tests send until answered.
#[derive(Clone, Copy)]
enum Ask {
    Open,
    Close,
}

/// As the app does: a request, and a new one (a new counter) while none is answered (a
/// server whose view of the token was stale refuses its write and answers nothing).
fn until_answered(phone: &mut Phone, s: &Server, ask: Ask) -> WireState {
    let mut l = link(s);
    for _ in 0..10 {
        let r = match ask {
            Ask::Open => phone.open(&mut l),
            Ask::Close => phone.send(&mut l, Request::Close),
        };
        if let Ok(reply) = r {
            return reply.status().state;
        }
    }
    panic!("no answer from {} in ten requests:\n{}", s.udp, s.log());
}

fn state_at(s: &Server) -> String {
    let (code, v) = http(s.http, "GET", ALICE, ADMIN_KEY, "");
    match code {
        200 => v["state"].as_str().unwrap().to_owned(),
        // Not known there yet (enrolled through another server a moment ago).
        404 => "unknown".to_owned(),
        _ => panic!("{code} {v}"),
    }
}

/// Waits until `s`'s API says `want` (at most 5 s); how long it took.
fn until_state(s: &Server, want: &str) -> Duration {
    let t = Instant::now();
    loop {
        if state_at(s) == want {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{} never said {want}:\n{}",
            s.http,
            s.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}
