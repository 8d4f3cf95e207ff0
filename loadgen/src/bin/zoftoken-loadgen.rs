//! `zoftoken-loadgen`: the load generator on its own (the same options as `zoftoken loadgen`),
//! for machines without the server's build (RocksDB). `--service` is required here.
#![forbid(unsafe_code)]

use clap::Parser;
use zoftoken_loadgen::LoadgenArgs;

/// Drives a ZofToken server (or the `udp-echo` baseline) with OPEN/CLOSE/STATUS requests.
#[derive(Parser, Debug)]
#[command(name = "zoftoken-loadgen")]
struct Cli {
    #[command(flatten)]
    args: LoadgenArgs,
    /// Print only the JSON line on stdout (no human summary).
    #[arg(long)]
    json: bool,
}

fn main() -> std::process::ExitCode {
    let mut cli = Cli::parse();
    cli.args.json = cli.json;
    let code = cli.args.main();
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
