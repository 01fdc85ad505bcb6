//! Ad-hoc measurements of `vipd::storage::DiskLog`, not a test (nothing here can fail on
//! timing): the latency of persisting one small entry with its hard state (one record, one
//! `fdatasync`), and how long opening a log of 10,000 entries takes, before and after
//! compaction. Run by hand:
//! `cargo test -p vipd --test storage_measure -- --ignored --nocapture`.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is the failure report of a test"
)]

mod storage_support;

use std::time::{Duration, Instant};

use raft::Storage;
use storage_support::{entry, hard_state, voters};
use tempfile::TempDir;
use vipd::storage::{DiskLog, LogStore};

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |fraction: f64| samples[((samples.len() - 1) as f64 * fraction) as usize];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    format!(
        "n={} mean={:?} p50={:?} p90={:?} p99={:?} max={:?}",
        samples.len(),
        mean,
        at(0.5),
        at(0.9),
        at(0.99),
        samples[samples.len() - 1]
    )
}

#[test]
#[ignore = "a measurement, run by hand with --ignored --nocapture"]
fn measure_persist_latency_and_recovery_time() {
    // Measure on the disk a data_dir would use: set STORAGE_MEASURE_DIR where /tmp is a tmpfs.
    let base = std::env::var_os("STORAGE_MEASURE_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = TempDir::new_in(base).unwrap();
    println!("log directory: {}", dir.path().display());
    let log = DiskLog::open(dir.path()).unwrap();
    log.initialize(&voters(&[1, 2, 3])).unwrap();

    // One small entry (a 64-byte command) and the hard state, as one Ready of a leader.
    let total = 10_000u64;
    let mut samples = Vec::new();
    for index in 1..=total {
        let appended = [entry(index, 1, &[0x5a; 64])];
        let started = Instant::now();
        log.persist(None, &appended, Some(&hard_state(1, 1, index - 1)))
            .unwrap();
        samples.push(started.elapsed());
    }
    println!(
        "persist one 64-byte entry + hard state: {}",
        summary(samples)
    );
    let file_len = std::fs::metadata(dir.path().join("raft.log"))
        .unwrap()
        .len();
    drop(log);

    let started = Instant::now();
    let log = DiskLog::open(dir.path()).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(log.last_index().unwrap(), total);
    println!("open {total} entries in {total} records ({file_len} bytes): {elapsed:?}");

    let started = Instant::now();
    log.compact(total / 2, &voters(&[1, 2, 3]), vec![0; 4096])
        .unwrap();
    println!(
        "compact to {} (rewrite {} retained entries): {:?}",
        total / 2,
        total / 2,
        started.elapsed()
    );
    drop(log);
    let started = Instant::now();
    let log = DiskLog::open(dir.path()).unwrap();
    println!(
        "open after compaction ({} retained entries in one record): {:?}",
        total / 2,
        started.elapsed()
    );
    assert_eq!(log.first_index().unwrap(), total / 2 + 1);
}
