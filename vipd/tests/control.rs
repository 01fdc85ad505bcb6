//! The control socket over a real Unix socket in a temporary directory, with a tiny fake node
//! answering requests: answers in order, bad lines refused without ending the connection, the
//! length bound, the handler deadline, root-only access (file mode and SO_PEERCRED, checked by a
//! forked child that drops to uid 65534), the client's errors for a missing or dead socket, one
//! live server per path, and clean-up on shutdown.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use vipd::control::{
    self, ClusterStatus, ControlError, ControlSocket, IpReport, NodeFlags, NodeStatus, Request,
    RequestEnvelope, Response, ServerLimits,
};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn sample_status() -> ClusterStatus {
    ClusterStatus {
        this_node: 0,
        nodes: vec![NodeStatus {
            pnn: 0,
            name: "node1".into(),
            cluster_address: "198.51.100.11".parse().unwrap(),
            flags: NodeFlags::default(),
            ban_left_secs: None,
            failing_probes: vec![],
            raft: vipd::control::RaftRole::Voter,
        }],
        leader: Some(0),
        term: 4,
        commit_index: 118,
        applied_index: 118,
    }
}

/// A stand-in for the node's event loop: answers `status` and `ip`, confirms `move-ip`, never
/// answers `disable` (it keeps the reply sender), and drops `enable` unanswered.
async fn fake_node(mut requests: mpsc::Receiver<RequestEnvelope>) {
    let mut unanswered: Vec<oneshot::Sender<Response>> = Vec::new();
    while let Some((request, reply)) = requests.recv().await {
        let response = match request {
            Request::Status => Response::Status(sample_status()),
            Request::Ip { .. } => Response::Ips(IpReport {
                live_serial: 0,
                this_node: 0,
                ips: vec![],
            }),
            Request::MoveIp { address, node } => Response::Done {
                message: format!("moved {address} to {node}"),
            },
            Request::Disable { .. } => {
                unanswered.push(reply);
                continue;
            }
            Request::Enable { .. } => continue,
            other => Response::error(format!("not in this test: {other:?}")),
        };
        let _ = reply.send(response);
    }
}

/// A control server on a fresh temporary directory, stopped (and checked) by `stop`.
struct Server {
    directory: tempfile::TempDir,
    path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    async fn start(limits: ServerLimits) -> Server {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("run").join("vipgate.sock");
        let socket = ControlSocket::bind(&path, limits).await.unwrap();
        let (sender, receiver) = mpsc::channel(8);
        tokio::spawn(fake_node(receiver));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(socket.run(sender, async move {
            let _ = stopped.await;
        }));
        Server {
            directory,
            path,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task.take().unwrap())
            .await
            .expect("the server ends after shutdown")
            .unwrap();
        assert!(
            !self.path.exists(),
            "the socket file is removed on shutdown"
        );
    }
}

/// A raw line-oriented connection, to speak the protocol by hand.
struct Raw {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Raw {
    async fn connect(path: &Path) -> Raw {
        let (read_half, write_half) = UnixStream::connect(path).await.unwrap().into_split();
        Raw {
            reader: BufReader::new(read_half),
            writer: write_half,
        }
    }

    async fn send(&mut self, line: &str) {
        self.writer.write_all(line.as_bytes()).await.unwrap();
        self.writer.write_all(b"\n").await.unwrap();
    }

