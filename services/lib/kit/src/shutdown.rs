//! Graceful shutdown: SIGINT/SIGTERM become a [`CancellationToken`], and
//! [`Shutdown`] stops the process's tasks **stage by stage**, within one
//! grace period ([`crate::Config::shutdown_grace`]).
//!
//! # Why the order matters
//!
//! A service is a pipeline: intake (HTTP, NATS command subscriptions, pull
//! consumers) → handlers → the store writer (group commit) → the outbox relay
//! (publishes committed events to JetStream). Stopping it all at once would
//! cut work in half-flight: a handler whose append is still queued at a
//! writer that already quit, a relay that stops before the last commit so
//! its events wait for the next start. So, in the order stages are created:
//!
//! 1. **Stop intake**: mark the service unready (load balancers move away),
//!    stop taking requests and fetching messages. Unacked JetStream messages
//!    are redelivered elsewhere: nothing is lost by not taking them.
//! 2. **Finish in-flight work**: handlers already running complete, commit
//!    and reply; their messages are acked only after the commit.
//! 3. **Flush the relay**: publish what the last commits put in the outbox,
//!    so other services see it now rather than at our next start.
//! 4. **Close stores**: the writer task commits its last batch and the pool
//!    closes cleanly (for SQLite, the WAL is checkpointed).
//!
//! Each stage is cancelled only after the previous one's tasks have all
//! finished. The grace period bounds the whole drain: when it runs out, the
//! remaining stages are still cancelled but no longer awaited, and the
//! process exits. That is safe by construction (event sourcing): uncommitted
//! work is simply not committed, unacked messages are redelivered, and the
//! relay re-publishes its recent tail on the next start with `Nats-Msg-Id`
//! dedup. The grace period is about finishing politely, not about integrity.
//!
//! ```no_run
//! # async fn demo(config: gradeflow_kit::Config) {
//! use gradeflow_kit::{shutdown_signal, Shutdown};
//!
//! let shutdown = Shutdown::new(shutdown_signal(), config.shutdown_grace);
//! let intake = shutdown.stage("intake");
//! let relay = shutdown.stage("relay");
//! let stores = shutdown.stage("stores");
//! let token = intake.token();
//! intake.spawn(async move { token.cancelled().await /* serve until then */ });
//! # let _ = (relay, stores);
//! let report = shutdown.run().await; // waits for a signal, then drains
//! if !report.is_clean() {
//!     tracing::warn!(?report, "shutdown grace period exceeded");
//! }
//! # }
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A token cancelled on the first SIGINT (Ctrl-C) or SIGTERM (what
/// orchestrators send). Signal handlers are installed before this returns,
/// so a signal arriving right after is not missed.
///
/// # Panics
///
/// Outside a Tokio runtime (it spawns the task that waits for the signal).
/// Call it in `main`, at start-up.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    let signals = Signals::install();
    tokio::spawn(async move {
        let name = signals.recv().await;
        tracing::info!(signal = name, "shutdown requested");
        cancel.cancel();
    });
    token
}

/// The installed signal listeners; `None` where installation failed, in which
/// case that signal keeps its default action (terminate the process).
struct Signals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    #[cfg(unix)]
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(error) => {
                tracing::warn!(%error, signal = name, "cannot listen for signal");
                None
            }
        };
        Self {
            terminate: install(SignalKind::terminate(), "SIGTERM"),
            interrupt: install(SignalKind::interrupt(), "SIGINT"),
        }
    }

    #[cfg(not(unix))]
    fn install() -> Self {
        Self {}
    }

    #[cfg(unix)]
    async fn recv(mut self) -> &'static str {
        async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
            // `None` from `recv` means the driver is gone; treat it, like a
            // listener that could not be installed, as never firing rather
            // than as a signal.
            if let Some(s) = s {
                if s.recv().await.is_some() {
                    return;
                }
            }
            std::future::pending().await
        }
        tokio::select! {
            () = next(&mut self.terminate) => "SIGTERM",
            () = next(&mut self.interrupt) => "SIGINT",
        }
    }

    #[cfg(not(unix))]
    async fn recv(self) -> &'static str {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "ctrl-c",
            Err(_) => std::future::pending().await,
        }
    }
}

