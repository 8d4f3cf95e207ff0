//! `udp-echo`: the load test's baseline server. Receives batches of up to 32 datagrams on
//! `SO_REUSEPORT` sockets (one thread each, `zoftoken_net` driver as the server's) and sends
//! each datagram back to its peer: no parsing, no crypto, no state. Runs until killed.
//!
//!     udp-echo --listen 127.0.0.1:4500 [--threads N (default: cores)] [--io auto|uring|mmsg]
//!              [--aead] [--entries N] [--log FILE]   (the floor: see `echo::Floor`)
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use clap::Parser;
use zoftoken_net::{probe_uring, DriverKind};

/// Which IO driver.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Io {
    /// io_uring when the kernel allows it, else recvmmsg.
    Auto,
    /// io_uring (fails if unavailable).
    Uring,
    /// recvmmsg/sendmmsg.
    Mmsg,
}

/// UDP echo server with the ZofToken server's batching (the load test's baseline).
#[derive(Parser, Debug)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4500")]
    listen: SocketAddr,
    /// IO threads, one socket each (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// IO driver.
    #[arg(long, value_enum, default_value_t = Io::Auto)]
    io: Io,
    /// The floor (see `echo::Floor`): one AEAD open and seal per datagram.
    #[arg(long)]
    aead: bool,
    /// The floor: a table of this many 224-byte entries per thread, one read and written per
    /// datagram.
    #[arg(long, default_value_t = 0)]
    entries: usize,
    /// The floor: one `write` per batch of a 64-byte record per OPEN/CLOSE to `FILE.N` (N: the
    /// thread), before the batch is echoed.
    #[arg(long, value_name = "FILE")]
    log: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let kind = match args.io {
        Io::Mmsg => DriverKind::Mmsg,
        Io::Uring => match probe_uring() {
            Ok(()) => DriverKind::Uring,
            Err(e) => {
                eprintln!("udp-echo: io_uring unavailable: {e}");
                return ExitCode::from(1);
            }
        },
        Io::Auto => match probe_uring() {
            Ok(()) => DriverKind::Uring,
            Err(e) => {
                eprintln!("udp-echo: io_uring unavailable ({e}), using recvmmsg");
                DriverKind::Mmsg
            }
        },
    };
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let (drivers, addr) = match zoftoken_bench::echo::open(kind, args.listen, threads) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("udp-echo: {}: {e}", args.listen);
            return ExitCode::from(1);
        }
    };
    eprintln!(
        "udp-echo: {addr}, {} thread(s), {}{}",
        drivers.len(),
        drivers.first().map_or("?", |d| d.name()),
        if args.aead || args.entries > 0 || args.log.is_some() {
            format!(
                "; floor: aead {}, {} entries, log {}",
                args.aead,
                args.entries,
                args.log
                    .as_ref()
                    .map_or("none".into(), |p| p.display().to_string())
            )
        } else {
            String::new()
        }
    );
    let mut floors = Vec::with_capacity(drivers.len());
    for i in 0..drivers.len() {
        let log = match &args.log {
            None => None,
            Some(path) => {
                let mut name = path.clone().into_os_string();
                name.push(format!(".{i}"));
                match std::fs::File::create(&name) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        eprintln!("udp-echo: {}: {e}", std::path::Path::new(&name).display());
                        return ExitCode::from(1);
                    }
                }
            }
        };
        floors.push(zoftoken_bench::echo::Floor::new(
            args.aead,
            args.entries,
            log,
        ));
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for (mut d, mut floor) in drivers.into_iter().zip(floors) {
            let stop = &stop;
            s.spawn(move || zoftoken_bench::echo::serve(d.as_mut(), stop, &mut floor));
        }
    });
    ExitCode::SUCCESS
}
