//! The `serve` check: one record through the whole serving path of a real gateway — the same
//! steps as the connection task (`classify`, `dispatch`, `Service::handle`) — on an export in a
//! temporary directory, so the procedures themselves run: handle checks, containment, the
//! caller's credentials, the volume's system calls and the reply encoders.
//!
//! Forging a handle is what the handle MAC prevents, so a fuzzer could never name a real file.
//! Instead the target swaps markers for real handles before the call: every 4-byte opaque
//! `"FH#" n` (length word 4, then the bytes `F H # n`) becomes the handle of object `n % 4` of
//! the export (the root, `dir`, `file.txt`, the symbolic link `link`). The seeds carry markers.
//!
//! Checked: every call that is not dropped gets one well-formed record with its own xid; no
//! single allocation is over the record limit (the largest reply is a 1 MiB READ); and nothing
//! beside the export changes (checked at every reset). Every [`RESET_EVERY`] runs the export's
//! contents are recreated so that what the fuzzer created does not pile up. Needs root (the
//! service opens handles and switches credentials), like the server; without it the check
//! does nothing.

use std::cell::RefCell;
use std::ffi::CString;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cluster_config::{Access, ClientMatch, HandleScheme, Squash};
use gateway::dispatch::{Decision, dispatch};
use gateway::export::Policy;
use gateway::hostname::HostNames;
use gateway::record::{DEFAULT_MAX_RECORD, LAST_FRAGMENT};
use gateway::rpc::{Classification, ReplyHeader, classify, decode_reply};
use gateway::service::{Connection, PROGRAMS, framed_reply};
use gateway::{ExportSpec, Ports, Service, ServiceOptions};

use crate::{bounded, handle_key};

/// Runs between two resets of the export's contents.
pub const RESET_EVERY: usize = 2000;

/// The objects markers name, by `n % 4`; the root is `""`.
pub const MARKED_OBJECTS: [&str; 4] = ["", "dir", "file.txt", "link"];

/// The marker opaque for object `n`.
pub fn marker(n: u8) -> [u8; 8] {
    [0, 0, 0, 4, b'F', b'H', b'#', n]
}

#[derive(Debug)]
struct NoNames;

impl HostNames for NoNames {
    fn names(&self, _: std::net::IpAddr) -> Vec<String> {
        Vec::new()
    }
}

