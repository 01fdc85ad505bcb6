//! Per-thread credentials (DESIGN.md invariant 5): every file operation runs with the caller's
//! file-system uid, gid and supplementary groups, after squashing, on the thread that performs
//! it, and the thread gets the daemon's own credentials back afterwards.
//!
//! Linux keeps credentials per thread; glibc's `setuid`/`setgroups` wrappers then copy a change
//! to every thread of the process (the POSIX rule), which would let one request's identity leak
//! into all others. The raw `setfsuid`, `setfsgid` and `setgroups` system calls change only the
//! calling thread, as NFS-Ganesha does. Changing the file-system uid away from 0 also clears the
//! file-system capabilities (`CAP_DAC_OVERRIDE`, `CAP_CHOWN`, `CAP_FOWNER`, …) from the thread's
//! effective set and setting it back to 0 restores them, so a caller acting as uid 1000 gets
//! exactly uid 1000's permission checks from the kernel.
//!
//! Threads that run operations also get their own umask of 0 (see [`run_as`]).

use std::io;

use crate::sys;

/// Who a request acts as, after squashing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (AUTH_SYS carries at most 16).
    pub groups: Vec<u32>,
}

impl Identity {
    /// The daemon's own identity: root, no supplementary groups.
    pub fn root() -> Self {
        Identity {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
        }
    }
}

/// Why the thread could not take on a caller's identity.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot set supplementary groups {groups:?}")]
    Groups {
        groups: Vec<u32>,
        #[source]
        source: io::Error,
    },
    #[error("cannot read this thread's supplementary groups")]
    ReadGroups(#[source] io::Error),
    #[error(
        "the kernel refused file-system id {id} (is the daemon running without CAP_SETUID/CAP_SETGID?)"
    )]
    Refused { id: u32 },
    #[error("cannot give this thread its own umask")]
    Umask(#[source] io::Error),
}

thread_local! {
    /// Whether this thread has its own file-system context with umask 0.
    static OWN_UMASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Gives the calling thread its own umask of 0, once. An NFS client applies its own umask
/// before it sends a mode, so the server must create files with exactly that mode (knfsd runs
/// with umask 0 too). `unshare(CLONE_FS)` detaches this thread's cwd, root and umask from the
/// rest of the process, so the change stays on the threads that serve calls.
fn ensure_own_umask() -> Result<(), CredentialError> {
    if OWN_UMASK.get() {
        return Ok(());
    }
    // SAFETY: unshare and umask have no memory arguments; CLONE_FS only affects this thread.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        return Err(CredentialError::Umask(io::Error::last_os_error()));
    }
    // SAFETY: as above.
    unsafe { libc::umask(0) };
    OWN_UMASK.set(true);
    Ok(())
}

/// The thread's previous credentials, restored on drop.
#[derive(Debug)]
struct Restore {
    fsuid: u32,
    fsgid: u32,
    groups: Vec<u32>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        // uid first: switching back to 0 restores the capabilities setgroups needs.
        sys::set_fsuid(self.fsuid);
        sys::set_fsgid(self.fsgid);
        if let Err(error) = sys::set_groups(&self.groups) {
            // A thread that keeps a caller's groups would hand them to the next request on it.
            // That must never happen, and there is no way to recover the thread.
            tracing::error!(%error, "cannot restore the daemon's supplementary groups; aborting");
            std::process::abort();
        }
    }
}

/// Runs `operation` on this thread as `identity`, then restores the thread's credentials (also
/// when `operation` panics). The first call on a thread gives it its own umask of 0.
pub fn run_as<T>(identity: &Identity, operation: impl FnOnce() -> T) -> Result<T, CredentialError> {
    ensure_own_umask()?;
    let groups = sys::groups().map_err(CredentialError::ReadGroups)?;
    sys::set_groups(&identity.groups).map_err(|source| CredentialError::Groups {
        groups: identity.groups.clone(),
        source,
    })?;
    let fsgid = sys::set_fsgid(identity.gid);
    let fsuid = sys::set_fsuid(identity.uid);
    let restore = Restore {
        fsuid,
        fsgid,
        groups,
    };
    // setfsuid and setfsgid report no errors; an invalid id (-1) reads the current value back.
    if sys::set_fsgid(u32::MAX) != identity.gid {
        drop(restore);
        return Err(CredentialError::Refused { id: identity.gid });
    }
    if sys::set_fsuid(u32::MAX) != identity.uid {
        drop(restore);
        return Err(CredentialError::Refused { id: identity.uid });
    }
    let result = operation();
    drop(restore);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn is_root() -> bool {
        // SAFETY: geteuid has no arguments and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn caller_identity_applies_to_this_thread_only_and_is_restored() {
        if !is_root() {
            eprintln!("SKIPPED: needs root to change credentials");
            return;
        }
        let directory = tempfile::tempdir().unwrap();
        let secret = directory.path().join("secret");
        std::fs::write(&secret, b"root only").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let user = Identity {
            uid: 1000,
            gid: 1000,
            groups: vec![1000, 27],
        };

        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (back_tx, back_rx) = std::sync::mpsc::channel::<bool>();
        let secret_clone = secret.clone();
        // Another thread reads while this one is uid 1000: it must still be root.
        let other = std::thread::spawn(move || {
            rx.recv().unwrap();
            back_tx.send(std::fs::read(&secret_clone).is_ok()).unwrap();
        });

        let (read_as_user, other_thread_could_read) = run_as(&user, || {
            // The kernel keeps groups sorted.
            assert_eq!(sys::groups().unwrap(), vec![27, 1000]);
            tx.send(()).unwrap();
            let other = back_rx.recv().unwrap();
            (std::fs::read(&secret).map_err(|e| e.kind()), other)
        })
        .unwrap();
        other.join().unwrap();
        assert_eq!(read_as_user, Err(io::ErrorKind::PermissionDenied));
        assert!(other_thread_could_read, "identity leaked to another thread");
        assert!(std::fs::read(&secret).is_ok(), "root not restored");
        assert_eq!(sys::set_fsuid(u32::MAX), 0);
    }

    /// The umask of the calling thread, read without changing it for long.
    fn current_umask() -> libc::mode_t {
        // SAFETY: umask has no memory arguments; the old value is put back at once.
        unsafe {
            let previous = libc::umask(0o077);
            libc::umask(previous);
            previous
        }
    }

    #[test]
    fn operations_run_with_umask_zero_on_their_thread_only() {
        if !is_root() {
            eprintln!("SKIPPED: needs root to change credentials");
            return;
        }
        let process_umask = std::thread::spawn(current_umask).join().unwrap();
        let inside = std::thread::spawn(|| run_as(&Identity::root(), current_umask).unwrap())
            .join()
            .unwrap();
        assert_eq!(inside, 0);
        assert_eq!(
            std::thread::spawn(current_umask).join().unwrap(),
            process_umask
        );
    }

    #[test]
    fn credentials_are_restored_after_a_panic() {
        if !is_root() {
            eprintln!("SKIPPED: needs root to change credentials");
            return;
        }
        let user = Identity {
            uid: 4321,
            gid: 4321,
            groups: vec![],
        };
        let outcome = std::panic::catch_unwind(|| run_as(&user, || panic!("operation failed")));
        assert!(outcome.is_err());
        assert_eq!(sys::set_fsuid(u32::MAX), 0);
        assert_eq!(sys::set_fsgid(u32::MAX), 0);
    }
}
