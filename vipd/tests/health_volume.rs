//! The volume probe against real mounts, each made inside a private mount namespace of one test
//! thread (the host's mount table is never touched): a tmpfs passes, the same tmpfs remounted
//! read-only fails, and once unmounted the bare directory fails as "not a mount point".
//!
//! The hung-mount case uses a real FUSE mount whose server never answers: the test opens
//! `/dev/fuse` and mounts with that descriptor but never reads the kernel's `FUSE_INIT`, so every
//! `statfs`, `stat` or write on the mount blocks in the kernel exactly as on a GlusterFS client
//! whose bricks stopped answering. Closing the descriptor aborts the connection, as when the FUSE
//! daemon dies, and the blocked calls return "transport endpoint is not connected". Needs root.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vipd::health::{
    HealthMonitor, HealthReport, MonitorSettings, Probe, VolumeProbe, spawn_monitor,
};

const DEADLINE: Duration = Duration::from_secs(15);

/// Whether this test may mount; outside root it is skipped loudly, and fails under CI.
fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root, and CI must run it as root"
    );
    eprintln!("SKIPPED {test}: needs root (mount namespaces)");
    false
}

fn c_string(text: impl AsRef<std::ffi::OsStr>) -> CString {
    CString::new(text.as_ref().as_bytes()).unwrap()
}

fn check(result: libc::c_int, what: &str) {
    assert_eq!(result, 0, "{what}: {}", std::io::Error::last_os_error());
}

/// Runs `work` on a thread of its own inside a fresh mount namespace whose mounts do not
/// propagate back to the host. Threads started by `work` inherit that namespace.
fn in_private_mount_namespace<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare and mount are plain system calls on valid arguments; only this
                // thread's mount namespace changes.
                unsafe {
                    check(libc::unshare(libc::CLONE_NEWNS), "unshare(CLONE_NEWNS)");
                    check(
                        libc::mount(
                            std::ptr::null(),
                            c"/".as_ptr(),
                            std::ptr::null(),
                            libc::MS_REC | libc::MS_PRIVATE,
                            std::ptr::null(),
                        ),
                        "make / private",
                    );
                }
                work()
            })
            .join()
            .unwrap()
    })
}

fn mount(source: &str, target: &Path, kind: &str, flags: libc::c_ulong, data: &str) {
    let (source, target, kind, data) = (
        c_string(source),
        c_string(target),
        c_string(kind),
        c_string(data),
    );
    // SAFETY: all strings are NUL-terminated and live for the call.
    let result = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    check(result, "mount");
}

fn unmount(target: &Path) {
    let target = c_string(target);
    // SAFETY: `target` is NUL-terminated and lives for the call.
    check(
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) },
        "umount",
    );
}

#[test]
fn volume_probe_on_a_real_mount_read_only_and_unmounted() {
    if !root_or_skip("volume_probe_on_a_real_mount_read_only_and_unmounted") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let volume = scratch.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let probe = VolumeProbe::new(&volume, "node1").unwrap();
    let health_file = probe.probe_file().to_path_buf();

    in_private_mount_namespace(|| {
        mount("vipgate-test", &volume, "tmpfs", 0, "size=1m,mode=0755");
        assert_eq!(probe.check(), Ok(()));
        assert_eq!(probe.check(), Ok(()), "a second check passes too");
        // The probe cleans up after itself: its directory stays, its file does not.
        assert!(health_file.parent().unwrap().is_dir());
        assert!(!health_file.exists());

        mount(
            "vipgate-test",
            &volume,
            "tmpfs",
            libc::MS_REMOUNT | libc::MS_RDONLY,
            "",
        );
        let reason = probe.check().unwrap_err();
        assert_eq!(
            reason,
            format!(
                "cannot write {}: Read-only file system (os error 30)",
                health_file.display()
            )
        );

        unmount(&volume);
        let reason = probe.check().unwrap_err();
        assert_eq!(
            reason,
            format!(
                "{} is not a mount point: the volume is not mounted",
                volume.display()
            )
        );
    });
    // Nothing of the mount leaked into the host's view of the directory.
    assert_eq!(std::fs::read_dir(&volume).unwrap().count(), 0);
}

/// The probe thread of the monitor, found by name: `(tid, state, wait channel)`.
fn probe_threads() -> Vec<(String, String, String)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.starts_with("probe volume") {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // The state follows the parenthesised command name.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .unwrap_or("?")
            .to_owned();
        let wchan = std::fs::read_to_string(path.join("wchan")).unwrap_or_default();
        threads.push((
            task.file_name().to_string_lossy().into_owned(),
            state,
            wchan,
        ));
    }
    threads
}

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
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn only_reason(report: &HealthReport) -> &str {
    match report.failing.as_slice() {
        [(_, reason)] => reason,
        _ => "",
    }
}

#[test]
fn a_hung_fuse_mount_is_reported_without_piling_up_threads() {
    if !root_or_skip("a_hung_fuse_mount_is_reported_without_piling_up_threads") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let volume = scratch.path().join("volume");
    std::fs::create_dir(&volume).unwrap();

    in_private_mount_namespace(|| {
        // SAFETY: open on a NUL-terminated path; the result is checked and then owned.
        let fuse = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        assert!(
            fuse >= 0,
            "open /dev/fuse: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fuse` was just opened and is owned by nothing else.
        let fuse = unsafe { OwnedFd::from_raw_fd(fuse) };
        let options = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0",
            fuse.as_raw_fd()
        );
        mount(
            "vipgate-hung",
            &volume,
            "fuse",
            libc::MS_NOSUID | libc::MS_NODEV,
            &options,
        );

        let probe: Arc<dyn Probe> = Arc::new(VolumeProbe::new(&volume, "node1").unwrap());
        let settings = MonitorSettings {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(300),
            rise: 1,
            fall: 2,
        };
        let started = Instant::now();
        let monitor = spawn_monitor(vec![probe], settings).unwrap();
        let hung = wait_for(&monitor, "of a hung mount", |report| {
            report.round >= 8 && only_reason(report).starts_with("hung for ")
        });
        assert!(!hung.healthy);
        let threads = probe_threads();
        eprintln!(
            "hung mount: round {} after {:?}: {:?}; probe threads (tid, state, wchan): {threads:?}",
            hung.round,
            started.elapsed(),
            hung.failing
        );
        assert_eq!(threads.len(), 1, "one probe thread, however long the hang");

        // The FUSE daemon dies: the kernel aborts the connection and the stuck statfs returns.
        drop(fuse);
        let dead = wait_for(&monitor, "of a dead mount", |report| {
            only_reason(report).contains("not connected")
        });
        assert!(!dead.healthy);
        assert_eq!(
            only_reason(&dead),
            format!(
                "cannot statfs {}: Transport endpoint is not connected (os error 107)",
                volume.display()
            )
        );
        assert_eq!(probe_threads().len(), 1);
        monitor.shutdown();
        unmount(&volume);
    });
}
