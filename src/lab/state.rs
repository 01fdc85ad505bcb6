//! The on-disk record of a lab under `/run/vipgate/labs/<name>/`: its plan, who owns it, and
//! every process started in it. The record is written before anything is created, so a lab whose
//! owner died half-way can still be torn down completely, and processes are identified by pid
//! *and* start time, so a recycled pid is never killed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::plan::Plan;

/// Directory holding one sub-directory per lab.
pub const LABS_DIR: &str = "/run/vipgate/labs";
const RECORD_FILE: &str = "lab.json";

/// A process, identified so that a recycled pid does not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
    pub start_time: u64,
}

impl ProcessId {
    /// The identity of the live process `pid`, if it exists.
    pub fn of(pid: u32) -> Option<ProcessId> {
        start_time(pid).map(|start_time| ProcessId { pid, start_time })
    }

    /// The identity of this process.
    pub fn current() -> Option<ProcessId> {
        ProcessId::of(std::process::id())
    }

    /// Whether this very process is still alive (not a zombie and not another process that
    /// reused the pid).
    pub fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time) && !is_zombie(self.pid)
    }

    fn nix_pid(&self) -> Option<Pid> {
        i32::try_from(self.pid)
            .ok()
            .filter(|pid| *pid > 1)
            .map(Pid::from_raw)
    }

    /// Sends `signal` to the process if it is still this process.
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.nix_pid().filter(|_| self.is_alive()) {
            let _ = kill(pid, signal);
        }
    }

    /// Sends `signal` to the process group this process leads, if it is still this process.
    pub fn signal_group(&self, signal: Signal) {
        if let Some(pid) = self.nix_pid().filter(|_| self.is_alive()) {
            let _ = killpg(pid, signal);
        }
    }
}

/// Reads the start time of `pid` from `/proc/PID/stat`.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields after it are plain.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_name = stat.get(stat.rfind(')')? + 1..)?.to_owned();
            after_name
                .split_whitespace()
                .next()
                .map(|state| state == "Z")
        })
        .unwrap_or(false)
}

/// A process started inside a lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabProcess {
    pub host: String,
    pub id: ProcessId,
    pub command: String,
}

/// The persisted record of a lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabRecord {
    /// Format version of this record.
    pub version: u32,
    pub plan: Plan,
    /// The process that made the lab and tears it down; `None` once the lab is detached.
    pub owner: Option<ProcessId>,
    /// Whether the lab is fully built.
    pub ready: bool,
    pub processes: Vec<LabProcess>,
}

pub const RECORD_VERSION: u32 = 1;

impl LabRecord {
    /// Whether the lab's owner is gone without having torn it down.
    pub fn is_orphaned(&self) -> bool {
        self.owner.is_some_and(|owner| !owner.is_alive())
    }
}

/// Directory of lab `name`.
pub fn lab_dir(name: &str) -> PathBuf {
    Path::new(LABS_DIR).join(name)
}

/// Directory of host `host` of lab `name` (its `/etc` files, later its daemon's data).
pub fn host_dir(name: &str, host: &str) -> PathBuf {
    lab_dir(name).join(host)
}

/// Writes the record atomically (write to a temporary file, then rename).
pub fn save(record: &LabRecord) -> io::Result<()> {
    let dir = lab_dir(&record.plan.name);
    fs::create_dir_all(&dir)?;
    let temporary = dir.join(format!("{RECORD_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    fs::write(&temporary, text)?;
    fs::rename(&temporary, dir.join(RECORD_FILE))
}

/// Reads the record of lab `name`.
pub fn load(name: &str) -> io::Result<LabRecord> {
    let path = lab_dir(name).join(RECORD_FILE);
    let text = fs::read(&path)?;
    let record: LabRecord = serde_json::from_slice(&text).map_err(|error| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {error}", path.display()),
        )
    })?;
    if record.version != RECORD_VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: record version {} is not {RECORD_VERSION}",
                path.display(),
                record.version
            ),
        ));
    }
    Ok(record)
}

/// Names of every lab that has a record, sorted.
pub fn list() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(LABS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.path().join(RECORD_FILE).is_file())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Removes the directory of lab `name`.
pub fn remove(name: &str) -> io::Result<()> {
    match fs::remove_dir_all(lab_dir(name)) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Pids of every process whose network namespace has inode `netns_inode`.
pub fn processes_in_netns(netns_inode: u64) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|ns| ns.ino() == netns_inode)
        })
        .collect()
}

/// Stops `processes`: SIGTERM to each process group, then SIGKILL to whatever is still alive
/// after `grace`. Polls instead of sleeping a fixed time, so a quick exit costs nothing.
pub fn stop_processes(processes: &[ProcessId], grace: Duration) {
    for process in processes {
        process.signal_group(Signal::SIGTERM);
        process.signal(Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && processes.iter().any(ProcessId::is_alive) {
        std::thread::sleep(Duration::from_millis(10));
    }
    for process in processes {
        process.signal_group(Signal::SIGKILL);
        process.signal(Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_this_process() {
        let me = ProcessId::current().unwrap();
        assert_eq!(me.pid, std::process::id());
        assert!(me.is_alive());
        let impostor = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(
            !impostor.is_alive(),
            "a different start time is another process"
        );
    }

    #[test]
    fn a_dead_child_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let id = ProcessId::of(child.id()).unwrap();
        child.wait().unwrap();
        assert!(!id.is_alive());
    }
}
