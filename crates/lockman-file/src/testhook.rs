//! Named points in the backends where the crate's own tests can step in at
//! an exact moment of an interleaving — as another process would, creating
//! or breaking a file between two of our system calls — instead of hoping a
//! race happens. Outside `cfg(test)`, [`point`] is an empty inline function.

use std::path::Path;

#[cfg(test)]
pub(crate) use imp::{arm, pause};

/// Runs (once) the action a test armed for `name` on `path`, if any.
#[cfg(not(test))]
#[inline(always)]
pub(crate) fn point(_name: &'static str, _path: &Path) {}

/// Runs (once) the action a test armed for `name` on `path`, if any.
#[cfg(test)]
pub(crate) fn point(name: &'static str, path: &Path) {
    imp::run(name, path);
}

#[cfg(test)]
mod imp {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use parking_lot::Mutex;

    type Action = Box<dyn FnOnce() + Send>;

    /// Armed actions by point and path: tests run in parallel, each in its
    /// own directory, so the path keeps them apart.
    static ARMED: Mutex<Option<HashMap<(&'static str, PathBuf), Action>>> = Mutex::new(None);

    pub(crate) fn run(name: &'static str, path: &Path) {
        let action = ARMED.lock().as_mut().and_then(|armed| armed.remove(&(name, path.to_owned())));
        if let Some(action) = action {
            action();
        }
    }

    /// Runs `action` the next time the code passes point `name` for `path`.
    pub(crate) fn arm(name: &'static str, path: &Path, action: impl FnOnce() + Send + 'static) {
        ARMED.lock().get_or_insert_with(HashMap::new).insert((name, path.to_owned()), Box::new(action));
    }

    /// A point where the code stops until the test resumes it.
    pub(crate) struct Paused {
        reached: Option<tokio::sync::oneshot::Receiver<()>>,
        resume: std::sync::mpsc::Sender<()>,
    }

    impl Paused {
        /// Waits until the code is stopped at the point.
        pub(crate) async fn reached(&mut self) {
            let reached = self.reached.take().expect("reached() is awaited once");
            tokio::time::timeout(Duration::from_secs(20), reached)
                .await
                .expect("the code never reached the point")
                .expect("the point was dropped");
        }

        /// Lets the stopped code go on.
        pub(crate) fn resume(self) {
            let _ = self.resume.send(());
        }
    }

    /// Stops the code (its thread: run it on a multi-threaded runtime) the
    /// next time it passes point `name` for `path`, until resumed. It goes
    /// on by itself after 20 s, so a failing test cannot hang.
    pub(crate) fn pause(name: &'static str, path: &Path) -> Paused {
        let (reached_tx, reached_rx) = tokio::sync::oneshot::channel();
        let (resume_tx, resume_rx) = std::sync::mpsc::channel::<()>();
        arm(name, path, move || {
            let _ = reached_tx.send(());
            let _ = resume_rx.recv_timeout(Duration::from_secs(20));
        });
        Paused { reached: Some(reached_rx), resume: resume_tx }
    }
}
