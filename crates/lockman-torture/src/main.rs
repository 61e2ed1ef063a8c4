//! `lockman-torture`: runs real worker processes against a lockman backend
//! while injecting faults on a seeded schedule, then checks the merged
//! histories for broken guarantees. See TORTURE.md.
//!
//! ```text
//! lockman-torture --backend redis --workers 8 --duration 60s --faults kill,stop,restart,net --seed 7
//! ```

mod check;
mod history;
mod mode;
mod old;
mod run;
mod store;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::history::Kind;

/// Fault-injection harness and history checker for lockman.
#[derive(Debug, Parser)]
#[command(name = "lockman-torture", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    #[command(flatten)]
    run: run::RunArgs,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// One worker process (started by the harness).
    #[command(hide = true)]
    Worker(WorkerArgs),
    /// One old daemon following a legacy protocol (started by the harness).
    #[command(hide = true)]
    Old(OldArgs),
}

/// What every participant process is told.
#[derive(Debug, Args)]
struct ParticipantArgs {
    #[arg(long)]
    name: String,
    #[arg(long)]
    log: PathBuf,
    #[arg(long)]
    until_us: u64,
    #[arg(long)]
    seed: u64,
    #[arg(long)]
    hold_min_ms: u64,
    #[arg(long)]
    hold_max_ms: u64,
}

#[derive(Debug, Args)]
struct WorkerArgs {
    #[command(flatten)]
    common: ParticipantArgs,
    #[arg(long)]
    url: String,
    #[arg(long)]
    bridge: Option<String>,
    #[arg(long)]
    resource: String,
    #[arg(long)]
    counter: PathBuf,
    #[arg(long)]
    wait_ms: u64,
    #[arg(long, default_value_t = 0)]
    idle_min_ms: u64,
    #[arg(long, default_value_t = 2)]
    idle_max_ms: u64,
    #[arg(long)]
    extend_percent: u32,
    #[arg(long)]
    no_lock: bool,
    #[arg(long)]
    unchecked_tokens: bool,
    #[arg(long, default_value = "exclusive")]
    mode: mode::RunMode,
}

#[derive(Debug, Args)]
struct OldArgs {
    #[command(flatten)]
    common: ParticipantArgs,
    /// `a` or `b`.
    #[arg(long)]
    protocol: String,
    #[arg(long)]
    path: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.role {
        Some(Role::Worker(args)) => {
            die_with_parent();
            let common = args.common;
            let spec = worker::WorkerSpec {
                name: common.name,
                url: args.url,
                bridge: args.bridge,
                resource: args.resource,
                counter: args.counter,
                log: common.log,
                until_us: common.until_us,
                seed: common.seed,
                hold_ms: (common.hold_min_ms, common.hold_max_ms),
                wait: Duration::from_millis(args.wait_ms),
                idle_ms: (args.idle_min_ms, args.idle_max_ms),
                extend_percent: args.extend_percent,
                no_lock: args.no_lock,
                check_tokens: !args.unchecked_tokens,
                mode: args.mode,
            };
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => return fail(&format!("cannot start a runtime: {error}")),
            };
            match runtime.block_on(worker::run(spec, None)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail(&error),
            }
        }
        Some(Role::Old(args)) => {
            die_with_parent();
            let kind = if args.protocol == "b" { Kind::OldB } else { Kind::OldA };
            let common = args.common;
            let spec = old::OldSpec {
                name: common.name,
                kind,
                path: args.path,
                log: common.log,
                until_us: common.until_us,
                seed: common.seed,
                hold_ms: (common.hold_min_ms, common.hold_max_ms),
            };
            match old::run(&spec) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail(&error),
            }
        }
        None => run::main(cli.run),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("lockman-torture: {message}");
    ExitCode::from(2)
}

/// A participant never outlives the harness: if the harness dies, the kernel
/// kills it (Linux), so no worker is left behind holding or waiting.
fn die_with_parent() {
    #[cfg(target_os = "linux")]
    {
        let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    }
}
