//! smbd as a supervised child of the node: started in the foreground with the rendered
//! configuration, its output forwarded into the node's log (target `smbd`), restarted with
//! exponential backoff when it dies, sent SIGHUP when the rendered configuration changes, and
//! stopped with SIGTERM (then SIGKILL after a deadline) on shutdown. Its state is published on a
//! `watch` channel so the node's health probe can count "smbd is not running" at once.
//!
//! smbd gets a process group of its own: on SIGTERM smbd signals its whole process group (it
//! stops its per-connection children that way), which must not include the node. It also gets
//! `PR_SET_PDEATHSIG` = SIGTERM, so a node that is killed outright does not leave an orphaned
//! smbd holding port 445 and its pid file; the signal follows the thread that started smbd,
//! which is a runtime worker thread living as long as the node. Only the pid this module
//! started, and the group it leads while it is not yet reaped, are ever signalled.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::render::SambaPaths;

/// Where smbd is looked for before `PATH` (Debian installs it in /usr/sbin, which a non-root
/// `PATH` often lacks).
const SBIN_DIRECTORIES: [&str; 3] = ["/usr/sbin", "/usr/local/sbin", "/sbin"];

/// The longest smbd output line forwarded whole; longer lines are cut.
const MAX_LOG_LINE: usize = 4096;

/// Why smbd cannot be supervised.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error(
        "samba is not installed: no {program} in {} or PATH (on Debian: apt-get install samba)",
        SBIN_DIRECTORIES.join(", ")
    )]
    NotInstalled { program: String },
    #[error("cannot create the samba directory {}: {source}", path.display())]
    Directory {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the samba configuration {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The path of a Samba program (`smbd`, `smbpasswd`, `pdbedit`): the sbin directories first,
/// then `PATH`.
pub fn find_program(name: &str) -> Result<PathBuf, SuperviseError> {
    let path_directories = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    SBIN_DIRECTORIES
        .iter()
        .map(PathBuf::from)
        .chain(path_directories)
        .map(|directory| directory.join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| SuperviseError::NotInstalled {
            program: name.to_owned(),
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Creates the Samba directories of `paths` with their modes (an existing directory keeps its
/// contents and gets its mode set).
pub fn create_directories(paths: &SambaPaths) -> Result<(), SuperviseError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    for (path, mode) in paths.directories() {
        let created = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(&path)
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)));
        created.map_err(|source| SuperviseError::Directory {
            path: path.clone(),
            source,
        })?;
    }
    let map = paths.username_map();
    if !map.exists() {
        write_if_changed(&map, "").map_err(|source| SuperviseError::Write { path: map, source })?;
    }
    Ok(())
}

/// Replaces `path` with `text` atomically (a temporary file renamed over it) unless it already
/// holds exactly that; returns whether it changed.
pub fn write_if_changed(path: &Path, text: &str) -> io::Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == text.as_bytes()) {
        return Ok(false);
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)?;
    Ok(true)
}

/// The restart delays: `initial` after a crash, doubling with each crash that follows a short
/// run, at most `max`; a run of `reset_after` or longer starts over at `initial`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
    last: Option<Duration>,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, reset_after: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            reset_after,
            last: None,
        }
    }

    /// The delay before the next start, after a run that lasted `uptime`.
    pub fn after_exit(&mut self, uptime: Duration) -> Duration {
        let delay = match self.last {
            Some(last) if uptime < self.reset_after => last.saturating_mul(2).min(self.max),
            _ => self.initial,
        };
        self.last = Some(delay);
        delay
    }
}

impl Default for Backoff {
    /// 1 s, doubling to 30 s, reset after a minute of uptime. The first delay is longer than
    /// the node's health fall time (two 250 ms rounds), so a crashed smbd always costs the node
    /// its addresses before it returns; a node flapping faster than health can see would keep
    /// clients on a server that just lost their sessions.
    fn default() -> Self {
        Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(30),
            Duration::from_secs(60),
        )
    }
}

/// What smbd is doing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmbdState {
    /// Not started yet.
    Starting,
    /// Running as `pid`.
    Running { pid: u32 },
    /// Exited or failed to start; started again after the backoff delay.
    Restarting { reason: String, delay: Duration },
    /// Stopped for good (the node shuts down).
    Stopped,
}

