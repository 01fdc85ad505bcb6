//! MOUNT version 3 (RFC 1813 appendix I): how an NFSv3 client turns an export path into the
//! root file handle, with the export's client list applied (MNT3ERR_ACCES), and the EXPORT
//! listing `showmount -e` prints.
//!
//! A client may mount the export's path (`pseudo` in the configuration, e.g. `/data`) or its
//! path on the node (`/mnt/volume/data`, as knfsd users write it), or a directory beneath
//! either; the rest of the path is resolved beneath the export root with the same containment
//! as every NFS lookup.

use std::ffi::CString;
use std::os::fd::AsFd;

use cluster_config::ClientMatch;

use crate::rpc::{AUTH_SYS, Call, Credential};
use crate::service::{Connection, Export, ProcError, Service};
use crate::sys;
use crate::xdr::{Decoder, Encoder};

/// `MNTPATHLEN`.
pub const MAX_PATH: usize = 1024;
/// `MNTNAMLEN`.
const MAX_NAME: u32 = 255;

/// `mountstat3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MountStatus {
    Ok = 0,
    Perm = 1,
    NoEnt = 2,
    Io = 5,
    Acces = 13,
    NotDir = 20,
    Inval = 22,
    NameTooLong = 63,
    NotSupp = 10004,
    ServerFault = 10006,
}

/// Longest path MNT and UMNT decode: longer than [`MAX_PATH`], so that a path a little over
/// the limit reaches MNT and gets MNT3ERR_NAMETOOLONG, while anything absurd is GARBAGE_ARGS.
pub const MAX_DECODED_PATH: u32 = 8192;

/// The decoded arguments of one MOUNT call, borrowing from the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Args<'a> {
    Null,
    /// MNT of a path (bytes as sent; not yet checked against [`MAX_PATH`] or for UTF-8).
    Mount {
        path: &'a [u8],
    },
    Dump,
    /// UMNT of a path.
    Unmount {
        path: &'a [u8],
    },
    UnmountAll,
    Export,
}

/// Decodes the arguments of MOUNT v3 `procedure`: PROC_UNAVAIL for a procedure MOUNT v3 does
/// not have, GARBAGE_ARGS for arguments that do not decode. Bytes after the arguments are
/// ignored. Never panics, whatever the bytes; allocates nothing.
pub fn decode_args(procedure: u32, args: &[u8]) -> Result<Args<'_>, ProcError> {
    let decoder = &mut Decoder::new(args);
    Ok(match procedure {
        0 => Args::Null,
        1 => Args::Mount {
            path: decoder.opaque(MAX_DECODED_PATH)?,
        },
        2 => Args::Dump,
        3 => Args::Unmount {
            path: decoder.opaque(MAX_DECODED_PATH)?,
        },
        4 => Args::UnmountAll,
        5 => Args::Export,
        _ => return Err(ProcError::ProcUnavail),
    })
}

/// Runs one MOUNT call, writing its results after the reply header in `out`.
pub fn call(
    service: &Service,
    connection: &Connection,
    call: &Call,
    args: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), ProcError> {
    let args = decode_args(call.procedure, args)?;
    let encoder = &mut Encoder::new(out);
    match args {
        Args::Null => {}
        Args::Mount { path } => match mount(service, connection, path) {
            Ok(handle) => {
                encoder.u32(MountStatus::Ok as u32);
                let _ = encoder.opaque(&handle, 64);
                // The flavors the client may use: AUTH_SYS.
                encoder.u32(1);
                encoder.u32(AUTH_SYS);
                record_mount(service, connection, call, path);
            }
            Err(status) => encoder.u32(status as u32),
        },
        Args::Dump => dump(service, encoder),
        Args::Unmount { path } => {
            let client = client_name(connection, call);
            if let Ok(mut mounts) = service.mounts.lock() {
                mounts.remove(&(client, String::from_utf8_lossy(path).into_owned()));
            }
        }
        Args::UnmountAll => {
            let client = client_name(connection, call);
            if let Ok(mut mounts) = service.mounts.lock() {
                mounts.retain(|(host, _)| *host != client);
            }
        }
        Args::Export => exports(service, encoder),
    }
    Ok(())
}

/// The export a mount path names and the rest of the path inside it.
fn find_export<'s>(service: &'s Service, path: &str) -> Option<(&'s Export, String)> {
    let path = path.trim_end_matches('/');
    let mut best: Option<(&Export, String, usize)> = None;
    for export in service.exports() {
        let local = export.local_path.to_string_lossy();
        for prefix in [
            export.mount_path.trim_end_matches('/'),
            local.trim_end_matches('/'),
        ] {
            let rest = if path == prefix {
                Some("")
            } else if prefix.is_empty() {
                // An export mounted at "/": every absolute path is beneath it.
                path.strip_prefix('/')
            } else {
                path.strip_prefix(prefix)
                    .and_then(|rest| rest.strip_prefix('/'))
            };
            if let Some(rest) = rest
                && best
                    .as_ref()
                    .is_none_or(|(_, _, length)| prefix.len() > *length)
            {
                best = Some((export, rest.to_owned(), prefix.len()));
            }
        }
    }
    best.map(|(export, rest, _)| (export, rest))
}

