//! `lockctl run`: hold a lock while a command runs, like `flock(1)`.

use std::ffi::OsStr;
use std::future::Future;
use std::pin::pin;
use std::process::ExitStatus;
use std::time::Duration;

use lockman::{AcquireOptions, Backends, Capabilities, LockError, LockGuard};
use rustix::process::Signal;
use tokio::signal::unix::SignalKind;

use crate::child::{self, StartError, Started};
use crate::cli::RunArgs;
use crate::exit::{self, Failure};
use crate::output;
use crate::watch::listen;

/// Acquires, runs the command, releases; the exit code is the command's
/// (or one of lockctl's own, see [`exit`]).
pub async fn run(backends: &Backends, args: &RunArgs) -> Result<u8, Failure> {
    let Some((program, arguments)) = args.command.split_first() else {
        return Err(Failure::new(exit::USAGE, "no command to run: put it after `--`"));
    };
    let mut signals = Signals::new()?;
    let caps = backends.locks.capabilities();
    if args.lease.is_some() && !caps.leases {
        output::note(&format!(
            "note: --lease has no effect on the {} backend: its locks last until released or lockctl exits",
            backends.locks.name()
        ));
    }

    tracing::info!(resource = %args.resource, "acquiring the lock");
    let guard = tokio::select! {
        acquired = backends.locks.acquire(&args.resource, acquire_options(backends, args, program)) => match acquired {
            Ok(guard) => guard,
            Err(e) if e.is_timeout() => return Err(Failure::new(args.conflict_exit_code, exit::one_line(&e.to_string()))),
            Err(e) => return Err(e.into()),
        },
        signal = signals.recv() => {
            return Err(Failure::new(
                signal.exit_code(),
                format!("interrupted by {} while waiting for {}", signal.name, output::quoted(&args.resource)),
            ));
        }
    };
    tracing::info!(resource = %args.resource, token = %guard.fencing_token(), "lock acquired; starting the command");

    let mut started = match child::start(&guard, &args.resource, program, arguments, args.keep_env).await {
        Ok(started) => started,
        Err(e) => {
            let (code, message) = match e {
                StartError::Command(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    (exit::NOT_FOUND, format!("cannot run {}: {e}", program.to_string_lossy()))
                }
                StartError::Command(e) => {
                    (exit::CANNOT_EXECUTE, format!("cannot run {}: {e}", program.to_string_lossy()))
                }
                StartError::Reaper(e) => (
                    exit::OSERR,
                    format!(
                        "did not run {}: cannot start the reaper that would stop it if lockctl were killed ({e})",
                        program.to_string_lossy()
                    ),
                ),
            };
            if let Err(e) = guard.release().await {
                output::note(&format!("also: {e}"));
            }
            return Err(Failure::new(code, message));
        }
    };

    let mut lost = false;
    let status = {
        let mut renewal = pin!(keep_extending(&guard, args.lease, &caps));
        let mut lost_signal = pin!(guard.lost());
        loop {
            tokio::select! {
                status = started.child.wait() => break status,
                signal = signals.recv() => forward(&started, signal),
                _ = &mut lost_signal, if !lost => {
                    lost = true;
                    report_loss(&guard, &started, args.keep_running_if_lost);
                }
                () = &mut renewal => {}
            }
        }
    };
    let status = match status {
        Ok(status) => status,
        Err(e) => {
            // The command may still run: stop it (dropping `started` makes the
            // reaper, if any, kill its group) before the lock goes.
            let _ = started.signal(Signal::KILL);
            drop(started);
            drop(guard);
            return Err(Failure::new(exit::OSERR, format!("cannot wait for the command: {e}")));
        }
    };
    started.finish().await;

    match guard.release().await {
        Ok(()) if !lost => Ok(exit::of_status(status)),
        Ok(()) => Err(lost_exit(status)),
        Err(e) if e.is_lost() => {
            if !lost {
                // Found out only now (e.g. a lease that ran out unnoticed).
                output::note(&e.to_string());
            }
            Err(lost_exit(status))
        }
        Err(e) if lost => {
            tracing::warn!(error = %e, "releasing a lost lock");
            Err(lost_exit(status))
        }
        Err(e) => {
            // The work was done under the lock; only the release failed (a
            // lease, if any, still ends the lock), so the command's status stands.
            output::note(&format!("warning: the command finished, but releasing the lock failed: {e}"));
            Ok(exit::of_status(status))
        }
    }
}

/// The options: wait (`--no-wait`, `--wait`, else the configured default),
/// lease, mode (`--shared`, `--permits`), purpose.
fn acquire_options(backends: &Backends, args: &RunArgs, program: &OsStr) -> AcquireOptions {
    let mut options = backends.acquire_options();
    if args.no_wait {
        options = options.no_wait();
    } else if let Some(wait) = args.wait {
        options = options.wait(wait);
    }
    if let Some(lease) = args.lease {
        options = options.lease(lease);
    }
    if args.shared {
        options = options.shared();
    } else if let Some(permits) = args.permits {
        options = options.permits(permits);
    }
    // By default only the program name, not its arguments: the purpose is
    // stored in the backend (and shown on other hosts), arguments may hold secrets.
    let purpose = args.purpose.clone().unwrap_or_else(|| format!("lockctl run {}", program.to_string_lossy()));
    options.purpose(purpose)
}

