//! Health of this node's own services: probes of the volume mount and of the local servers, run
//! in rounds with a timeout and debounced by rise/fall hysteresis into one healthy/unhealthy
//! state that the daemon reports through Raft (an unhealthy node hosts no VIPs while a healthy
//! eligible node exists).
//!
//! The common failure is a hung mount: a FUSE client (GlusterFS) whose servers stopped answering
//! leaves every `stat` and `write` on the mount blocked in the kernel, for minutes. So a probe's
//! [`Probe::check`] is a plain blocking call that may never return, and the monitor runs each
//! probe on a thread of its own:
//!
//! 1. every `interval` a round starts; each probe whose thread is idle is asked to check once;
//! 2. the round waits up to `timeout` for those checks; one that has not answered by then fails
//!    the round ("timed out after 1s");
//! 3. a probe still stuck from an earlier round is *not* started again (no pile-up of threads
//!    on a dead mount) and fails every round until it returns ("hung for 3.25s");
//! 4. the round passes when every probe passed; [`Hysteresis`] turns rounds into the state.
//!
//! The monitor publishes a [`HealthReport`] on a watch channel after every round, and wakes
//! subscribers only when the state or the set of failing probes changes.

mod hysteresis;
mod rpc;
mod tcp;
mod volume;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub use hysteresis::Hysteresis;
pub use rpc::{NFS_PROGRAM, RpcNullProbe};
pub use tcp::TcpProbe;
pub use volume::{VolumeProbe, VolumeProbeError};

/// One check of one local service.
pub trait Probe: std::fmt::Debug + Send + Sync + 'static {
    /// A short name for reports and logs, such as `volume /srv/data` or `nfs 127.0.0.1:2049`.
    fn name(&self) -> &str;
    /// Blocking check; may hang forever on a dead mount, so it is always run on a thread of its
    /// own. `Err` carries the reason, a lower-case sentence naming what failed.
    fn check(&self) -> Result<(), String>;
}

/// The node's debounced health after a round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthReport {
    /// The state after hysteresis; false until the first `rise` rounds have passed.
    pub healthy: bool,
    /// The probes that failed the latest round, with their reasons, in probe order.
    pub failing: Vec<(String, String)>,
    /// How many rounds have run; 0 before the first.
    pub round: u64,
}

/// The shortest interval between rounds, so a zero in a setting cannot make a busy loop.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// How the monitor runs its probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorSettings {
    /// Time from the start of one round to the start of the next (a round that waits for a slow
    /// probe delays the next one). Below [`MIN_INTERVAL`] counts as that.
    pub interval: Duration,
    /// How long a round waits for a probe's answer before counting it as failed.
    pub timeout: Duration,
    /// Consecutive passed rounds that make an unhealthy node healthy.
    pub rise: u32,
    /// Consecutive failed rounds that make a healthy node unhealthy.
    pub fall: u32,
}

impl Default for MonitorSettings {
    /// Rounds every 250 ms (DESIGN.md: probes every 250–500 ms), 1 s to answer, healthy after
    /// 3 passes, unhealthy after 2 failures. A check stuck in the kernel fails the round that
    /// started it when the timeout ends and every round after it at once, so a hung mount makes
    /// the node unhealthy 1 to 1.25 s after it hangs; a single check slower than 1 s does too.
    fn default() -> Self {
        MonitorSettings {
            interval: Duration::from_millis(250),
            timeout: Duration::from_secs(1),
            rise: 3,
            fall: 2,
        }
    }
}

/// A running monitor. Dropping it stops the monitor as [`HealthMonitor::shutdown`] does.
#[derive(Debug)]
pub struct HealthMonitor {
    report: watch::Sender<HealthReport>,
    events: mpsc::Sender<Event>,
    scheduler: Option<JoinHandle<()>>,
}

impl HealthMonitor {
    /// A receiver of the reports; its `changed()` fires when the state or the set of failing
    /// probes changes, and `borrow()` always shows the latest round.
    pub fn subscribe(&self) -> watch::Receiver<HealthReport> {
        self.report.subscribe()
    }

    /// The report of the latest round.
    pub fn report(&self) -> HealthReport {
        self.report.borrow().clone()
    }