/// One step of the shutdown order: a cancellation token and the tasks that
/// watch it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Stage {
    name: Arc<str>,
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Stage {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }

    /// The stage's name, as reported in [`DrainReport`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Cancelled when this stage's turn to stop comes. Tasks of the stage
    /// watch it (`select!`, or axum's `with_graceful_shutdown`), finish what
    /// they hold, and return.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Waits until this stage's turn to stop comes.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// The tracker that the drain waits on; tasks spawned elsewhere can be
    /// tracked with `tracker().track_future(..)`.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Spawns `task` on the current Tokio runtime, tracked by this stage: the
    /// next stage is not cancelled until it returns (or the grace runs out).
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }
}

/// How one stage ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageOutcome {
    /// The stage's name.
    pub name: String,
    /// Whether every task of the stage finished within the grace period.
    pub drained: bool,
    /// Tasks still running when the stage was given up on (0 when drained).
    pub unfinished: usize,
}

/// What a drain achieved, stage by stage, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// Every stage, in drain order.
    pub stages: Vec<StageOutcome>,
    /// How long the drain took.
    pub elapsed: Duration,
}

impl DrainReport {
    /// Whether every stage finished within the grace period.
    pub fn is_clean(&self) -> bool {
        self.stages.iter().all(|s| s.drained)
    }
}

#[derive(Debug)]
struct Inner {
    trigger: CancellationToken,
    grace: Duration,
    stages: Mutex<Stages>,
}

#[derive(Debug, Default)]
struct Stages {
    list: Vec<Stage>,
    draining: bool,
}

/// Ordered, bounded shutdown of a process's tasks (see the module docs).
/// Cheap to clone; clones share the stages.
#[derive(Debug, Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

