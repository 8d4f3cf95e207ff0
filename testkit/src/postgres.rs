//! Throwaway PostgreSQL clusters for tests: `initdb` and `pg_ctl` from Debian's `postgresql`
//! package (installed by `scripts/setup.sh`), a cluster in a temporary directory listening on a
//! free loopback port (and a Unix socket in that directory), `fsync` on, trust authentication
//! for its one superuser `zoftoken`. Never a system service, never a shared port.
//!
//! [`PgCluster::shared`] is one cluster per test process, started on first use; each test takes
//! a database of its own in it ([`PgCluster::database`]). A reaper process stops the cluster and
//! removes its directory once the test process is gone, however it ends. [`PgCluster::start`]
//! is a cluster of a test's own (to kill and restart), removed when dropped.
//!
//! Run as root (CI containers), the cluster runs as Debian's `postgres` user (`runuser`):
//! PostgreSQL refuses to run as root.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// A running throwaway cluster.
pub struct PgCluster {
    /// The temporary directory: `data/` (the cluster), the Unix socket, `log`.
    pub dir: PathBuf,
    /// The loopback port.
    pub port: u16,
    bin: PathBuf,
    /// `Some("postgres")` when the tests run as root.
    run_as: Option<&'static str>,
    /// Removed on drop (a test's own cluster), or by the reaper (the shared one).
    owned: bool,
    /// Server options beyond the defaults (TLS).
    extra_options: String,
}

static SHARED: OnceLock<PgCluster> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The directory of PostgreSQL's server programs: `ZOFTOKEN_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian), else the `PATH`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ZOFTOKEN_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => PathBuf::new(),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl PgCluster {
    /// The test process's cluster, started on first use.
    pub fn shared() -> &'static PgCluster {
        SHARED.get_or_init(|| {
            let mut c = PgCluster::start();
            c.reap_after(std::process::id());
            c.owned = false;
            c
        })
    }

    /// A cluster of the caller's own, stopped and removed when dropped.
    pub fn start() -> PgCluster {
        let mut c = PgCluster::init();
        c.start_server();
        c
    }

    /// A cluster of the caller's own that takes TCP connections over TLS only (a plaintext
    /// one is rejected), with a server certificate for `names` (`DNS:db.example`,
    /// `IP:127.0.0.1`) signed by a test authority; the Unix socket stays open for the
    /// kit's own `psql` calls. Returns the certificates' files (the authority: `ca`).
    pub fn start_tls(names: &[&str]) -> (PgCluster, crate::TestCerts) {
        let mut c = PgCluster::init();
        let certs = crate::make_certs(&c.dir.join("tls"), names);
        if let Some(user) = c.run_as {
            let ok = Command::new("chown")
                .args(["-R", &format!("{user}:{user}")])
                .arg(c.dir.join("tls"))
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown the certificates to {user}");
        }
        // PostgreSQL refuses a key others can read.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&certs.key, std::fs::Permissions::from_mode(0o600))
            .expect("key permissions");
        std::fs::write(
            c.dir.join("data/pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostnossl all all 127.0.0.1/32 reject\n",
        )
        .expect("pg_hba.conf");
        c.extra_options = format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            certs.cert.display(),
            certs.key.display()
        );
        c.start_server();
        (c, certs)
    }

    /// A new cluster (`initdb`), not started.
    fn init() -> PgCluster {
        let run_as = is_root().then_some("postgres");
        let dir = std::env::temp_dir().join(format!(
            "zoftoken-pg-{}-{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster directory");
        if let Some(user) = run_as {
            let ok = Command::new("chown")
                .arg(format!("{user}:{user}"))
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown {} to {user}", dir.display());
        }
        let c = PgCluster {
            dir,
            port: 0,
            bin: bin_dir(),
            run_as,
            owned: true,
            extra_options: String::new(),
        };
        let data = c.dir.join("data");
        c.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "--auth=trust".as_ref(),
                "-U".as_ref(),
                "zoftoken".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        c
    }

    /// Starts the server of the cluster (again): on a fresh free port the first time, on the
    /// same port after a stop.
    pub fn start_server(&mut self) {
        for _ in 0..5 {
            if self.port == 0 {
                self.port = free_port();
            }
            let options = format!(
                "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} \
                 -c fsync=on -c synchronous_commit=on -c max_connections=200 \
                 -c shared_buffers=64MB{}",
                self.port,
                self.dir.display(),
                self.extra_options
            );
            let data = self.dir.join("data");
            let log = self.dir.join("log");
            if self.try_run(
                "pg_ctl",
                &[
                    "-D".as_ref(),
                    data.as_os_str(),
                    "-o".as_ref(),
                    options.as_ref(),
                    "-l".as_ref(),
                    log.as_os_str(),
                    "-w".as_ref(),
                    "-t".as_ref(),
                    "60".as_ref(),
                    "start".as_ref(),
                ],
            ) {
                return;
            }
            // The port was taken meanwhile: another one.
            self.port = 0;
        }
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        panic!("PostgreSQL did not start; its log:\n{log}");
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`: no checkpoint,
    /// recovery from the WAL at the next start).
    pub fn crash(&self) {
        let data = self.dir.join("data");
        self.try_run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
    }

    /// A new, empty database in this cluster; its connection string.
    pub fn database(&self) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        let ok = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "zoftoken",
                "-d",
                "postgres",
            ])
            .args(["-c", &format!("CREATE DATABASE {name}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "CREATE DATABASE {name}");
        self.url(&name)
    }

    /// Runs `sql` in the database of connection string `url` (as another client would,
    /// behind a server's back); panics if it fails.
    pub fn execute(&self, url: &str, sql: &str) {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The connection string of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=zoftoken dbname={name}",
            self.port
        )
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn try_run(&self, program: &str, args: &[&std::ffi::OsStr]) -> bool {
        self.command(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) {
        let out = self.command(program).args(args).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!(
                "cannot run {} ({e}): install Debian's `postgresql` (./scripts/setup.sh) or set \
                 ZOFTOKEN_PG_BIN",
                self.bin.join(program).display()
            ),
        }
    }

    /// A process that waits for `pid` to end, then stops the cluster and removes its
    /// directory.
    fn reap_after(&mut self, pid: u32) {
        let data = self.dir.join("data");
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = match self.run_as {
            Some(user) => format!(
                "runuser -u {user} -- '{}' -D '{}' -m immediate stop",
                pg_ctl.display(),
                data.display()
            ),
            None => format!(
                "'{}' -D '{}' -m immediate stop",
                pg_ctl.display(),
                data.display()
            ),
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; \
             rm -rf '{}'",
            self.dir.display()
        );
        let spawned = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        assert!(spawned.is_ok(), "the cluster's reaper");
    }

    /// The cluster's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.owned {
            self.crash();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