impl SmbdState {
    /// `Ok` while smbd runs, else why not, as a lower-case sentence.
    pub fn running(&self) -> Result<u32, String> {
        match self {
            SmbdState::Running { pid } => Ok(*pid),
            SmbdState::Starting => Err("smbd is starting".to_owned()),
            SmbdState::Restarting { reason, delay } => Err(format!(
                "smbd is not running ({reason}); restarting in {}",
                describe_duration(*delay)
            )),
            SmbdState::Stopped => Err("smbd is stopped".to_owned()),
        }
    }
}

fn describe_duration(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{} ms", duration.as_millis())
    }
}

/// How smbd is run.
#[derive(Debug, Clone)]
pub struct SmbdOptions {
    /// The smbd binary ([`find_program`]).
    pub program: PathBuf,
    pub paths: SambaPaths,
    pub backoff: Backoff,
    /// How long smbd gets between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
}

/// The supervisor; [`Smbd::run`] drives it until cancelled.
#[derive(Debug)]
pub struct Smbd {
    options: SmbdOptions,
    state: watch::Sender<SmbdState>,
    reloads: mpsc::Receiver<String>,
}

/// What the rest of the node holds: the state, and a way to hand over a newly rendered
/// configuration.
#[derive(Debug, Clone)]
pub struct SmbdHandle {
    state: watch::Receiver<SmbdState>,
    reload: mpsc::Sender<String>,
}

impl SmbdHandle {
    /// smbd's current state.
    pub fn state(&self) -> SmbdState {
        self.state.borrow().clone()
    }

    /// A receiver of state changes.
    pub fn subscribe(&self) -> watch::Receiver<SmbdState> {
        self.state.clone()
    }

    /// Hands over a newly rendered configuration: written, and smbd reloaded, if it differs.
    /// Returns false when the supervisor has stopped.
    pub async fn reload(&self, text: String) -> bool {
        self.reload.send(text).await.is_ok()
    }
}

impl Smbd {
    /// Creates the state directories and writes `text` (the rendered configuration) where
    /// smbd will read it. Does not start smbd yet.
    pub fn prepare(options: SmbdOptions, text: &str) -> Result<(Smbd, SmbdHandle), SuperviseError> {
        create_directories(&options.paths)?;
        // A node that was killed outright took smbd with it (PR_SET_PDEATHSIG), but not the
        // helpers that detach from smbd: stop those before they serve a new smbd's clients with
        // the old configuration.
        stop_helpers(&options.paths);
        let config = options.paths.config();
        write_if_changed(&config, text).map_err(|source| SuperviseError::Write {
            path: config,
            source,
        })?;
        let (state, state_receiver) = watch::channel(SmbdState::Starting);
        let (reload, reloads) = mpsc::channel(4);
        Ok((
            Smbd {
                options,
                state,
                reloads,
            },
            SmbdHandle {
                state: state_receiver,
                reload,
            },
        ))
    }