impl Shutdown {
    /// A shutdown that starts when `trigger` is cancelled (usually
    /// [`shutdown_signal`]) and may take `grace` in total.
    pub fn new(trigger: CancellationToken, grace: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                trigger,
                grace,
                stages: Mutex::new(Stages::default()),
            }),
        }
    }

    /// The token that starts shutdown. Cancel it to stop the process from
    /// inside (a fatal error in a critical task); watch it to learn that
    /// shutdown has begun (before any stage is cancelled).
    pub fn trigger(&self) -> CancellationToken {
        self.inner.trigger.clone()
    }

    /// Whether shutdown has been asked for.
    pub fn is_triggered(&self) -> bool {
        self.inner.trigger.is_cancelled()
    }

    /// The total drain budget.
    pub fn grace(&self) -> Duration {
        self.inner.grace
    }

    /// A new stage, drained after every stage created before it. Create the
    /// stages in shutdown order at wiring time: intake first, stores last.
    /// A stage created once draining has begun starts cancelled.
    pub fn stage(&self, name: &str) -> Stage {
        let stage = Stage::new(name);
        let mut stages = self.lock();
        if stages.draining {
            stage.token.cancel();
            stage.tracker.close();
        }
        stages.list.push(stage.clone());
        stage
    }

    /// Waits for the trigger.
    pub async fn triggered(&self) {
        self.inner.trigger.cancelled().await;
    }

    /// Waits for the trigger, then drains.
    pub async fn run(&self) -> DrainReport {
        self.triggered().await;
        self.drain().await
    }

    /// Cancels the trigger (if not yet), then each stage in order, waiting
    /// for a stage's tasks before cancelling the next, all within the grace
    /// period. Calling it again drains nothing new and reports the stages
    /// as they are.
    pub async fn drain(&self) -> DrainReport {
        let started = Instant::now();
        let deadline = started + self.inner.grace;
        self.inner.trigger.cancel();
        let stages = {
            let mut stages = self.lock();
            stages.draining = true;
            stages.list.clone()
        };

        let mut outcomes = Vec::with_capacity(stages.len());
        for stage in stages {
            stage.token.cancel();
            // Closing lets `wait` complete once the tracked tasks are done;
            // tasks can still be added to a closed tracker (a handler that
            // spawns a helper while finishing), and are waited for too.
            stage.tracker.close();
            // `timeout_at` polls the wait before the deadline, so once the
            // budget is spent later stages are still cancelled and reported
            // drained if their tasks already finished, but not waited for.
            let drained = tokio::time::timeout_at(deadline, stage.tracker.wait())
                .await
                .is_ok();
            let unfinished = if drained { 0 } else { stage.tracker.len() };
            if drained {
                tracing::debug!(stage = stage.name(), "stage drained");
            } else {
                tracing::warn!(
                    stage = stage.name(),
                    unfinished,
                    grace = ?self.inner.grace,
                    "stage did not finish within the shutdown grace period"
                );
            }
            outcomes.push(StageOutcome {
                name: stage.name().to_owned(),
                drained,
                unfinished,
            });
        }
        DrainReport {
            stages: outcomes,
            elapsed: started.elapsed(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stages> {
        // A poisoned lock means a panic while pushing to a Vec; the list is
        // still whole, and shutdown must work especially after a panic.
        self.inner
            .stages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::Mutex as StdMutex;

    /// Records the order in which things happen across tasks.
    #[derive(Clone, Default)]
    struct Log(Arc<StdMutex<Vec<String>>>);

    impl Log {
        fn push(&self, s: impl Into<String>) {
            self.0.lock().unwrap().push(s.into());
        }
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stages_stop_in_order_each_after_the_previous_finished() {
        let shutdown = Shutdown::new(CancellationToken::new(), Duration::from_secs(10));
        let log = Log::default();
        for (name, work) in [("intake", 3), ("relay", 1), ("stores", 2)] {
            let stage = shutdown.stage(name);
            let token = stage.token();
            let log = log.clone();
            stage.spawn(async move {
                token.cancelled().await;
                log.push(format!("{name} cancelled"));
                // In-flight work that takes a while to finish.
                tokio::time::sleep(Duration::from_secs(work)).await;
                log.push(format!("{name} done"));
            });
        }

        let trigger = shutdown.trigger();
        let runner = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.run().await }
        });
        tokio::task::yield_now().await;
        assert!(log.take().is_empty(), "nothing stops before the trigger");

        trigger.cancel();
        let report = runner.await.unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(
            log.take(),
            [
                "intake cancelled",
                "intake done",
                "relay cancelled",
                "relay done",
                "stores cancelled",
                "stores done"
            ]
        );
        assert_eq!(report.elapsed, Duration::from_secs(6));
        let names: Vec<_> = report.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["intake", "relay", "stores"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_grace_period_bounds_the_whole_drain() {
        let shutdown = Shutdown::new(CancellationToken::new(), Duration::from_secs(5));
        let stuck = shutdown.stage("intake");
        stuck.spawn(std::future::pending::<()>());
        let stores = shutdown.stage("stores");
        let stores_token = stores.token();
        stores.spawn(async move { stores_token.cancelled().await });

        let report = shutdown.drain().await;
        assert_eq!(report.elapsed, Duration::from_secs(5));
        assert!(!report.is_clean());
        assert_eq!(
            report.stages[0],
            StageOutcome {
                name: "intake".into(),
                drained: false,
                unfinished: 1
            }
        );
        // Later stages are still told to stop, and not waited for beyond the budget.
        assert!(stores.token().is_cancelled());
        assert!(shutdown.is_triggered());
    }

    #[tokio::test]
    async fn a_stage_created_while_draining_starts_cancelled() {
        let shutdown = Shutdown::new(CancellationToken::new(), Duration::from_secs(1));
        let report = shutdown.drain().await;
        assert!(report.is_clean() && report.stages.is_empty());
        let late = shutdown.stage("late");
        assert!(late.token().is_cancelled());
    }

    #[tokio::test]
    async fn tasks_that_end_on_their_own_do_not_hold_up_the_drain() {
        let shutdown = Shutdown::new(CancellationToken::new(), Duration::from_secs(1));
        let stage = shutdown.stage("oneshot");
        stage.spawn(async {}).await.unwrap();
        let report = shutdown.drain().await;
        assert_eq!(
            report.stages,
            [StageOutcome {
                name: "oneshot".into(),
                drained: true,
                unfinished: 0
            }]
        );
    }
}
