//! Named network namespaces with `ip netns` semantics, and code run inside them.
//!
//! A namespace is pinned by a bind mount at `/run/netns/<name>`, exactly as `ip netns add` does,
//! so operators can inspect a lab with `ip netns exec` too. Code runs inside a namespace on a
//! short-lived thread that has called `setns`; sockets opened there stay bound to that namespace.
//! Netlink work runs on such a thread with its own current-thread tokio runtime, so callers of
//! this module need no runtime of their own and the host's namespace is never modified.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

/// Where `ip netns` keeps its namespace pins.
pub const NETNS_DIR: &str = "/run/netns";

/// Path of the pin of namespace `name`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether namespace `name` exists (its pin is present and mounted).
pub fn exists(name: &str) -> bool {
    netns_inode(name).is_some()
}

/// The inode of namespace `name`, which identifies it kernel-wide (it equals the inode of
/// `/proc/PID/ns/net` of every process inside it).
pub fn netns_inode(name: &str) -> Option<u64> {
    let pin = fs::metadata(netns_path(name)).ok()?;
    let parent = fs::metadata(NETNS_DIR).ok()?;
    // An unmounted pin is an empty file on the same device as its directory.
    (pin.dev() != parent.dev()).then_some(pin.ino())
}

/// Makes `/run/netns` a shared mount point as `ip netns add` does, so that pins created here
/// propagate to other mount namespaces (for example those of `ip netns exec`).
fn prepare_netns_dir() -> io::Result<()> {
    fs::create_dir_all(NETNS_DIR)?;
    let flags = MsFlags::MS_SHARED | MsFlags::MS_REC;
    if mount(None::<&str>, NETNS_DIR, None::<&str>, flags, None::<&str>).is_ok() {
        return Ok(());
    }
    // Not a mount point yet: bind it onto itself first, then share it.
    mount(
        Some(NETNS_DIR),
        NETNS_DIR,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(io::Error::from)?;
    mount(None::<&str>, NETNS_DIR, None::<&str>, flags, None::<&str>).map_err(io::Error::from)
}

/// Creates the named namespace; an existing namespace of that name is an error, because it may
/// belong to someone else.
pub fn create(name: &str) -> io::Result<()> {
    prepare_netns_dir()?;
    let pin = netns_path(name);
    if exists(name) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("network namespace {name} already exists"),
        ));
    }
    File::create(&pin)?;
    let pin_for_thread = pin.clone();
    let result = std::thread::spawn(move || -> io::Result<()> {
        // This thread moves into a fresh namespace and pins it; it ends right after, so no
        // other code ever runs in the wrong namespace.
        unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &pin_for_thread,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(io::Error::from)
    })
    .join()
    .map_err(|_| io::Error::other("namespace creation thread panicked"))?;
    if result.is_err() {
        let _ = fs::remove_file(&pin);
    }
    result
}

/// Removes the pin of namespace `name`. The kernel frees the namespace, and with it every
/// interface inside, once no process is left in it. Removing a missing namespace is not an error.
pub fn delete(name: &str) -> io::Result<()> {
    let pin = netns_path(name);
    if exists(name) {
        umount2(&pin, MntFlags::MNT_DETACH).map_err(io::Error::from)?;
    }
    match fs::remove_file(&pin) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Opens namespace `name` for `setns` or for moving an interface into it.
pub fn open(name: &str) -> io::Result<File> {
    if !exists(name) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("network namespace {name} does not exist"),
        ));
    }
    File::open(netns_path(name))
}

/// Runs `work` on a thread inside namespace `name` and returns its result.
pub fn run_in<T: Send>(name: &str, work: impl FnOnce() -> T + Send) -> io::Result<T> {
    let namespace = open(name)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(namespace.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                Ok(work())
            })
            .join()
            .map_err(|_| io::Error::other(format!("work inside namespace {name} panicked")))?
    })
}

/// Runs async netlink `work` with an rtnetlink handle whose socket lives inside namespace `name`.
pub fn netlink<T, E, F, Fut>(name: &str, work: F) -> io::Result<T>
where
    T: Send,
    E: std::fmt::Display,
    F: FnOnce(rtnetlink::Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, E>>,
{
    run_in(name, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection()?;
            let connection = tokio::spawn(connection);
            let handle: rtnetlink::Handle = handle;
            let result = work(handle).await;
            connection.abort();
            result.map_err(|error| io::Error::other(format!("netlink in {name}: {error}")))
        })
    })?
}