    /// Runs smbd, restarting it as needed, until `stop` is cancelled; then stops it.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut backoff = self.options.backoff;
        'supervise: loop {
            let started = Instant::now();
            let reason = match self.spawn() {
                Ok(child) => match self.watch(child, &stop).await {
                    Some(status) => format!("smbd exited: {status}"),
                    None => break 'supervise,
                },
                Err(error) => format!("cannot start {}: {error}", self.options.program.display()),
            };
            let delay = backoff.after_exit(started.elapsed());
            tracing::error!(
                target: "smbd",
                "{reason}; restarting in {}",
                describe_duration(delay)
            );
            self.state
                .send_replace(SmbdState::Restarting { reason, delay });
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    () = stop.cancelled() => break 'supervise,
                        Some(text) = self.reloads.recv() => { self.write_config(&text); }
                }
            }
        }
        stop_helpers(&self.options.paths);
        self.state.send_replace(SmbdState::Stopped);
    }

    fn spawn(&self) -> io::Result<Child> {
        let mut command = Command::new(&self.options.program);
        command
            .arg("--foreground")
            .arg("--no-process-group")
            .arg("--debug-stdout")
            .arg("--configfile")
            .arg(self.options.paths.config())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let parent = std::process::id();
        // SAFETY: runs in the forked child before exec; prctl, getppid and kill are
        // async-signal-safe system calls on plain integers, and nothing is allocated.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The node may have died between fork and prctl.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(io::Error::other("the node exited while starting smbd"));
                }
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(forward_lines(stdout));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward_lines(stderr));
        }
        Ok(child)
    }

    /// Watches a running smbd: reloads it, and returns its exit status when it exits, or
    /// `None` once it was stopped because `stop` was cancelled.
    async fn watch(&mut self, mut child: Child, stop: &CancellationToken) -> Option<ExitStatus> {
        let Some(pid) = child.id() else {
            return Some(child.wait().await.unwrap_or_default());
        };
        tracing::info!(target: "smbd", pid, "smbd started");
        self.state.send_replace(SmbdState::Running { pid });
        loop {
            tokio::select! {
                status = child.wait() => {
                    return Some(status.unwrap_or_default());
                }
                Some(text) = self.reloads.recv() => {
                    if self.write_config(&text) {
                        // Not reaped yet (wait did not return), so `pid` is still this smbd.
                        signal(pid, libc::SIGHUP);
                        tracing::info!(target: "smbd", pid, "configuration changed; smbd reloads it");
                    }
                }
                () = stop.cancelled() => {
                    self.terminate(child, pid).await;
                    return None;
                }
            }
        }
    }

    /// SIGTERM, then SIGKILL to the group smbd leads if it is still there after the timeout.
    async fn terminate(&self, mut child: Child, pid: u32) {
        signal(pid, libc::SIGTERM);
        match tokio::time::timeout(self.options.stop_timeout, child.wait()).await {
            Ok(status) => {
                tracing::info!(target: "smbd", pid, "smbd stopped: {}", status.unwrap_or_default());
            }
            Err(_) => {
                tracing::warn!(
                    target: "smbd",
                    pid,
                    "smbd did not stop within {}; killing its process group",
                    describe_duration(self.options.stop_timeout)
                );
                // Still unreaped, so the group id is still smbd's.
                if let Ok(group) = i32::try_from(pid) {
                    signal_group(group, libc::SIGKILL);
                }
                let _ = child.wait().await;
            }
        }
    }

    /// Writes a new configuration; returns whether it changed.
    fn write_config(&self, text: &str) -> bool {
        let path = self.options.paths.config();
        match write_if_changed(&path, text) {
            Ok(changed) => changed,
            Err(error) => {
                tracing::error!(target: "smbd", "cannot write {}: {error}", path.display());
                false
            }
        }
    }
}

/// Helpers smbd starts on demand that leave its process group: `samba-dcerpcd` (the RPC
/// services behind IPC$, such as share listing) detaches and outlives smbd.
const DETACHED_HELPERS: [&str; 1] = ["samba-dcerpcd"];

/// Stops the detached helpers of this node's smbd: the pid in their pid file, only if that
/// process runs with this node's configuration file.
fn stop_helpers(paths: &SambaPaths) {
    let config = format!("--configfile={}", paths.config().display());
    for helper in DETACHED_HELPERS {
        let pid_file = paths.root().join("run").join(format!("{helper}.pid"));
        let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            cmdline
                .split(|&byte| byte == 0)
                .any(|argument| argument == config.as_bytes())
        });
        if ours {
            tracing::info!(target: "smbd", pid, "stopping {helper}");
            signal(pid, libc::SIGTERM);
        }
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = i32::try_from(pid) else {
        return;
    };
    if pid <= 1 {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions. The callers pass the pid of a child they
    // have not reaped yet, or of a helper whose command line they just checked.
    unsafe {
        libc::kill(pid, signal);
    }
}

fn signal_group(group: i32, signal: libc::c_int) {
    if group <= 1 {
        return;
    }
    // SAFETY: as in `signal`; the group is led by an unreaped child of ours.
    unsafe {
        libc::kill(-group, signal);
    }
}

/// Forwards smbd's output line by line into tracing (target `smbd`), cutting lines at
/// [`MAX_LOG_LINE`] bytes so that a runaway line cannot grow memory.
async fn forward_lines(output: impl AsyncRead + Unpin) {
    let mut reader = BufReader::new(output);
    let mut line = Vec::new();
    loop {
        match read_line_bounded(&mut reader, &mut line, MAX_LOG_LINE).await {
            Ok(0) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                if !text.trim().is_empty() {
                    tracing::info!(target: "smbd", "{}", text.trim_start());
                }
            }
            Err(error) => {
                tracing::debug!(target: "smbd", %error, "cannot read smbd output");
                return;
            }
        }
    }
}