/// Says at once that the lock is lost, and stops the command unless told not to.
fn report_loss(guard: &LockGuard, started: &Started, keep_running: bool) {
    let lost = match guard.check() {
        Err(e) => e.to_string(),
        Ok(()) => format!("the lock on {} was lost", output::quoted(guard.resource())),
    };
    let action = match started.child.id() {
        Some(pid) if keep_running => format!("the command (pid {pid}) keeps running (--keep-running-if-lost)"),
        Some(_) => match started.signal(Signal::TERM) {
            Some(pid) if started.shares_our_group() => format!("sent SIGTERM to the command (pid {pid})"),
            Some(pid) => format!("sent SIGTERM to the command (pid {pid}) and its process group"),
            None => "the command had already exited".to_owned(),
        },
        None => "the command had already exited".to_owned(),
    };
    output::note(&format!("{lost} — {action}; lockctl will exit {}", exit::LOST));
}

/// The failure `run` ends with after a loss.
fn lost_exit(status: ExitStatus) -> Failure {
    Failure::new(
        exit::LOST,
        format!(
            "the lock was lost while the command ran; the command exited with status {} (exit code {})",
            describe(status),
            exit::LOST
        ),
    )
}

/// `0`, `3`, `killed by signal 15`.
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;

    match (status.code(), status.signal()) {
        (Some(code), _) => code.to_string(),
        (None, Some(signal)) => format!("{} (killed by signal {signal})", exit::of_status(status)),
        _ => "unknown".to_owned(),
    }
}

/// With `--lease`, extends the lease every third of it; never completes
/// (a loss is reported through the guard's `lost()`).
fn keep_extending<'a>(
    guard: &'a LockGuard,
    lease: Option<Duration>,
    caps: &Capabilities,
) -> impl Future<Output = ()> + 'a {
    let renewable = caps.leases && caps.renewal;
    async move {
        let Some(lease) = lease.filter(|_| renewable) else {
            return std::future::pending().await;
        };
        let period = lease / 3;
        let mut next = period;
        loop {
            tokio::time::sleep(next).await;
            next = period;
            match guard.extend(lease).await {
                Ok(()) => tracing::debug!(resource = guard.resource(), ?lease, "lease extended"),
                // `lost()` fires too, and reports it.
                Err(e) if e.is_lost() => return std::future::pending().await,
                Err(LockError::Config(message)) => {
                    output::note(&format!("cannot extend the lease, so it will run out: {message}"));
                    return std::future::pending().await;
                }
                Err(e) => {
                    // Try again soon; if the lease runs out first, the guard reports the loss.
                    tracing::warn!(resource = guard.resource(), error = %e, "extending the lease failed; retrying");
                    next = period / 3;
                }
            }
        }
    }
}

/// A signal lockctl forwards.
#[derive(Clone, Copy, Debug)]
struct Forwarded {
    signal: Signal,
    name: &'static str,
}

impl Forwarded {
    /// 128 + the signal number, as a shell reports a process it killed.
    fn exit_code(self) -> u8 {
        (128 + self.signal.as_raw()).clamp(0, 255) as u8
    }
}

/// The signals `run` catches and forwards to the command.
struct Signals {
    streams: Vec<(tokio::signal::unix::Signal, Forwarded)>,
}

impl Signals {
    fn new() -> Result<Self, Failure> {
        let wanted = [
            (SignalKind::interrupt(), Signal::INT, "SIGINT"),
            (SignalKind::terminate(), Signal::TERM, "SIGTERM"),
            (SignalKind::hangup(), Signal::HUP, "SIGHUP"),
            (SignalKind::user_defined1(), Signal::USR1, "SIGUSR1"),
            (SignalKind::user_defined2(), Signal::USR2, "SIGUSR2"),
        ];
        let mut streams = Vec::with_capacity(wanted.len());
        for (kind, signal, name) in wanted {
            streams.push((listen(kind)?, Forwarded { signal, name }));
        }
        Ok(Signals { streams })
    }

    /// The next signal received.
    async fn recv(&mut self) -> Forwarded {
        std::future::poll_fn(|cx| {
            for (stream, forwarded) in &mut self.streams {
                if stream.poll_recv(cx).is_ready() {
                    return std::task::Poll::Ready(*forwarded);
                }
            }
            std::task::Poll::Pending
        })
        .await
    }
}

/// Passes `signal` on to the command (and its process group, if it has its
/// own), unless the terminal already sent it.
fn forward(started: &Started, signal: Forwarded) {
    let Some(pid) = started.child.id() else { return };
    if signal.signal == Signal::INT && started.shares_our_group() && terminal_signals_our_group() {
        tracing::debug!("SIGINT came from the terminal, which sent it to the command too; not forwarding");
        return;
    }
    tracing::info!(signal = signal.name, pid, "forwarding a signal to the command");
    started.signal(signal.signal);
}

/// Whether lockctl runs in its terminal's foreground process group: then
/// Ctrl-C sends SIGINT to the whole group — the command included — and
/// forwarding it would deliver it twice.
fn terminal_signals_our_group() -> bool {
    use rustix::termios::tcgetpgrp;

    let ours = rustix::process::getpgrp();
    tcgetpgrp(std::io::stdin()) == Ok(ours)
        || tcgetpgrp(std::io::stdout()) == Ok(ours)
        || tcgetpgrp(std::io::stderr()) == Ok(ours)
}