struct Fixture {
    service: Service,
    base: PathBuf,
    export: PathBuf,
    /// The encoded opaque (length, handle, padding) of each marked object.
    handles: Vec<Vec<u8>>,
    runs: usize,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Creates the export's contents, leaving the export directory itself (the service holds it
/// open) in place.
fn populate(export: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(export)? {
        let path = entry?.path();
        match std::fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.is_dir() => std::fs::remove_dir_all(&path)?,
            _ => std::fs::remove_file(&path)?,
        }
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(export, std::fs::Permissions::from_mode(0o777))?;
    std::os::unix::fs::chown(export, Some(0), Some(0))?;
    std::fs::create_dir(export.join("dir"))?;
    std::fs::write(export.join("dir/inner"), b"inner")?;
    std::fs::write(export.join("file.txt"), b"hello, world\n")?;
    std::os::unix::fs::symlink("file.txt", export.join("link"))?;
    Ok(())
}

/// The marked objects' handles, as encoded opaques.
fn marked_handles(service: &Service) -> Vec<Vec<u8>> {
    let export = &service.exports()[0];
    MARKED_OBJECTS
        .iter()
        .map(|name| {
            let handle = if name.is_empty() {
                export.root_handle.clone()
            } else {
                let name = CString::new(*name).unwrap_or_default();
                let flags = libc::O_PATH | libc::O_NOFOLLOW;
                let fd = gateway::sys::openat(Some(export.root.as_fd()), &name, flags)
                    .unwrap_or_else(|error| panic!("cannot open {name:?} in the export: {error}"));
                let object = export
                    .resolver
                    .object_id(fd.as_fd())
                    .unwrap_or_else(|error| panic!("no handle for {name:?}: {error}"));
                export.handle_for(object).to_vec()
            };
            let mut opaque = Vec::new();
            let _ = gateway::xdr::Encoder::new(&mut opaque).opaque(&handle, 64);
            opaque
        })
        .collect()
}

impl Fixture {
    fn new() -> Fixture {
        // `run` names a scratch directory it removes afterwards; the process may end by abort.
        let base = std::env::var_os("GATEWAY_FUZZ_SERVE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(format!(
                "gateway-fuzz-serve-{}-{}",
                std::process::id(),
                FIXTURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
        let _ = std::fs::remove_dir_all(&base);
        let export = base.join("export");
        let outside = base.join("outside");
        for directory in [&export, &outside] {
            std::fs::create_dir_all(directory)
                .unwrap_or_else(|error| panic!("cannot create {}: {error}", directory.display()));
        }
        std::fs::write(outside.join("untouched"), b"x").unwrap_or_default();
        populate(&export).unwrap_or_else(|error| panic!("cannot populate the export: {error}"));
        let service = Service::new(
            vec![ExportSpec {
                name: "data".to_owned(),
                mount_path: "/data".to_owned(),
                local_path: export.clone(),
                policy: Policy {
                    access: Access::ReadWrite,
                    clients: vec![ClientMatch::Any],
                    squash: Squash::None,
                    anon_uid: 65534,
                    anon_gid: 65534,
                },
            }],
            ServiceOptions {
                ports: Ports {
                    nfs: 2049,
                    portmap: 111,
                    udp: false,
                },
                handle_key: handle_key(),
                write_verifier: Some([1; 8]),
                host_names: Arc::new(NoNames),
                handles: HandleScheme::Auto,
            },
        )
        .unwrap_or_else(|error| panic!("cannot start the service: {error}"));
        let handles = marked_handles(&service);
        Fixture {
            service,
            base,
            export,
            handles,
            runs: 0,
        }
    }

    /// Checks that nothing beside the export changed, then recreates the export's contents.
    fn reset(&mut self) {
        let outside = self.base.join("outside");
        let entries: Vec<_> = std::fs::read_dir(&outside)
            .map(|entries| entries.flatten().map(|entry| entry.file_name()).collect())
            .unwrap_or_default();
        assert_eq!(
            entries,
            ["untouched"],
            "something was created beside the export"
        );
        assert_eq!(
            std::fs::read(outside.join("untouched")).ok().as_deref(),
            Some(&b"x"[..]),
            "a file beside the export changed"
        );
        let base_entries = std::fs::read_dir(&self.base).map(Iterator::count).ok();
        assert_eq!(
            base_entries,
            Some(2),
            "something was created beside the export"
        );
        populate(&self.export).unwrap_or_else(|error| panic!("cannot reset the export: {error}"));
        self.handles = marked_handles(&self.service);
    }

    /// `record` with every marker replaced by its object's handle.
    fn substitute(&self, record: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(record.len() + 256);
        let mut rest = record;
        while !rest.is_empty() {
            if rest.len() >= 8 && rest[..7] == marker(0)[..7] {
                out.extend_from_slice(&self.handles[usize::from(rest[7] % 4)]);
                rest = &rest[8..];
            } else {
                out.push(rest[0]);
                rest = &rest[1..];
            }
        }
        out
    }
}

/// Fixtures created in this process (one per thread that serves), for distinct directories.
static FIXTURES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

/// Runs one record (with markers) through the serving path; see the module documentation.
pub fn check_served(record: &[u8]) {
    if !is_root() {
        return;
    }
    FIXTURE.with(|fixture| {
        let mut fixture = fixture.borrow_mut();
        let fixture = fixture.get_or_insert_with(Fixture::new);
        fixture.runs += 1;
        if fixture.runs % RESET_EVERY == 0 {
            fixture.reset();
        }
        let record = fixture.substitute(record);
        let connection = Connection::new(
            SocketAddr::from(([127, 0, 0, 1], 900)),
            SocketAddr::from(([127, 0, 0, 1], 2049)),
        );
        let (reply, _) = bounded(DEFAULT_MAX_RECORD, || {
            serve(&fixture.service, &connection, &record)
        });
        let Some((xid, reply)) = reply else {
            return;
        };
        let mark = u32::from_be_bytes([reply[0], reply[1], reply[2], reply[3]]);
        assert_eq!(
            mark & LAST_FRAGMENT,
            LAST_FRAGMENT,
            "reply is one last fragment"
        );
        assert_eq!(
            usize::try_from(mark & !LAST_FRAGMENT).ok(),
            Some(reply.len() - 4),
            "record mark"
        );
        let header = decode_reply(&reply[4..])
            .unwrap_or_else(|error| panic!("reply does not decode: {error}"));
        assert_eq!(header.0.xid, xid, "reply to another call");
    });
}

/// The first result word (the procedure's status) of the accepted reply `record` gets, for
/// tests: `None` if the call is dropped, rejected or not accepted.
pub fn reply_status(record: &[u8]) -> Option<u32> {
    if !is_root() {
        return None;
    }
    FIXTURE.with(|fixture| {
        let mut fixture = fixture.borrow_mut();
        let fixture = fixture.get_or_insert_with(Fixture::new);
        let record = fixture.substitute(record);
        let connection = Connection::new(
            SocketAddr::from(([127, 0, 0, 1], 900)),
            SocketAddr::from(([127, 0, 0, 1], 2049)),
        );
        let (_, reply) = serve(&fixture.service, &connection, &record)?;
        let (header, offset) = decode_reply(&reply[4..]).ok()?;
        if header.body != gateway::rpc::ReplyBody::success() {
            return None;
        }
        let status = reply.get(4 + offset..8 + offset)?;
        Some(u32::from_be_bytes([
            status[0], status[1], status[2], status[3],
        ]))
    })
}

/// The connection task's steps for one record: the framed reply and the call's xid, or `None`
/// when the record is dropped.
fn serve(service: &Service, connection: &Connection, record: &[u8]) -> Option<(u32, Vec<u8>)> {
    match classify(record) {
        Classification::Drop(_) => None,
        Classification::Reject { reply, .. } => Some((reply.xid, framed_reply(&reply))),
        Classification::Call { call, args_offset } => Some(match dispatch(PROGRAMS, &call) {
            Decision::Reject(body) => (
                call.xid,
                framed_reply(&ReplyHeader {
                    xid: call.xid,
                    body,
                }),
            ),
            Decision::Dispatch(_) => {
                let args = record.get(args_offset..).unwrap_or_default();
                (call.xid, service.handle(connection, &call, args))
            }
        }),
    }
}
