//! `sluice`: the gateway binary.
//!
//! `sluice --config FILE` runs the gateway; `sluice check --config FILE` validates a
//! configuration and exits.

mod admin;
mod connections;
mod gateway;
mod llm;
mod respond;
mod server;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc rather than the system allocator: the request path allocates many small, short-lived
/// buffers across threads, where glibc's malloc showed as ~14% of the gateway's samples under load
/// (perf/RESULTS.md). Code Mode workers (this binary in worker mode) use it too; CPython keeps its
/// own allocator.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`. Pingora gives every HTTP/1.1 body it reads a fresh
/// 64 KiB buffer, one or two per request. jemalloc's thread caches stop at 32 KiB by default,
/// so each of those buffers went to the shared arena and back (about 3,000 instructions a
/// request under callgrind, where glibc took a few hundred). Caching sizes up to 128 KiB per
/// thread keeps them there; the cache holds a bounded number of buffers per size and is
/// trimmed when idle.
#[cfg(not(target_env = "msvc"))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_OPTIONS: &[u8; 18] = b"tcache_max:131072\0";

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "An edge gateway for AI traffic (MCP and LLM APIs)"
)]
struct Cli {
    /// The configuration file.
    #[arg(
        long,
        short,
        global = true,
        default_value = "conf/examples/quickstart.yaml"
    )]
    config: PathBuf,
    /// Take over the listening sockets of the Sluice running on the same `upgrade_sock`
    /// (send that one SIGQUIT once this one waits): a binary upgrade without a dropped
    /// connection.
    #[arg(long, short, global = true)]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration file and exit (non-zero with the file, line and problem).
    Check,
    /// Run the gateway (the default).
    Run,
    /// A Code Mode worker (started by the gateway itself; runs one Python script).
    #[command(hide = true)]
    CodeWorker {
        /// Confine this process, try every escape, print what happened (for tests).
        #[arg(long)]
        probe: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::CodeWorker { probe: false } => sluice_filters::codemode::worker::main(),
        Command::CodeWorker { probe: true } => sluice_filters::codemode::worker::probe(),
        Command::Check => match sluice_conf::load(&cli.config) {
            Ok(config) => {
                println!(
                    "{}: OK ({} listener(s), {} MCP server(s), {} LLM provider(s))",
                    cli.config.display(),
                    config.listen.len(),
                    config.mcp.servers.len(),
                    config.providers.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run => {
            init_logging();
            match server::run(&cli.config, cli.upgrade) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sluice: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
