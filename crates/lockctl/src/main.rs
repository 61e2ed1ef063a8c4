//! `lockctl`: the lockman admin CLI — see, run under, break and clean locks
//! and flags on any backend (Unix).
//!
//! ```sh
//! lockctl --url file:///run/app/locks run nightly -- /usr/local/bin/backup
//! lockctl --url redis://127.0.0.1:6379/0 list
//! lockctl status inverter_read            # exit 0 free, 1 held, 2 stale
//! lockctl release --force --reason 'hung since Monday' inverter_read
//! lockctl cleanup --dry-run
//! lockctl flag set .FCRunning1 --ttl 1h --value 'job-7'
//! ```
//!
//! The backend comes from lockman's configuration (`lockman.toml`,
//! `LOCKMAN_*`, see `lockman::Config`), `--config` and `--url`. Exit codes
//! and messages are listed in `lockctl --help` and the README ([`exit`]).

mod child;
mod cli;
mod exit;
mod flags;
mod inspect;
mod output;
mod run;
mod settings;
mod watch;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::exit::Failure;

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|arg| arg == child::REAPER_ARG) {
        return child::reaper_main();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; mistakes to stderr with 64 (EX_USAGE).
            let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    settings::init_tracing(cli.global.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(Failure::new(exit::OSERR, format!("cannot start the async runtime: {e}"))),
    };
    let outcome = runtime.block_on(dispatch(&cli));
    // Background work (a release on drop, a metrics listener) gets a moment, not forever.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => fail(failure),
    }
}

fn fail(failure: Failure) -> ExitCode {
    if !failure.message.is_empty() {
        output::note(&failure.message);
    }
    ExitCode::from(failure.code)
}

async fn dispatch(cli: &Cli) -> Result<u8, Failure> {
    // The exporter must be the global recorder before lockman records anything.
    let metrics_addr = match &cli.command {
        Command::Run(args) => args.metrics_addr,
        Command::Watch(args) => args.metrics_addr,
        _ => None,
    };
    if let Some(addr) = metrics_addr {
        settings::serve_metrics(addr)?;
    }
    let backends = settings::connect(&cli.global).await?;
    tracing::info!(backend = %backends.chosen, "connected");
    if !backends.locks.capabilities().cross_process {
        output::note(&format!(
            "note: {} locks live inside one process: this lockctl sees and excludes only its own, not other \
             processes' (use file://, legacy-file:// or redis:// to share locks)",
            backends.locks.name()
        ));
    }
    let json = cli.global.json;
    match &cli.command {
        Command::List => inspect::list(&backends, json).await,
        Command::Status { resource } => inspect::status(&backends, resource, json).await,
        Command::Run(args) => run::run(&backends, args).await,
        Command::Release(args) => inspect::release(&backends, args, json).await,
        Command::Cleanup { dry_run } => inspect::cleanup(&backends, *dry_run, json).await,
        Command::Flag { command } => flags::flag(&backends, command, json).await,
        Command::Watch(args) => watch::watch(&backends, args, json).await,
    }
}
