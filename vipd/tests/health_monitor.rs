//! The health monitor with scripted probes: a node proves itself before it is healthy, falls
//! after failures and recovers; a probe that blocks forever is reported as hung, is never started
//! a second time while stuck, and counts again once it returns; a panicking probe only fails.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use vipd::health::{HealthMonitor, HealthReport, MonitorSettings, Probe, spawn_monitor};

/// Generous: only a broken monitor takes this long.
const DEADLINE: Duration = Duration::from_secs(10);

/// Quick rounds. The timeout is long so that a busy machine (or a panic printing its backtrace)
/// never turns a slow answer into a failure these tests do not expect; a probe that blocks
/// costs one timeout, in its first round.
fn fast(rise: u32, fall: u32) -> MonitorSettings {
    MonitorSettings {
        interval: Duration::from_millis(10),
        timeout: Duration::from_secs(2),
        rise,
        fall,
    }
}

/// Polls the monitor's latest report until `condition` holds; the report that satisfied it.
fn wait_for(
    monitor: &HealthMonitor,
    what: &str,
    condition: impl Fn(&HealthReport) -> bool,
) -> HealthReport {
    let start = Instant::now();
    loop {
        let report = monitor.report();
        if condition(&report) {
            return report;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no report {what} within {DEADLINE:?}; last {report:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Passes or fails as told; counts its checks.
#[derive(Debug)]
struct Switch {
    name: String,
    pass: AtomicBool,
    checks: AtomicUsize,
}

impl Switch {
    fn new(name: &str, pass: bool) -> Arc<Switch> {
        Arc::new(Switch {
            name: name.into(),
            pass: AtomicBool::new(pass),
            checks: AtomicUsize::new(0),
        })
    }
}

impl Probe for Switch {
    fn name(&self) -> &str {
        &self.name
    }
    fn check(&self) -> Result<(), String> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        match self.pass.load(Ordering::SeqCst) {
            true => Ok(()),
            false => Err(format!("{} is switched off", self.name)),
        }
    }
}

/// Its first check blocks until the test sends on the channel, as a stat on a dead mount blocks;
/// later checks pass at once.
#[derive(Debug)]
struct Blocker {
    release: Mutex<mpsc::Receiver<()>>,
    checks: AtomicUsize,
    running: AtomicUsize,
    most_running: AtomicUsize,
}

impl Probe for Blocker {
    fn name(&self) -> &str {
        "blocker"
    }
    fn check(&self) -> Result<(), String> {
        let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(running, Ordering::SeqCst);
        if self.checks.fetch_add(1, Ordering::SeqCst) == 0 {
            self.release.lock().unwrap().recv().unwrap();
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

#[derive(Debug)]
struct Panicker;

impl Probe for Panicker {
    fn name(&self) -> &str {
        "panicker"
    }
    fn check(&self) -> Result<(), String> {
        panic!("probe bug");
    }
}

#[test]
fn a_node_proves_itself_falls_and_recovers() {
    let volume = Switch::new("volume", true);
    let nfs = Switch::new("nfs", true);
    let monitor = spawn_monitor(vec![volume.clone(), nfs.clone()], fast(3, 2)).unwrap();
    let mut changes = monitor.subscribe();
    assert!(!changes.borrow().healthy, "a node starts unhealthy");

    let first_healthy = wait_for(&monitor, "healthy", |report| report.healthy);
    assert!(
        first_healthy.round >= 3,
        "healthy after round {}, before 3 passes",
        first_healthy.round
    );
    assert!(first_healthy.failing.is_empty());
    assert!(changes.has_changed().unwrap(), "turning healthy notifies");
    changes.borrow_and_update();

    nfs.pass.store(false, Ordering::SeqCst);
    let failed_at = monitor.report().round;
    let down = wait_for(&monitor, "unhealthy", |report| !report.healthy);
    assert!(
        down.round >= failed_at + 2,
        "unhealthy in round {} after the first failure in round > {failed_at}: fall is 2",
        down.round
    );
    assert_eq!(
        down.failing,
        vec![("nfs".to_owned(), "nfs is switched off".to_owned())]
    );
    assert!(changes.has_changed().unwrap());

    nfs.pass.store(true, Ordering::SeqCst);
    let recovered = wait_for(&monitor, "healthy again", |report| report.healthy);
    assert!(recovered.failing.is_empty());
    assert!(volume.checks.load(Ordering::SeqCst) >= 3 + 2 + 3);
    monitor.shutdown();
}

#[test]
fn a_single_failure_does_not_flap_the_state() {
    let probe = Switch::new("volume", true);
    let monitor = spawn_monitor(vec![probe.clone()], fast(1, 1000)).unwrap();
    wait_for(&monitor, "healthy", |report| report.healthy);
    probe.pass.store(false, Ordering::SeqCst);
    let failing = wait_for(&monitor, "a failing round", |report| {
        !report.failing.is_empty()
    });
    assert!(failing.healthy, "one failure is within fall");
    probe.pass.store(true, Ordering::SeqCst);
    wait_for(&monitor, "a passing round", |report| {
        report.failing.is_empty()
    });
    assert!(monitor.report().healthy);
}

#[test]
fn a_hung_probe_is_reported_and_never_started_twice() {
    let (release, blocker) = blocker();
    let other = Switch::new("nfs", true);
    let monitor = spawn_monitor(vec![blocker.clone(), other.clone()], fast(1, 1)).unwrap();

    // Rounds after the first (which timed out) see it still stuck and say for how long, without
    // starting it again.
    let hung = wait_for(&monitor, "many rounds", |report| report.round >= 10);
    assert!(!hung.healthy);
    let [(name, reason)] = hung.failing.as_slice() else {
        panic!("one failing probe expected: {hung:?}")
    };
    assert_eq!(name, "blocker");
    assert!(
        reason.starts_with("hung for ") && reason.ends_with('s'),
        "{reason}"
    );
    assert_eq!(
        blocker.checks.load(Ordering::SeqCst),
        1,
        "a stuck probe was started again"
    );
    assert!(
        other.checks.load(Ordering::SeqCst) >= 10,
        "the other probe kept being checked"
    );

    // Unblocked, the probe is checked afresh and the node recovers.
    release.send(()).unwrap();
    let recovered = wait_for(&monitor, "recovery", |report| report.healthy);
    assert!(recovered.failing.is_empty());
    assert!(blocker.checks.load(Ordering::SeqCst) >= 2);
    assert_eq!(blocker.most_running.load(Ordering::SeqCst), 1);
    monitor.shutdown();
}

fn blocker() -> (mpsc::Sender<()>, Arc<Blocker>) {
    let (release, blocked) = mpsc::channel();
    let blocker = Arc::new(Blocker {
        release: Mutex::new(blocked),
        checks: AtomicUsize::new(0),
        running: AtomicUsize::new(0),
        most_running: AtomicUsize::new(0),
    });
    (release, blocker)
}

#[test]
fn a_probe_that_does_not_answer_in_time_fails_its_round() {
    let (release, blocker) = blocker();
    // A long interval keeps the first round's report in place long enough to read it.
    let settings = MonitorSettings {
        interval: Duration::from_secs(3),
        timeout: Duration::from_millis(50),
        rise: 1,
        fall: 1,
    };
    let monitor = spawn_monitor(vec![blocker], settings).unwrap();
    let report = wait_for(&monitor, "the first round", |report| report.round >= 1);
    assert_eq!(report.round, 1);
    assert!(!report.healthy);
    assert_eq!(
        report.failing,
        vec![("blocker".to_owned(), "timed out after 50ms".to_owned())]
    );
    release.send(()).unwrap();
}

#[test]
fn shutdown_returns_while_a_probe_is_stuck() {
    let (_release, blocker) = blocker();
    let monitor = spawn_monitor(vec![blocker.clone()], fast(1, 1)).unwrap();
    wait_for(&monitor, "a hung round", |report| report.round >= 2);
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        monitor.shutdown();
        done.send(()).unwrap();
    });
    finished
        .recv_timeout(DEADLINE)
        .expect("shutdown waited on a stuck probe");
    assert_eq!(blocker.checks.load(Ordering::SeqCst), 1);
}

#[test]
fn a_panicking_probe_fails_without_ending_the_monitor() {
    let monitor = spawn_monitor(vec![Arc::new(Panicker)], fast(1, 1)).unwrap();
    let report = wait_for(&monitor, "several rounds", |report| report.round >= 3);
    assert!(!report.healthy);
    assert_eq!(
        report.failing,
        vec![("panicker".to_owned(), "the probe panicked".to_owned())]
    );
}

#[test]
fn no_probes_means_healthy_after_rise() {
    let monitor = spawn_monitor(Vec::new(), fast(2, 1)).unwrap();
    let report = wait_for(&monitor, "healthy", |report| report.healthy);
    assert!(report.round >= 2);
}
