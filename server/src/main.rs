//! `zoftoken`: the ZofToken server (`serve`) and its admin command line.
#![forbid(unsafe_code)]

mod manuals;
mod serve;

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use zoftoken_admin::{Registry, SecretFormat, ServiceChanges, DEAD_LETTERS_DEFAULT};
use zoftoken_server::admin::{self, Admin, CommandError, Output};
use zoftoken_server::config;
use zoftoken_server::logging;

const AFTER_HELP: &str = "\
Admin commands work on the database while the server is stopped (the database is locked \
while it runs).

Exit codes: 0 success; 1 failure (storage, corruption, I/O); 2 invalid input, invalid \
configuration or a command that does not apply; 3 the database is in use by a running server; \
4 not found.

Environment: ZOFTOKEN_CONFIG (the configuration file), ZOFTOKEN_UDP_LISTEN, \
ZOFTOKEN_HTTP_LISTEN, ZOFTOKEN_DATA_DIR, ZOFTOKEN_DURABILITY, ZOFTOKEN_IO (auto|uring|mmsg), \
ZOFTOKEN_IO_THREADS, ZOFTOKEN_MASTER_KEY_FILE, \
ZOFTOKEN_MASTER_KEY (64 hex digits).";

/// ZofToken: a two-factor-authentication token server.
#[derive(Parser, Debug)]
#[command(name = "zoftoken", version, after_help = AFTER_HELP)]
struct Cli {
    /// The configuration file.
    #[arg(
        long,
        short,
        env = "ZOFTOKEN_CONFIG",
        default_value = "config.yaml",
        global = true
    )]
    config: PathBuf,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server: rebuild the tables from the database, then serve until SIGINT/SIGTERM.
    Serve,
    /// Services (editable with `config_source: database`).
    #[command(subcommand)]
    Service(ServiceCmd),
    /// API authkeys.
    #[command(subcommand)]
    Authkey(AuthkeyCmd),
    /// Tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Database maintenance.
    #[command(subcommand)]
    Db(DbCmd),
    /// Webhook dead letters and disabled endpoints (with the server stopped; while it runs,
    /// the same through the HTTP API under /v1/webhooks).
    #[command(subcommand)]
    Webhook(WebhookCmd),
    /// Check the configuration file and print it as understood (secrets redacted).
    CheckConfig,
    /// Use a token from this terminal exactly as the phone app would (needs no configuration
    /// file: the token's state lives in its own file).
    Device(zoftoken_client::DeviceArgs),
    /// The load generator.
    #[command(subcommand)]
    Loadgen(LoadgenCmd),
    /// Print the shell completion script to standard output (see README.md for where to
    /// put it).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages, `zoftoken.1` and one per command (`zoftoken-device-open.1`,
    /// …), into a directory.
    Man {
        /// The directory (created if missing), e.g. `man` or `/usr/local/share/man/man1`.
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum LoadgenCmd {
    /// Write a test token set into the (stopped) server's database: paired tokens whose
    /// secrets derive from the seed. Test instances only: anyone who knows the seed holds
    /// the tokens.
    Prepare(zoftoken_loadgen::PrepareArgs),
    /// Drive a server (or the echo baseline) with OPEN/CLOSE/STATUS requests of a prepared
    /// token set; live progress on stderr, a summary and a JSON line on stdout.
    Run(zoftoken_loadgen::LoadgenArgs),
}

#[derive(Args, Debug, Default)]
struct ServiceFields {
    /// Seconds a token stays open (0: an open is an instant event).
    #[arg(long)]
    window: Option<u32>,
    /// A `host:port` handed to apps (repeat for several; replaces the list).
    #[arg(long = "endpoint")]
    endpoints: Vec<String>,
    /// Whether users may set and use a duress PIN.
    #[arg(long)]
    duress_allowed: Option<bool>,
    /// URL of the details JSON for the app ("" removes it).
    #[arg(long)]
    details_url: Option<String>,
    /// One-time-code length (4–32).
    #[arg(long)]
    otp_length: Option<u8>,
    /// One-time-code period in seconds.
    #[arg(long)]
    otp_period: Option<u16>,
    /// One-time-code alphabet: digits or base32.
    #[arg(long)]
    otp_alphabet: Option<String>,
    /// Webhook URL ("" removes the webhook).
    #[arg(long)]
    webhook_url: Option<String>,
    /// Webhook secret (signs deliveries).
    #[arg(long)]
    webhook_secret: Option<String>,
    /// An event the webhook receives (repeat; none: all).
    #[arg(long = "webhook-event")]
    webhook_events: Vec<String>,
    /// Accept an http:// webhook URL to a non-loopback address (deliveries unencrypted).
    #[arg(long)]
    webhook_allow_insecure_http: Option<bool>,
    /// PEM file of extra CA certificates for the webhook's endpoint, read by the server
    /// ("" removes it).
    #[arg(long)]
    webhook_ca_file: Option<String>,
}

impl ServiceFields {
    fn changes(self) -> ServiceChanges {
        ServiceChanges {
            window: self.window,
            endpoints: (!self.endpoints.is_empty()).then_some(self.endpoints),
            duress_allowed: self.duress_allowed,
            details_url: self.details_url,
            otp_length: self.otp_length,
            otp_period: self.otp_period,
            otp_alphabet: self.otp_alphabet,
            webhook_url: self.webhook_url,
            webhook_secret: self.webhook_secret,
            webhook_events: (!self.webhook_events.is_empty()).then_some(self.webhook_events),
            webhook_allow_insecure_http: self.webhook_allow_insecure_http,
            webhook_ca_file: self.webhook_ca_file,
        }
    }
}

#[derive(Subcommand, Debug)]
enum ServiceCmd {
    /// Create a service.
    Create {
        /// Its name (part of every token id: cannot be changed later).
        name: String,
        #[command(flatten)]
        fields: ServiceFields,
    },
    /// Change a service (only the given fields).
    Edit {
        /// The service.
        name: String,
        #[command(flatten)]
        fields: ServiceFields,
    },
    /// Delete a service.
    Delete {
        /// The service.
        name: String,
        /// Delete even though tokens exist (they stay stored, unusable).
        #[arg(long)]
        force: bool,
    },
    /// List services (webhook secrets redacted).
    List,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Hex,
    Base64,
}

#[derive(Subcommand, Debug)]
enum AuthkeyCmd {
    /// Create an authkey: 256 random bits, printed once, stored only as a hash.
    Create {
        /// A name for listings and logs.
        name: String,
        /// May do every operation (otherwise: status, code validation, reading transactions).
        #[arg(long)]
        admin: bool,
        /// Regular expression the service name must match (anchored).
        #[arg(long, default_value = ".*")]
        service_mask: String,
        /// Regular expression the username must match (anchored).
        #[arg(long, default_value = ".*")]
        user_mask: String,
        /// How to print the secret.
        #[arg(long, value_enum, default_value = "hex")]
        format: Format,
    },
    /// List authkeys (names, rights, masks; never secrets).
    List,
    /// Revoke an authkey.
    Revoke {
        /// Its name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Enroll a user: prints the deeplink and the manual code for the app. With --from, every
    /// user of a file (CSV, first column; or JSON lines), in batches of 10 000, written to
    /// --out (a new file) as CSV for a mail merge (username, status, deeplink, manual code,
    /// expiry), through the database or, with --api, a running server's API.
    Enroll {
        /// The service.
        #[arg(long)]
        service: String,
        /// The username.
        #[arg(long, required_unless_present = "from", conflicts_with = "from")]
        user: Option<String>,
        /// A file of usernames: CSV (the first column; a header `username` is skipped) or
        /// JSON lines (`{"username": …}` or a string per line).
        #[arg(long, requires = "out")]
        from: Option<PathBuf>,
        /// Where to write the mail-merge CSV (created readable by its owner only).
        #[arg(long, requires = "from")]
        out: Option<PathBuf>,
        /// Skip users who already have a paired token or an enrollment still usable, so a run
        /// can be repeated without invalidating tokens in use.
        #[arg(long, requires = "from")]
        if_absent: bool,
        /// Enroll through the API of a running server at this URL (`http://host:port`,
        /// `https://…`) instead of the database, with the authkey in the environment variable
        /// ZOFTOKEN_AUTHKEY (admin right for the service). No configuration file is read.
        #[arg(long, requires = "from", value_name = "URL")]
        api: Option<String>,
        /// With --api: certificates (PEM) to trust beside the system's.
        #[arg(long, requires = "api")]
        ca_file: Option<String>,
    },
    /// List tokens.
    List {
        /// Only this service's.
        #[arg(long)]
        service: Option<String>,
    },
    /// Show one token's state.
    Show {
        /// The service.
        #[arg(long)]
        service: String,
        /// The username.
        #[arg(long)]
        user: String,
    },
    /// Delete a token (its app stops working).
    Delete {
        /// The service.
        #[arg(long)]
        service: String,
        /// The username.
        #[arg(long)]
        user: String,
    },
}

#[derive(Subcommand, Debug)]
enum WebhookCmd {
    /// Events whose delivery was given up after the retry schedule (oldest first).
    DeadLetters {
        /// At most this many (1000 at most).
        #[arg(long, default_value_t = DEAD_LETTERS_DEFAULT)]
        limit: usize,
    },
    /// Deliver dead letters again (same `webhook-id`): one by its id, or `--all`.
    Replay {
        /// The dead letter's id (as listed).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Drop a dead letter for good.
    Delete {
        /// The dead letter's id.
        id: String,
    },
    /// Endpoints disabled after answering 410 Gone.
    Disabled,
}

#[derive(Subcommand, Debug)]
enum DbCmd {
    /// Read every record: decode it, open every sealed value, check cross-references.
    Check,
    /// Export every record as JSON lines (secrets stay encrypted under the master key).
    Export {
        /// Output file ("-": standard output).
        #[arg(long, short, default_value = "-")]
        output: PathBuf,
    },
    /// Import an export into an empty database (same master key).
    Import {
        /// Input file ("-": standard input).
        #[arg(long, short, default_value = "-")]
        input: PathBuf,
    },
    /// Open a database whose write-ahead log is damaged, dropping every change from the
    /// damage on, and report what was dropped (the server refuses to start on such a log).
    Recover,
    /// Bring the database's schema to this build's version and say which it is (every server
    /// start does the same; a database of a newer version is refused untouched).
    Migrate,
}

/// `zoftoken db recover`: opens a damaged database with loss and says what was lost.
fn db_recover(loaded: &config::Loaded, json: bool) -> anyhow::Result<ExitCode> {
    let mut warnings = Vec::new();
    let (store, recovery) = zoftoken_server::open::recover_store(loaded, &env, &mut warnings)?;
    for w in &warnings {
        eprintln!("zoftoken: warning: {w}");
    }
    store.flush()?;
    let out = match &recovery.loss {
        Some(loss) => Output {
            human: format!(
                "recovered with loss: the write-ahead log {} was damaged at byte {}; {} write \
                 batches ({} records) after the damage were dropped. Check the tokens changed \
                 just before the failure.\n",
                loss.path.display(),
                loss.offset,
                loss.batches,
                loss.records
            ),
            json: serde_json::json!({
                "damaged": true,
                "wal_file": loss.path.display().to_string(),
                "offset": loss.offset,
                "dropped_batches": loss.batches,
                "dropped_records": loss.records,
            }),
        },
        None => Output {
            human: "nothing to recover: the write-ahead log is intact\n".into(),
            json: serde_json::json!({ "damaged": false, "dropped_batches": 0, "dropped_records": 0 }),
        },
    };
    print(&out, json);
    Ok(ExitCode::SUCCESS)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn print(out: &Output, json: bool) {
    if json {
        println!("{}", out.json);
    } else {
        print!("{}", out.human);
    }
}

/// Opens the database of the configuration and shows the warnings of opening it.
fn open_admin(loaded: config::Loaded) -> Result<Admin, CommandError> {
    let admin = Admin::open(loaded, &env)?;
    for w in &admin.warnings {
        eprintln!("zoftoken: warning: {w}");
    }
    Ok(admin)
}

/// The services and authkeys in effect: the file's (nothing opened), or the database's.
fn registry_of(loaded: config::Loaded) -> Result<Registry, CommandError> {
    Ok(match loaded.config.config_source {
        config::ConfigSource::File => admin::file_registry(&loaded),
        config::ConfigSource::Database => open_admin(loaded)?.registry(),
    })
}

fn service_command(registry: &Registry, command: ServiceCmd) -> Result<Output, CommandError> {
    match command {
        ServiceCmd::Create { name, fields } => {
            admin::service_create(registry, &name, fields.changes())
        }
        ServiceCmd::Edit { name, fields } => admin::service_edit(registry, &name, fields.changes()),
        ServiceCmd::Delete { name, force } => admin::service_delete(registry, &name, force),
        ServiceCmd::List => admin::service_list(registry),
    }
}

fn authkey_command(registry: &Registry, command: AuthkeyCmd) -> Result<Output, CommandError> {
    match command {
        AuthkeyCmd::Create {
            name,
            admin: is_admin,
            service_mask,
            user_mask,
            format,
        } => admin::authkey_create(
            registry,
            &name,
            is_admin,
            &service_mask,
            &user_mask,
            secret_format(format),
        ),
        AuthkeyCmd::List => admin::authkey_list(registry),
        AuthkeyCmd::Revoke { name } => admin::authkey_revoke(registry, &name),
    }
}

fn secret_format(format: Format) -> SecretFormat {
    match format {
        Format::Hex => SecretFormat::Hex,
        Format::Base64 => SecretFormat::Base64,
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn main() -> ExitCode {
    // Whatever this process creates (RocksDB's files, exports, key files, the device's state)
    // is for its user only: files 0600, directories 0700, whatever umask it was started with.
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    // The phone's side, the load generator, completions and manual pages need no server
    // configuration.
    match &cli.command {
        Command::Completions { shell } => return manuals::completions(*shell, Cli::command()),
        Command::Man { dir } => {
            return manuals::man_pages(Cli::command(), dir).unwrap_or_else(|e| {
                eprintln!("zoftoken: {e:#}");
                ExitCode::from(1)
            })
        }
        Command::Device(args) => {
            let mut args = args.clone();
            args.json = cli.json;
            return exit_code(args.main());
        }
        Command::Token(TokenCmd::Enroll {
            service,
            from: Some(from),
            out: Some(out),
            if_absent,
            api: Some(api),
            ca_file,
            ..
        }) => {
            let key =
                zeroize::Zeroizing::new(std::env::var("ZOFTOKEN_AUTHKEY").unwrap_or_default());
            let api = admin::ApiTarget {
                url: api,
                key: &key,
                ca_file: ca_file.as_deref(),
            };
            let job = admin::EnrollFile {
                service,
                from,
                out,
                if_absent: *if_absent,
            };
            return match admin::enroll_file_through_api(api, job, &mut admin::terminal_progress()) {
                Ok(out) => {
                    print(&out, cli.json);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("zoftoken: {e}");
                    ExitCode::from(e.exit_code())
                }
            };
        }
        Command::Loadgen(LoadgenCmd::Run(args)) => {
            let mut args = args.clone();
            args.json = cli.json;
            // Without --service: the first service of the configuration, if there is one; the
            // configuration's master key gives the PIN keys of the generated OPENs.
            let loaded = config::load(&cli.config, &env).ok();
            let first = loaded
                .as_ref()
                .and_then(|l| l.services.first().map(|s| s.name.clone()));
            let key_file = loaded.as_ref().map(|l| l.master_key_file());
            return exit_code(args.run_cli_with(first.as_deref(), key_file.as_deref()));
        }
        _ => {}
    }
    let loaded = match config::load(&cli.config, &env) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("zoftoken: {e}");
            return ExitCode::from(2);
        }
    };
    // Logs (the server's, and what the libraries report during a command) on standard
    // error; a command's own output stays on standard output.
    let filter = logging::directives(loaded.config.log_filter.as_deref(), &env);
    if let Err(e) = logging::init(loaded.config.log_format, &filter) {
        eprintln!("zoftoken: {e}");
        return ExitCode::from(2);
    }
    match run(cli, loaded) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zoftoken: {e:#}");
            ExitCode::from(admin::exit_code(&e))
        }
    }
}

fn run(cli: Cli, loaded: config::Loaded) -> anyhow::Result<ExitCode> {
    let json = cli.json;
    if let Command::CheckConfig = cli.command {
        let shown = config::shown(&loaded.config);
        if json {
            println!("{}", serde_json::to_string(&shown)?);
        } else {
            print!("{}", serde_norway::to_string(&shown)?);
            eprintln!("configuration OK");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Serve = cli.command {
        return serve::serve(&cli.config, loaded);
    }
    if let Command::Db(DbCmd::Recover) = cli.command {
        return db_recover(&loaded, json);
    }
    // Services and authkeys: with `config_source: file` they live in the file, which is all
    // these commands read (listing, or creating an authkey entry to paste; changes are
    // refused): they open no database, so they create no data directory and no master key.
    let command = match cli.command {
        Command::Service(c) => {
            print(&service_command(&registry_of(loaded)?, c)?, json);
            return Ok(ExitCode::SUCCESS);
        }
        Command::Authkey(c) => {
            print(&authkey_command(&registry_of(loaded)?, c)?, json);
            return Ok(ExitCode::SUCCESS);
        }
        other => other,
    };
    // For `loadgen prepare` (file mode; with the database mode --service names it).
    let first_service = loaded.services.first().map(|s| s.name.clone());
    let admin = open_admin(loaded)?;
    let now = zoftoken_server::now_ms();
    let out = match command {
        // Handled before: `serve`, `check-config`, services and authkeys, and those needing no
        // configuration.
        Command::Serve
        | Command::CheckConfig
        | Command::Device(_)
        | Command::Loadgen(LoadgenCmd::Run(_))
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::Service(_)
        | Command::Authkey(_) => return Ok(ExitCode::SUCCESS),
        Command::Token(c) => match c {
            TokenCmd::Enroll {
                service,
                user,
                from,
                out,
                if_absent,
                api: None,
                ..
            } => match (user, from, out) {
                (_, Some(from), Some(out)) => {
                    let job = admin::EnrollFile {
                        service: &service,
                        from: &from,
                        out: &out,
                        if_absent,
                    };
                    admin.token_enroll_file(now, job, &mut admin::terminal_progress())?
                }
                (Some(user), _, _) => admin.token_enroll(now, &service, &user)?,
                _ => anyhow::bail!("give --user, or --from and --out"),
            },
            // With --from and --out, handled before the configuration is read.
            TokenCmd::Enroll { api: Some(_), .. } => anyhow::bail!("--api needs --from and --out"),
            TokenCmd::List { service } => admin.token_list(service.as_deref())?,
            TokenCmd::Show { service, user } => admin.token_show(&service, &user)?,
            TokenCmd::Delete { service, user } => admin.token_delete(now, &service, &user)?,
        },
        Command::Loadgen(LoadgenCmd::Prepare(p)) => {
            let set = p
                .token_set(first_service.as_deref())
                .ok_or_else(|| anyhow::anyhow!("no service configured: give --service"))?;
            let started = std::time::Instant::now();
            let n = admin.prepare_load_tokens(&set, &mut |done| {
                if done % 100_000 == 0 {
                    eprintln!("zoftoken: … {done} tokens written");
                }
            })?;
            Output {
                human: format!(
                    "wrote {n} test tokens of service `{}` (seed {}) in {:.1} s\n",
                    set.service(),
                    p.seed,
                    started.elapsed().as_secs_f64()
                ),
                json: serde_json::json!({ "tokens": n, "service": set.service(), "seed": p.seed }),
            }
        }
        Command::Webhook(c) => match c {
            WebhookCmd::DeadLetters { limit } => admin.webhook_dead_letters(limit)?,
            WebhookCmd::Replay { id, .. } => admin.webhook_replay(id.as_deref())?,
            WebhookCmd::Delete { id } => admin.webhook_delete(&id)?,
            WebhookCmd::Disabled => admin.webhook_disabled()?,
        },
        Command::Db(c) => match c {
            DbCmd::Recover => return Ok(ExitCode::SUCCESS),
            DbCmd::Migrate => admin.db_migrate(),
            DbCmd::Check => {
                let (out, ok) = admin.db_check()?;
                print(&out, json);
                return Ok(if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                });
            }
            DbCmd::Export { output } => {
                let out = if output.as_os_str() == "-" {
                    let stdout = std::io::stdout();
                    let mut lock = std::io::BufWriter::new(stdout.lock());
                    let o = admin.db_export(&mut lock)?;
                    lock.flush()?;
                    o
                } else {
                    // The export holds every record (secrets sealed): owner only.
                    let f = zoftoken_server::open::create_private_file(&output)
                        .with_context(|| format!("{}", output.display()))?;
                    let mut w = std::io::BufWriter::new(f);
                    let o = admin.db_export(&mut w)?;
                    w.flush()?;
                    o
                };
                // The export itself may be on stdout: the summary goes to stderr.
                eprint!("{}", out.human);
                return Ok(ExitCode::SUCCESS);
            }
            DbCmd::Import { input } => {
                let mut reader: Box<dyn BufRead> = if input.as_os_str() == "-" {
                    Box::new(std::io::BufReader::new(std::io::stdin()))
                } else {
                    Box::new(std::io::BufReader::new(std::fs::File::open(&input)?))
                };
                admin.db_import(&mut reader)?
            }
        },
    };
    print(&out, json);
    Ok(ExitCode::SUCCESS)
}