/// MNT: the handle of `path`, if this client may mount it.
fn mount(service: &Service, connection: &Connection, path: &[u8]) -> Result<Vec<u8>, MountStatus> {
    if path.len() > MAX_PATH {
        return Err(MountStatus::NameTooLong);
    }
    let path = std::str::from_utf8(path).map_err(|_| MountStatus::NoEnt)?;
    let (export, rest) = find_export(service, path).ok_or(MountStatus::NoEnt)?;
    let index = service
        .exports()
        .iter()
        .position(|candidate| std::ptr::eq(candidate, export))
        .ok_or(MountStatus::ServerFault)?;
    if !service.admits(connection, index) {
        return Err(MountStatus::Acces);
    }
    if rest.is_empty() {
        return Ok(export.root_handle.clone());
    }
    let rest = CString::new(rest).map_err(|_| MountStatus::Inval)?;
    let fd = sys::openat2(
        export.root.as_fd(),
        &rest,
        libc::O_PATH | libc::O_DIRECTORY,
        0,
        sys::RESOLVE_CONTAINED,
    )
    .map_err(|error| match error.raw_os_error() {
        Some(libc::ENOENT) => MountStatus::NoEnt,
        Some(libc::ENOTDIR) => MountStatus::NotDir,
        Some(libc::EACCES | libc::EXDEV | libc::ELOOP) => MountStatus::Acces,
        Some(libc::ENAMETOOLONG) => MountStatus::NameTooLong,
        _ => MountStatus::Io,
    })?;
    let object = export
        .resolver
        .object_id(fd.as_fd())
        .map_err(|_| MountStatus::Acces)?;
    Ok(export.handle_for(object).to_vec())
}

/// How DUMP names a client: the machine name it sent, else its address.
fn client_name(connection: &Connection, call: &Call) -> String {
    match &call.credential {
        Credential::Sys(auth) if !auth.machinename.is_empty() => {
            auth.machinename_lossy().into_owned()
        }
        _ => connection.peer.ip().to_canonical().to_string(),
    }
}

fn record_mount(service: &Service, connection: &Connection, call: &Call, path: &[u8]) {
    let entry = (
        client_name(connection, call),
        String::from_utf8_lossy(path).into_owned(),
    );
    if let Ok(mut mounts) = service.mounts.lock()
        && mounts.len() < MAX_MOUNT_LIST
    {
        mounts.insert(entry);
    }
}

/// The most (client, path) pairs DUMP remembers; the list is advisory, and no client may grow
/// it without bound.
const MAX_MOUNT_LIST: usize = 4096;

fn dump(service: &Service, encoder: &mut Encoder<'_>) {
    let mounts = match service.mounts.lock() {
        Ok(mounts) => mounts.clone(),
        Err(_) => Default::default(),
    };
    for (host, path) in &mounts {
        encoder.bool(true);
        let _ = encoder.opaque(
            &host.as_bytes()[..host.len().min(MAX_NAME as usize)],
            MAX_NAME,
        );
        let _ = encoder.opaque(
            &path.as_bytes()[..path.len().min(MAX_PATH)],
            MAX_PATH as u32,
        );
    }
    encoder.bool(false);
}

/// The name `showmount -e` shows for a client-list entry.
fn group_name(entry: &ClientMatch) -> String {
    match entry {
        ClientMatch::Any => "*".to_owned(),
        ClientMatch::Network(network) => network.to_string(),
        ClientMatch::Host(host) => host.clone(),
    }
}

fn exports(service: &Service, encoder: &mut Encoder<'_>) {
    for export in service.exports() {
        encoder.bool(true);
        let _ = encoder.opaque(export.mount_path.as_bytes(), MAX_PATH as u32);
        for entry in &export.policy.clients {
            let name = group_name(entry);
            encoder.bool(true);
            let _ = encoder.opaque(
                &name.as_bytes()[..name.len().min(MAX_NAME as usize)],
                MAX_NAME,
            );
        }
        encoder.bool(false);
    }
    encoder.bool(false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_table() {
        let path = [0, 0, 0, 2, b'/', b'd', 0, 0];
        let long_path = [&(MAX_DECODED_PATH + 1).to_be_bytes()[..], &[0; 16]].concat();
        let cases: Vec<(u32, Vec<u8>, Result<Args<'static>, ProcError>)> = vec![
            (0, vec![], Ok(Args::Null)),
            // Arguments of NULL are ignored, as the Linux server does.
            (0, vec![1, 2, 3], Ok(Args::Null)),
            (1, path.to_vec(), Ok(Args::Mount { path: b"/d" })),
            (1, path[..6].to_vec(), Err(ProcError::GarbageArgs)),
            (1, vec![], Err(ProcError::GarbageArgs)),
            (1, long_path, Err(ProcError::GarbageArgs)),
            (2, vec![], Ok(Args::Dump)),
            (3, path.to_vec(), Ok(Args::Unmount { path: b"/d" })),
            (3, vec![0, 0, 0], Err(ProcError::GarbageArgs)),
            (4, vec![], Ok(Args::UnmountAll)),
            (5, vec![], Ok(Args::Export)),
            (6, vec![], Err(ProcError::ProcUnavail)),
            (u32::MAX, vec![], Err(ProcError::ProcUnavail)),
        ];
        for (procedure, bytes, expected) in cases {
            assert_eq!(
                decode_args(procedure, &bytes),
                expected,
                "procedure {procedure}"
            );
        }
    }
}