    /// The next response line as JSON, or `None` at end of stream.
    async fn receive(&mut self) -> Option<serde_json::Value> {
        let mut line = String::new();
        let read = tokio::time::timeout(CALL_TIMEOUT, self.reader.read_line(&mut line))
            .await
            .expect("a response within the timeout")
            .unwrap();
        (read > 0).then(|| serde_json::from_str(&line).unwrap())
    }
}

#[tokio::test]
async fn requests_are_answered_in_order_on_one_connection() {
    let server = Server::start(ServerLimits::default()).await;
    let response = control::call(&server.path, &Request::Status, CALL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(response, Response::Status(sample_status()));

    let mut raw = Raw::connect(&server.path).await;
    raw.send(r#"{"command":"move-ip","address":"192.0.2.101","node":"node2"}"#)
        .await;
    raw.send(r#"{"command":"ip","all":true}"#).await;
    raw.send("").await; // Blank lines are skipped, not answered.
    raw.send(r#"{"command":"status"}"#).await;
    let first = raw.receive().await.unwrap();
    assert_eq!(first["result"], "done");
    assert_eq!(first["message"], "moved 192.0.2.101 to node2");
    assert_eq!(raw.receive().await.unwrap()["result"], "ips");
    let third = raw.receive().await.unwrap();
    assert_eq!(third["result"], "status");
    assert_eq!(third["nodes"][0]["name"], "node1");
    server.stop().await;
}

#[tokio::test]
async fn a_malformed_line_gets_an_error_and_the_connection_carries_on() {
    let server = Server::start(ServerLimits::default()).await;
    let mut raw = Raw::connect(&server.path).await;
    for bad in [
        "this is not json",
        r#"{"command":"reboot"}"#,
        r#"{"command":"ban","seconds":"soon","node":null}"#,
        "\u{0}\u{1}\u{2}",
    ] {
        raw.send(bad).await;
        let answer = raw.receive().await.unwrap();
        assert_eq!(answer["result"], "error", "{bad}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.starts_with("bad request: "), "{bad}: {message}");
    }
    raw.send(r#"{"command":"status"}"#).await;
    assert_eq!(raw.receive().await.unwrap()["result"], "status");
    server.stop().await;
}

#[tokio::test]
async fn an_over_long_line_gets_an_error_and_the_connection_is_closed() {
    let server = Server::start(ServerLimits {
        max_request_bytes: 1024,
        ..ServerLimits::default()
    })
    .await;
    let mut raw = Raw::connect(&server.path).await;
    // Exactly the limit is still a request (and a bad one, as it is not JSON)...
    raw.send(&"x".repeat(1024)).await;
    let answer = raw.receive().await.unwrap();
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .starts_with("bad request: expected value")
    );
    // ...one byte more is refused unread, and the connection ends.
    let long = format!("{}\n", "x".repeat(200_000));
    let mut writer = raw.writer;
    // The server stops reading after the limit, so the rest of the write may fail: ignore it.
    let writing = tokio::spawn(async move { writer.write_all(long.as_bytes()).await });
    let mut line = String::new();
    raw.reader.read_line(&mut line).await.unwrap();
    let answer: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(answer["result"], "error");
    assert_eq!(answer["message"], "bad request: longer than 1024 bytes");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(CALL_TIMEOUT, raw.reader.read_to_end(&mut rest))
        .await
        .expect("the server closes the connection");
    // A close with our unread bytes in its queue may surface as ECONNRESET; either way, no more
    // answers.
    if read.is_ok() {
        assert!(rest.is_empty(), "nothing after the error: {rest:?}");
    }
    let _ = writing.await;
    // The server itself carries on.
    let response = control::call(&server.path, &Request::Status, CALL_TIMEOUT).await;
    assert!(matches!(response, Ok(Response::Status(_))));
    server.stop().await;
}

#[tokio::test]
async fn a_node_that_does_not_answer_in_time_is_reported() {
    let server = Server::start(ServerLimits {
        handler_deadline: Duration::from_millis(200),
        ..ServerLimits::default()
    })
    .await;
    let silent = control::call(&server.path, &Request::Disable { node: None }, CALL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(silent, Response::error("the node did not answer in 200ms"));
    let dropped = control::call(&server.path, &Request::Enable { node: None }, CALL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        dropped,
        Response::error("the node dropped the request without answering")
    );
    server.stop().await;
}

#[tokio::test]
async fn a_node_whose_event_loop_is_gone_says_it_is_shutting_down() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("vipgate.sock");
    let socket = ControlSocket::bind(&path, ServerLimits::default())
        .await
        .unwrap();
    let (sender, receiver) = mpsc::channel(1);
    drop(receiver);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(socket.run(sender, async move {
        let _ = stopped.await;
    }));
    let response = control::call(&path, &Request::Status, CALL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(response, Response::error("the node is shutting down"));
    stop.send(()).unwrap();
    task.await.unwrap();
    assert!(!path.exists());
}

#[tokio::test]
async fn connections_beyond_the_limit_are_told_and_closed() {
    let server = Server::start(ServerLimits {
        max_connections: 1,
        ..ServerLimits::default()
    })
    .await;
    let mut first = Raw::connect(&server.path).await;
    first.send(r#"{"command":"status"}"#).await;
    assert_eq!(first.receive().await.unwrap()["result"], "status");
    let mut second = Raw::connect(&server.path).await;
    let refused = second.receive().await.unwrap();
    assert_eq!(
        refused["message"],
        "too many control connections (at most 1)"
    );
    assert!(second.receive().await.is_none());
    drop(first);
    // The permit comes back once the first connection's task has ended; poll with a deadline.
    let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
    loop {
        match control::call(&server.path, &Request::Status, CALL_TIMEOUT).await {
            Ok(Response::Status(_)) => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "the slot was not freed: {other:?}"
            ),
        }
        tokio::task::yield_now().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn the_socket_is_private_and_its_directory_is_created() {
    let server = Server::start(ServerLimits::default()).await;
    let socket = std::fs::symlink_metadata(&server.path).unwrap();
    assert!(socket.file_type().is_socket());
    assert_eq!(socket.permissions().mode() & 0o777, 0o600);
    let directory = std::fs::metadata(server.path.parent().unwrap()).unwrap();
    // The umask may clear bits; it never adds any.
    assert_eq!(directory.permissions().mode() & 0o7077 & !0o055, 0);
    assert_eq!(directory.permissions().mode() & 0o700, 0o700);
    server.stop().await;
}

#[tokio::test]
async fn a_missing_socket_and_a_dead_socket_give_the_documented_errors() {
    let directory = tempfile::tempdir().unwrap();
    let missing = directory.path().join("missing.sock");
    let error = control::call(&missing, &Request::Status, CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(error, ControlError::NoNode { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "no vipgate node is running here: {} does not exist (start `vipgate node`, or pass --socket)",
            missing.display()
        )
    );

    let dead = directory.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let error = control::call(&dead, &Request::Status, CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ControlError::NotListening { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "no vipgate node is running here: nothing is listening on {} (stale socket?)",
            dead.display()
        )
    );

    // A listener that accepts but never answers: the client's own timeout.
    let mute = directory.path().join("mute.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&mute).unwrap();
    let error = control::call(&mute, &Request::Status, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(error, ControlError::Timeout { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("the node on {} did not answer within 100ms", mute.display())
    );
}

#[tokio::test]
async fn one_live_server_per_path_and_stale_sockets_are_replaced() {
    let server = Server::start(ServerLimits::default()).await;
    let error = ControlSocket::bind(&server.path, ServerLimits::default())
        .await
        .unwrap_err();
    assert!(matches!(error, ControlError::InUse { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "another vipgate node is running: it answers on {}",
            server.path.display()
        )
    );
    // The refused second server did not remove the live one's socket.
    let response = control::call(&server.path, &Request::Status, CALL_TIMEOUT).await;
    assert!(matches!(response, Ok(Response::Status(_))));
    let path = server.path.clone();
    server.stop().await;

    // A socket file whose server died without cleaning up is stale: a new server takes it over.
    let stale_directory = tempfile::tempdir().unwrap();
    let stale = stale_directory.path().join("vipgate.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let socket = ControlSocket::bind(&stale, ServerLimits::default())
        .await
        .unwrap();
    assert_eq!(socket.path(), stale);
    drop(socket);
    assert!(!stale.exists(), "dropping a bound socket removes its file");
    assert!(!path.exists());
}

#[tokio::test]
async fn a_path_that_is_not_a_socket_is_left_alone() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("vipgate.sock");
    std::fs::write(&path, "precious").unwrap();
    let error = ControlSocket::bind(&path, ServerLimits::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error, ControlError::NotASocket { .. }),
        "{error:?}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

#[tokio::test]
async fn serve_runs_until_shutdown_and_removes_its_socket() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("nested").join("vipgate.sock");
    let (sender, receiver) = mpsc::channel(8);
    tokio::spawn(fake_node(receiver));
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn({
        let path = path.clone();
        async move {
            control::serve(&path, sender, async move {
                let _ = stopped.await;
            })
            .await
        }
    });
    let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
    let response = loop {
        match control::call(&path, &Request::Status, CALL_TIMEOUT).await {
            Ok(response) => break response,
            Err(error) => assert!(
                tokio::time::Instant::now() < deadline,
                "serve never came up: {error}"
            ),
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(response, Response::Status(sample_status()));
    // A connection left open does not hold shutdown up.
    let idle = Raw::connect(&path).await;
    stop.send(()).unwrap();
    tokio::time::timeout(CALL_TIMEOUT, serving)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
    assert!(!path.exists());
    let error = control::call(&path, &Request::Status, CALL_TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(error, ControlError::NoNode { .. }), "{error:?}");
    drop(idle);
}

/// What a client running as uid/gid 65534 saw.
#[derive(Debug, PartialEq, Eq)]
enum NobodySaw {
    /// `connect` failed with this errno.
    ConnectFailed(i32),
    /// Connected, sent the request, and read this until the server closed.
    Answer(Vec<u8>),
    /// The child could not drop its privileges (the test is then meaningless).
    CannotDropPrivileges,
}

/// Forks a child that drops to uid and gid 65534, connects to `path`, sends `request`, and
/// reports through a pipe what it saw. The child only makes async-signal-safe calls on data
/// prepared before the fork (the test process has other threads).
fn as_nobody(path: &Path, request: &[u8]) -> NobodySaw {
    use std::io::Read as _;
    use std::os::fd::FromRawFd as _;
    use std::os::unix::ffi::OsStrExt as _;

    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path_bytes = path.as_os_str().as_bytes();
    assert!(
        path_bytes.len() < address.sun_path.len(),
        "socket path too long"
    );
    for (slot, byte) in address.sun_path.iter_mut().zip(path_bytes) {
        *slot = *byte as libc::c_char;
    }
    let address_len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    let mut pipe_fds = [0; 2];
    // SAFETY: pipe_fds has room for the two descriptors pipe2 writes.
    let piped = unsafe { libc::pipe2(pipe_fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(piped, 0, "pipe2 failed");
    let [pipe_read, pipe_write] = pipe_fds;

    // SAFETY: the child below calls only async-signal-safe functions (setgroups, setgid, setuid,
    // socket, connect, write, read, _exit) on memory prepared before the fork, and never returns.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: (child) plain system calls on valid pointers and lengths; see above.
        unsafe {
            let report = |tag: u8, payload: &[u8]| {
                libc::write(pipe_write, (&raw const tag).cast(), 1);
                libc::write(pipe_write, payload.as_ptr().cast(), payload.len());
            };
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                report(b'P', &[]);
                libc::_exit(0);
            }
            let socket = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if libc::connect(socket, (&raw const address).cast(), address_len) != 0 {
                let errno = *libc::__errno_location();
                report(b'E', &errno.to_ne_bytes());
                libc::_exit(0);
            }
            libc::write(socket, request.as_ptr().cast(), request.len());
            let mut buffer = [0u8; 4096];
            report(b'A', &[]);
            loop {
                let read = libc::read(socket, buffer.as_mut_ptr().cast(), buffer.len());
                if read <= 0 {
                    break;
                }
                let chunk = &buffer[..read as usize];
                libc::write(pipe_write, chunk.as_ptr().cast(), chunk.len());
                // One answer line is all a client gets; stop there even if the server is lax.
                if chunk.contains(&b'\n') {
                    break;
                }
            }
            libc::_exit(0);
        }
    }
    // SAFETY: the parent owns both pipe ends; the write end is closed so reading ends when the
    // child exits.
    let mut from_child = unsafe {
        libc::close(pipe_write);
        std::fs::File::from_raw_fd(pipe_read)
    };
    let mut seen = Vec::new();
    from_child.read_to_end(&mut seen).unwrap();
    let mut status = 0;
    // SAFETY: pid is our child; status is a valid out-pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    match seen.split_first() {
        Some((b'E', errno)) => {
            NobodySaw::ConnectFailed(i32::from_ne_bytes(errno.try_into().unwrap()))
        }
        Some((b'A', answer)) => NobodySaw::Answer(answer.to_vec()),
        Some((b'P', _)) => NobodySaw::CannotDropPrivileges,
        other => panic!("the child reported nothing useful: {other:?}"),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_root_client_is_refused_by_the_mode_and_by_its_credentials() {
    if !is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "this test needs root, and CI must run it as root"
        );
        eprintln!("SKIPPED: needs root to fork a client that drops to uid 65534");
        return;
    }
    let server = Server::start(ServerLimits::default()).await;
    // Let uid 65534 reach the socket's directory; only the socket's own mode stands in the way.
    for directory in [server.directory.path(), server.path.parent().unwrap()] {
        std::fs::set_permissions(directory, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let request = b"{\"command\":\"status\"}\n".to_vec();

    let path = server.path.clone();
    let by_mode = tokio::task::spawn_blocking({
        let request = request.clone();
        move || as_nobody(&path, &request)
    })
    .await
    .unwrap();
    assert_eq!(by_mode, NobodySaw::ConnectFailed(libc::EACCES));

    // With the mode opened up, SO_PEERCRED still refuses the client.
    std::fs::set_permissions(&server.path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let path = server.path.clone();
    let by_credentials = tokio::task::spawn_blocking(move || as_nobody(&path, &request))
        .await
        .unwrap();
    let NobodySaw::Answer(answer) = by_credentials else {
        panic!("expected an answer, got {by_credentials:?}");
    };
    let answer: Response = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer, Response::error(control::ROOT_ONLY));

    // Root itself is still served.
    let response = control::call(&server.path, &Request::Status, CALL_TIMEOUT).await;
    assert!(matches!(response, Ok(Response::Status(_))));
    server.stop().await;
}