/// Reads one line into `line` (cleared first), keeping at most `max` bytes of it and skipping
/// the rest; returns the bytes consumed, 0 at the end of the stream.
async fn read_line_bounded<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    line.clear();
    let mut consumed = 0;
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            return Ok(consumed);
        }
        let (chunk, done) = match buffer.iter().position(|&byte| byte == b'\n') {
            Some(end) => (&buffer[..end + 1], true),
            None => (buffer, false),
        };
        let room = max.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let length = chunk.len();
        reader.consume(length);
        consumed += length;
        if done {
            return Ok(consumed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_maximum_and_resets_after_a_long_run() {
        let second = Duration::from_secs(1);
        let mut backoff = Backoff::new(second / 2, 4 * second, 60 * second);
        // (uptime of the run that ended, delay before the next start)
        for (uptime, delay) in [
            (0, 500),
            (100, 1000),
            (100, 2000),
            (100, 4000),
            (100, 4000),
            (59_999, 4000),
            (60_000, 500),
            (10, 1000),
            (120_000, 500),
        ] {
            assert_eq!(
                backoff.after_exit(Duration::from_millis(uptime)),
                Duration::from_millis(delay),
                "after a run of {uptime} ms"
            );
        }
    }

    #[test]
    fn states_explain_themselves() {
        for (state, expected) in [
            (SmbdState::Running { pid: 42 }, Ok(42)),
            (SmbdState::Starting, Err("smbd is starting".to_owned())),
            (
                SmbdState::Restarting {
                    reason: "smbd exited: signal: 9 (SIGKILL)".into(),
                    delay: Duration::from_millis(1500),
                },
                Err(
                    "smbd is not running (smbd exited: signal: 9 (SIGKILL)); restarting in 1500 ms"
                        .to_owned(),
                ),
            ),
            (SmbdState::Stopped, Err("smbd is stopped".to_owned())),
        ] {
            assert_eq!(state.running(), expected);
        }
    }

    #[test]
    fn a_missing_program_is_named() {
        let error = find_program("no-such-samba-program").unwrap_err();
        assert_eq!(
            error.to_string(),
            "samba is not installed: no no-such-samba-program in /usr/sbin, /usr/local/sbin, \
             /sbin or PATH (on Debian: apt-get install samba)"
        );
    }

    #[test]
    fn configurations_are_replaced_only_when_they_change() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("smb.conf");
        assert!(write_if_changed(&path, "a").unwrap());
        assert!(!write_if_changed(&path, "a").unwrap());
        assert!(write_if_changed(&path, "b").unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b");
    }

    /// Polls `condition` every 10 ms for up to 10 s.
    async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if condition() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        condition()
    }

    /// A helper left by a node that was killed outright (its pid file names it, and it runs
    /// with this node's configuration) is stopped when smbd is prepared again; a process with
    /// another configuration behind a stale pid file is left alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn preparing_stops_the_helpers_a_killed_node_left_behind() {
        let directory = tempfile::tempdir().unwrap();
        let paths = SambaPaths::under(directory.path());
        create_directories(&paths).unwrap();
        // A shell that waits for a child keeps its arguments, so its command line carries the
        // `--configfile=` the helper's would.
        let spawn_waiting = |config: &str| {
            std::process::Command::new("sh")
                .args([
                    "-c",
                    "trap 'kill $!; exit 0' TERM; sleep 30 & wait",
                    "samba-dcerpcd",
                ])
                .arg(format!("--configfile={config}"))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut ours = spawn_waiting(&paths.config().display().to_string());
        let mut other = spawn_waiting("/etc/samba/smb.conf");
        let pid_file = paths.root().join("run").join("samba-dcerpcd.pid");
        std::fs::write(&pid_file, format!("{}\n", ours.id())).unwrap();
        let options = SmbdOptions {
            program: PathBuf::from("/nonexistent/smbd"),
            paths: paths.clone(),
            backoff: Backoff::default(),
            stop_timeout: Duration::from_secs(5),
        };
        let _prepared = Smbd::prepare(options.clone(), "config").unwrap();
        assert!(eventually(|| ours.try_wait().unwrap().is_some()).await);
        // The pid file now names a process of another configuration: not ours to stop.
        std::fs::write(&pid_file, format!("{}\n", other.id())).unwrap();
        let _prepared = Smbd::prepare(options, "config").unwrap();
        assert!(other.try_wait().unwrap().is_none());
        signal(other.id(), libc::SIGTERM);
        other.wait().unwrap();
    }

    /// The supervisor's shell against a stand-in for smbd: a script that records its start,
    /// SIGHUP and SIGTERM next to the configuration file it was given.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restarts_reloads_and_stops_a_real_process() {
        use std::os::unix::fs::PermissionsExt as _;
        let directory = tempfile::tempdir().unwrap();
        let program = directory.path().join("fake-smbd");
        std::fs::write(
            &program,
            "#!/bin/sh\n\
             events=\"$5.events\"\n\
             trap 'echo hup >> \"$events\"' HUP\n\
             trap 'echo term >> \"$events\"; exit 0' TERM\n\
             echo \"start $$\" >> \"$events\"\n\
             echo 'fake smbd says hello'\n\
             while :; do sleep 0.02; done\n",
        )
        .unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let paths = SambaPaths::under(directory.path());
        let events_path = PathBuf::from(format!("{}.events", paths.config().display()));
        let events = || std::fs::read_to_string(&events_path).unwrap_or_default();
        let count = |word: &str| events().lines().filter(|l| l.starts_with(word)).count();
        let options = SmbdOptions {
            program,
            paths: paths.clone(),
            backoff: Backoff::new(
                Duration::from_millis(20),
                Duration::from_millis(100),
                Duration::from_secs(60),
            ),
            stop_timeout: Duration::from_secs(5),
        };
        let (smbd, handle) = Smbd::prepare(options, "first").unwrap();
        assert_eq!(std::fs::read_to_string(paths.config()).unwrap(), "first");
        assert!(paths.username_map().exists());
        let stop = CancellationToken::new();
        let task = tokio::spawn(smbd.run(stop.clone()));

        assert!(eventually(|| handle.state().running().is_ok() && count("start") == 1).await);
        let first = handle.state().running().unwrap();

        // A changed configuration is written and signalled; an unchanged one is not.
        assert!(handle.reload("second".to_owned()).await);
        assert!(eventually(|| count("hup") == 1).await, "{}", events());
        assert_eq!(std::fs::read_to_string(paths.config()).unwrap(), "second");
        assert!(handle.reload("second".to_owned()).await);
        assert!(handle.reload("third".to_owned()).await);
        assert!(eventually(|| count("hup") == 2).await, "{}", events());

        // Exited (by a SIGTERM not from the supervisor): started again after the backoff. The
        // script handles pending signals in number order, so every SIGHUP sent before is
        // recorded before this "term": the unchanged text was not signalled.
        signal(first, libc::SIGTERM);
        assert!(
            eventually(
                || count("start") == 2 && handle.state().running().is_ok_and(|pid| pid != first)
            )
            .await,
            "{:?} {}",
            handle.state(),
            events()
        );
        assert_eq!(
            count("hup"),
            2,
            "the unchanged text was signalled: {}",
            events()
        );
        // Killed outright: started again too.
        let second = handle.state().running().unwrap();
        signal(second, libc::SIGKILL);
        assert!(
            eventually(
                || count("start") == 3 && handle.state().running().is_ok_and(|pid| pid != second)
            )
            .await,
            "{:?} {}",
            handle.state(),
            events()
        );

        // Stopped: SIGTERM, and the supervisor ends.
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(handle.state(), SmbdState::Stopped);
        assert_eq!(count("term"), 2, "{}", events());
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        let input: &[u8] = b"short\nlonger than eight\n\nlast";
        let mut reader = BufReader::with_capacity(4, input);
        let mut line = Vec::new();
        let mut lines = Vec::new();
        while read_line_bounded(&mut reader, &mut line, 8).await.unwrap() > 0 {
            lines.push(String::from_utf8(line.clone()).unwrap());
        }
        assert_eq!(lines, ["short\n", "longer t", "\n", "last"]);
    }
}