    /// Stops the rounds and waits for the scheduler. A probe thread stuck in a check is left
    /// behind (it cannot be interrupted); it ends by itself if the check ever returns.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.events.send(Event::Stop);
        if let Some(scheduler) = self.scheduler.take() {
            let _ = scheduler.join();
        }
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the monitor: one thread per probe and a scheduler thread that runs the rounds. The
/// first round starts at once. Fails only when a thread cannot be started.
pub fn spawn_monitor(
    probes: Vec<Arc<dyn Probe>>,
    settings: MonitorSettings,
) -> std::io::Result<HealthMonitor> {
    let (events, inbox) = mpsc::channel();
    let mut workers = Vec::with_capacity(probes.len());
    for (index, probe) in probes.into_iter().enumerate() {
        workers.push(Worker::spawn(index, probe, events.clone())?);
    }
    let (report, _) = watch::channel(HealthReport::default());
    let scheduler = Scheduler {
        settings,
        workers,
        inbox,
        hysteresis: Hysteresis::new(settings.rise, settings.fall),
        report: report.clone(),
        round: 0,
    };
    let scheduler = std::thread::Builder::new()
        .name("health".into())
        .spawn(move || scheduler.run())?;
    Ok(HealthMonitor {
        report,
        events,
        scheduler: Some(scheduler),
    })
}

/// What the scheduler thread reacts to.
#[derive(Debug)]
enum Event {
    /// A probe thread finished the check it was given in `round`.
    Finished {
        probe: usize,
        round: u64,
        result: Result<(), String>,
    },
    /// The monitor is being shut down.
    Stop,
}

/// The scheduler's handle on one probe thread.
#[derive(Debug)]
struct Worker {
    name: String,
    /// Rounds to check in; closing it ends the thread once its current check returns.
    jobs: mpsc::Sender<u64>,
    /// When the check in progress started; `None` while the thread is idle.
    busy_since: Option<Instant>,
}

impl Worker {
    fn spawn(
        index: usize,
        probe: Arc<dyn Probe>,
        events: mpsc::Sender<Event>,
    ) -> std::io::Result<Worker> {
        let name = probe.name().to_owned();
        let (jobs, rounds) = mpsc::channel::<u64>();
        std::thread::Builder::new()
            .name(format!("probe {name}"))
            .spawn(move || {
                while let Ok(round) = rounds.recv() {
                    // A probe that panics fails its round instead of ending its thread.
                    let result = std::panic::catch_unwind(AssertUnwindSafe(|| probe.check()))
                        .unwrap_or_else(|_| Err("the probe panicked".to_owned()));
                    let finished = Event::Finished {
                        probe: index,
                        round,
                        result,
                    };
                    if events.send(finished).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Worker {
            name,
            jobs,
            busy_since: None,
        })
    }
}

/// The scheduler thread's state.
struct Scheduler {
    settings: MonitorSettings,
    workers: Vec<Worker>,
    inbox: mpsc::Receiver<Event>,
    hysteresis: Hysteresis,
    report: watch::Sender<HealthReport>,
    round: u64,
}

/// Whether the scheduler goes on.
enum Flow {
    Continue,
    Stop,
}

impl Scheduler {
    fn run(mut self) {
        let mut next_round = Instant::now();
        loop {
            // Between rounds, note checks that finish late so their threads count as idle.
            while let Some(wait) = next_round.checked_duration_since(Instant::now()) {
                match self.inbox.recv_timeout(wait) {
                    Ok(Event::Finished { probe, .. }) => self.idle(probe),
                    Ok(Event::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                }
            }
            let started = Instant::now();
            if let Flow::Stop = self.run_round(started) {
                return;
            }
            next_round = started + self.settings.interval.max(MIN_INTERVAL);
        }
    }

    fn idle(&mut self, probe: usize) {
        if let Some(worker) = self.workers.get_mut(probe) {
            worker.busy_since = None;
        }
    }

    fn run_round(&mut self, started: Instant) -> Flow {
        self.round += 1;
        let round = self.round;
        let mut outcomes: Vec<Option<Result<(), String>>> = vec![None; self.workers.len()];
        for (worker, outcome) in self.workers.iter_mut().zip(outcomes.iter_mut()) {
            if let Some(since) = worker.busy_since {
                let stuck = started.duration_since(since);
                *outcome = Some(Err(format!("hung for {}", milliseconds(stuck))));
            } else if worker.jobs.send(round).is_ok() {
                worker.busy_since = Some(started);
            } else {
                *outcome = Some(Err("the probe thread has ended".to_owned()));
            }
        }
        let deadline = started + self.settings.timeout;
        while outcomes.iter().any(Option::is_none) {
            let Some(wait) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            match self.inbox.recv_timeout(wait) {
                Ok(Event::Finished {
                    probe,
                    round: finished_round,
                    result,
                }) => {
                    self.idle(probe);
                    // A late answer to an earlier round says nothing about this one.
                    if finished_round == round
                        && let Some(outcome) = outcomes.get_mut(probe)
                    {
                        *outcome = Some(result);
                    }
                }
                Ok(Event::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return Flow::Stop,
                Err(mpsc::RecvTimeoutError::Timeout) => break,
            }
        }
        let timeout = milliseconds(self.settings.timeout);
        let failing: Vec<(String, String)> = self
            .workers
            .iter()
            .zip(outcomes)
            .filter_map(|(worker, outcome)| {
                let reason = match outcome {
                    Some(Ok(())) => return None,
                    Some(Err(reason)) => reason,
                    None => format!("timed out after {timeout}"),
                };
                Some((worker.name.clone(), reason))
            })
            .collect();
        let healthy = self.hysteresis.observe(failing.is_empty());
        self.publish(HealthReport {
            healthy,
            failing,
            round,
        });
        Flow::Continue
    }

    fn publish(&self, report: HealthReport) {
        let HealthReport {
            healthy,
            ref failing,
            round,
        } = report;
        let failing_names = |report: &HealthReport| -> Vec<String> {
            report
                .failing
                .iter()
                .map(|(name, _)| name.clone())
                .collect()
        };
        let mut was_healthy = healthy;
        let mut changed = false;
        self.report.send_if_modified(|current| {
            was_healthy = current.healthy;
            changed =
                current.healthy != healthy || failing_names(current) != failing_names(&report);
            *current = report.clone();
            changed
        });
        match (was_healthy, healthy) {
            (false, true) => tracing::info!(round, "node is healthy"),
            (true, false) => tracing::warn!(round, ?failing, "node is unhealthy"),
            _ if changed => tracing::info!(round, ?failing, "failing probes changed"),
            _ => {}
        }
    }
}

/// A duration for a report, to the millisecond: `50ms`, `3.25s`.
fn milliseconds(duration: Duration) -> String {
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    format!("{:?}", Duration::from_millis(millis))
}
