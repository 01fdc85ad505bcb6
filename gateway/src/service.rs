//! The gateway's programs behind the RPC core: the open exports (root descriptor, resolver,
//! policy), the handle key and write verifier, and [`Service::handle`], which runs one
//! dispatched call (portmap, MOUNT or NFSv3) and returns the framed reply ([`Service::handle_stream`]
//! for a stream transport, whose READ replies may carry their data in a pipe: `splice`).
//!
//! Everything here is synchronous; the serving loop (`server`) runs NFS and MOUNT calls on its
//! blocking pool, because they make file-system system calls that may block for as long as the
//! volume takes, and answers portmap inline.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use cluster_config::{ClusterConfig, HandleScheme, NfsVersion};

use crate::dispatch::Program;
use crate::drc::{self, DuplicateCache};
use crate::export::{ExportId, Policy};
use crate::gfid::GfidResolver;
use crate::handle::{
    FileHandle, HandleKey, KernelResolver, ObjectResolver, ResolverError, ResolverKind,
    resolver_kind,
};
use crate::handle_cache::HandleCache;
use crate::hostname::HostNames;
use crate::listing_cache::ListingCache;
use crate::record::LAST_FRAGMENT;
use crate::rpc::{
    AcceptStatus, Call, MOUNT_PROGRAM, NFS_PROGRAM, PORTMAP_PROGRAM, ReplyBody, ReplyHeader,
};
use crate::splice::{PipePool, PipeStats, Reply, SplicedData};
use crate::sys::{self, Stat};
use crate::xdr::Encoder;
use crate::{mount, nfs3, portmap};

/// One export as the service needs it, before it is opened.
#[derive(Debug, Clone)]
pub struct ExportSpec {
    pub name: String,
    /// The path clients mount over NFSv3 (the configuration's `pseudo`, e.g. `/data`).
    pub mount_path: String,
    /// Where the export lives on this node.
    pub local_path: PathBuf,
    pub policy: Policy,
}

impl ExportSpec {
    /// The NFSv3 exports of a cluster configuration.
    pub fn from_config(config: &ClusterConfig) -> Vec<ExportSpec> {
        config
            .nfs
            .exports
            .iter()
            .filter(|export| export.protocols.contains(&NfsVersion::V3))
            .map(|export| ExportSpec {
                name: export.name.clone(),
                mount_path: export.pseudo.clone(),
                local_path: export.local_path(&config.volume),
                policy: Policy {
                    access: export.access,
                    clients: export.clients.clone(),
                    squash: export.squash,
                    anon_uid: export.anon_uid,
                    anon_gid: export.anon_gid,
                },
            })
            .collect()
    }
}

/// An export, open and checked.
#[derive(Debug)]
pub struct Export {
    pub id: ExportId,
    pub name: String,
    pub mount_path: String,
    pub local_path: PathBuf,
    /// The export root, `O_PATH`; every lookup is resolved beneath it.
    pub root: OwnedFd,
    pub root_stat: Stat,
    /// The root's NFS handle, as MNT returns it.
    pub root_handle: Vec<u8>,
    pub resolver: Box<dyn ObjectResolver>,
    pub policy: Policy,
    /// The cluster's handle key (the same for every export).
    pub(crate) key: HandleKey,
    /// The `f_fsid` of the export's file system when the listing cache watches it.
    pub(crate) listing_fsid: Option<u64>,
    /// Whether the export's file system is local to this machine (ext4, xfs, btrfs, tmpfs):
    /// its calls wait for the disk at worst, never for a network.
    pub(crate) local: bool,
}

impl Export {
    /// The `fsid` clients see: the export id, the same on every node.
    pub fn fsid(&self) -> u64 {
        self.id.0
    }

    /// The sealed NFS handle of an object of this export.
    pub fn handle_for(&self, object: crate::handle::ObjectId) -> crate::handle::HandleBytes {
        FileHandle {
            scheme: self.resolver.scheme(),
            export: self.id,
            object,
        }
        .seal(&self.key)
    }
}

/// Why the service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot open export {name} at {path}")]
    OpenExport {
        name: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("export {name}")]
    Handles {
        name: String,
        #[source]
        source: ResolverError,
    },
    #[error("exports {first} and {second} have the same export id; rename one")]
    IdCollision { first: String, second: String },
    #[error("cannot create the write verifier")]
    Verifier(#[source] std::io::Error),
}

/// The resolver of an export whose root is `root` (`root_stat`, described as `path`), chosen by
/// [`resolver_kind`] from `volume.handles` and the root's file system, and checked.
fn open_resolver(
    scheme: HandleScheme,
    root: &OwnedFd,
    root_stat: &Stat,
    path: &str,
) -> Result<Box<dyn ObjectResolver>, ResolverError> {
    let io = |source| ResolverError::Io {
        path: path.to_owned(),
        source,
    };
    let magic = sys::fstatfs(root.as_fd()).map_err(io)?.magic;
    // Only FUSE needs the mount's type: it tells GlusterFS from other FUSE file systems.
    let fstype = if magic == crate::gfid::FUSE_MAGIC {
        crate::gfid::read_mount_entry(root_stat.mount_id)
            .map_err(io)?
            .map(|entry| entry.fstype)
    } else {
        None
    };
    Ok(
        match resolver_kind(scheme, magic, fstype.as_deref(), path)? {
            ResolverKind::Kernel => Box::new(KernelResolver::new(root, path)?),
            ResolverKind::GlusterfsGfid => Box::new(GfidResolver::new(root, path)?),
        },
    )
}

/// Ports the gateway serves on, for portmap answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// NFS and MOUNT (both on the NFS port, as NFS-Ganesha can).
    pub nfs: u16,
    /// portmap / rpcbind.
    pub portmap: u16,
    /// Whether portmap and MOUNT also answer over UDP on those ports ([`crate::udp`]).
    pub udp: bool,
}

/// How to build a [`Service`].
#[derive(Debug)]
pub struct ServiceOptions {
    pub ports: Ports,
    pub handle_key: HandleKey,
    /// The NFSv3 write verifier; `None` draws a random one, which is what a node should do at
    /// every start (each incarnation must have its own, see [`Service::write_verifier`]).
    pub write_verifier: Option<[u8; 8]>,
    pub host_names: Arc<dyn HostNames>,
    pub handles: HandleScheme,
}

/// The programs the gateway serves and their procedure counts.
pub const PROGRAMS: &[Program] = &[
    Program {
        prog: PORTMAP_PROGRAM,
        versions: 2..=2,
        procedures: 6,
    },
    Program {
        prog: PORTMAP_PROGRAM,
        versions: 3..=3,
        procedures: 9,
    },
    Program {
        prog: PORTMAP_PROGRAM,
        versions: 4..=4,
        procedures: 13,
    },
    Program {
        prog: MOUNT_PROGRAM,
        versions: 3..=3,
        procedures: 6,
    },
    Program {
        prog: NFS_PROGRAM,
        versions: 3..=3,
        procedures: nfs3::wire::PROCEDURES,
    },
];

/// The NFS service of one node.
#[derive(Debug)]
pub struct Service {
    pub(crate) exports: Vec<Export>,
    pub(crate) key: HandleKey,
    write_verifier: [u8; 8],
    pub(crate) ports: Ports,
    host_names: Arc<dyn HostNames>,
    /// MOUNT's advisory list of (client, path) pairs, for DUMP.
    pub(crate) mounts: Mutex<BTreeSet<(String, String)>>,
    /// Locks that make a WRITE's weak cache consistency data exact (see [`Service::file_lock`]).
    file_locks: [Mutex<()>; FILE_LOCK_STRIPES],
    /// Replies of non-idempotent calls, for clients that send them again.
    duplicates: DuplicateCache,
    /// Sealed handles by inode incarnation (handles only, never attributes).
    pub(crate) handle_cache: HandleCache,
    /// READDIRPLUS runs of exports on local file systems (`listing_cache`).
    pub(crate) listings: Option<Arc<ListingCache>>,
    /// Pipes for READ replies whose data is spliced (`handle_stream`).
    pub(crate) pipes: PipePool,
}

/// How many locks [`Service::file_lock`] spreads files over.
const FILE_LOCK_STRIPES: usize = 64;

/// What a procedure could not do at the RPC level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcError {
    GarbageArgs,
    ProcUnavail,
    SystemErr,
}

impl From<crate::xdr::XdrError> for ProcError {
    fn from(_: crate::xdr::XdrError) -> Self {
        ProcError::GarbageArgs
    }
}

/// One client connection (or, for datagrams, one sender): where calls come from and which
/// exports admit it, decided once.
#[derive(Debug)]
pub struct Connection {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    admitted: OnceLock<Vec<bool>>,
}

impl Connection {
    pub fn new(peer: SocketAddr, local: SocketAddr) -> Self {
        Connection {
            peer,
            local,
            admitted: OnceLock::new(),
        }
    }
}

impl Service {
    /// Opens and checks every export: the directory exists, its file system produces handles
    /// that open again (kernel handles, not on FUSE; or GlusterFS GFIDs through an
    /// `aux-gfid-mount`), and export ids are distinct.
    pub fn new(specs: Vec<ExportSpec>, options: ServiceOptions) -> Result<Service, StartupError> {
        let mut exports: Vec<Export> = Vec::with_capacity(specs.len());
        for spec in specs {
            let display = spec.local_path.display().to_string();
            let open_error = |source| StartupError::OpenExport {
                name: spec.name.clone(),
                path: display.clone(),
                source,
            };
            let path = std::ffi::CString::new(spec.local_path.as_os_str().as_encoded_bytes())
                .map_err(|_| open_error(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
            let root =
                sys::openat(None, &path, libc::O_PATH | libc::O_DIRECTORY).map_err(open_error)?;
            let root_stat = sys::fstat(root.as_fd()).map_err(open_error)?;
            let resolver =
                open_resolver(options.handles, &root, &root_stat, &display).map_err(|source| {
                    StartupError::Handles {
                        name: spec.name.clone(),
                        source,
                    }
                })?;
            let id = ExportId::of_name(&spec.name);
            if let Some(other) = exports.iter().find(|export| export.id == id) {
                return Err(StartupError::IdCollision {
                    first: other.name.clone(),
                    second: spec.name.clone(),
                });
            }
            let object =
                resolver
                    .object_id(root.as_fd())
                    .map_err(|source| StartupError::Handles {
                        name: spec.name.clone(),
                        source: ResolverError::Io {
                            path: display.clone(),
                            source,
                        },
                    })?;
            let root_handle = FileHandle {
                scheme: resolver.scheme(),
                export: id,
                object,
            }
            .encode(&options.handle_key);
            let local = sys::fstatfs(root.as_fd())
                .is_ok_and(|fs| crate::handle::changes_only_through_this_kernel(fs.magic));
            exports.push(Export {
                id,
                name: spec.name,
                mount_path: spec.mount_path,
                local_path: spec.local_path,
                root,
                root_stat,
                root_handle,
                resolver,
                policy: spec.policy,
                key: options.handle_key.clone(),
                listing_fsid: None,
                local,
            });
        }
        let listings = start_listing_cache(&mut exports);
        let write_verifier = match options.write_verifier {
            Some(verifier) => verifier,
            None => sys::random_u64()
                .map_err(StartupError::Verifier)?
                .to_be_bytes(),
        };
        Ok(Service {
            exports,
            key: options.handle_key,
            write_verifier,
            ports: options.ports,
            host_names: options.host_names,
            mounts: Mutex::new(BTreeSet::new()),
            file_locks: std::array::from_fn(|_| Mutex::new(())),
            duplicates: DuplicateCache::new(drc::Limits::default()),
            handle_cache: HandleCache::new(crate::handle_cache::DEFAULT_CAPACITY),
            listings,
            pipes: PipePool::new(
                crate::splice::DEFAULT_PIPES,
                nfs3::MAX_IO as usize,
                splice_min_read(),
            ),
        })
    }

    /// The exports, in configuration order.
    pub fn exports(&self) -> &[Export] {
        &self.exports
    }

    /// The cache of sealed handles by inode incarnation (`handle_cache`).
    pub fn handle_cache(&self) -> &HandleCache {
        &self.handle_cache
    }

    /// The READDIRPLUS listing cache, when some export uses it.
    pub fn listing_cache(&self) -> Option<&ListingCache> {
        self.listings.as_deref()
    }

    /// The counters of the pipes spliced READ replies use.
    pub fn pipe_stats(&self) -> PipeStats {
        self.pipes.stats()
    }

    /// The NFSv3 write verifier of this incarnation: UNSTABLE writes and COMMITs report it, and
    /// a client that sees it change re-sends every write not yet committed. It is drawn at
    /// random at start, so it differs between nodes and between restarts of one node.
    pub fn write_verifier(&self) -> [u8; 8] {
        self.write_verifier
    }

    /// A lock for the file `(device, inode)`, held by a WRITE from reading its pre-operation
    /// attributes to reading its post-operation ones, so that two WRITEs to one file in flight
    /// at once (a kernel client sends several) cannot interleave there. RFC 1813's weak cache
    /// consistency data is "before" and "after" *this* operation: a client whose cached
    /// attributes differ from "before" concludes that someone else changed the file. Attributes
    /// read when the handle was resolved may predate a concurrent WRITE. knfsd holds the inode
    /// lock for the same reason. Files share one of a few stripes; a collision only serialises
    /// two unrelated writes.
    pub(crate) fn file_lock(&self, device: u64, inode: u64) -> std::sync::MutexGuard<'_, ()> {
        let mix = (inode ^ device.rotate_left(32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let stripe = usize::try_from(mix >> 58).unwrap_or(0) % FILE_LOCK_STRIPES;
        // A panic never happens while a guard is held (the guarded code returns errors), and
        // the lock protects no data, so a poisoned lock is as good as a clean one.
        self.file_locks[stripe]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether export `index` admits the client of `connection` (decided once per connection;
    /// host entries cost a lookup).
    pub(crate) fn admits(&self, connection: &Connection, index: usize) -> bool {
        let admitted = connection.admitted.get_or_init(|| {
            let mut names: Option<Vec<String>> = None;
            self.exports
                .iter()
                .map(|export| {
                    export.policy.admits(connection.peer.ip(), || {
                        names
                            .get_or_insert_with(|| self.host_names.names(connection.peer.ip()))
                            .clone()
                    })
                })
                .collect()
        });
        admitted.get(index).copied().unwrap_or(false)
    }

    /// The export with id `id` and its index.
    pub(crate) fn export_by_id(&self, id: ExportId) -> Option<(usize, &Export)> {
        self.exports
            .iter()
            .enumerate()
            .find(|(_, export)| export.id == id)
    }

    /// Whether calls to `program` are cheap and never block, so the serving loop may answer
    /// them on its async workers.
    pub fn is_inline(program: u32) -> bool {
        program == PORTMAP_PROGRAM
    }

    /// Whether a call cannot keep the thread that runs it long, so that the connection's
    /// thread may run it rather than hand it over (`server`): an NFSv3 NULL, or any other
    /// NFSv3 call but READ, WRITE and COMMIT (data calls can take long) on an export whose file
    /// system is local (a shared volume's calls wait on the network and can hang, and the
    /// client's other calls must not wait behind them). `args` are the call's arguments; the
    /// export id is read from the handle they start with, unchecked (nothing but this choice
    /// depends on it).
    pub fn runs_quickly(&self, call: &Call, args: &[u8]) -> bool {
        if call.program != NFS_PROGRAM || call.version != 3 {
            return false;
        }
        match call.procedure {
            0 => true,
            nfs3::wire::PROC_READ | nfs3::wire::PROC_WRITE | nfs3::wire::PROC_COMMIT => false,
            _ => {
                let mut decoder = crate::xdr::Decoder::new(args);
                let export = decoder
                    .opaque(crate::handle::MAX_HANDLE as u32)
                    .ok()
                    .and_then(|handle| handle.get(2..10)?.try_into().ok())
                    .map(|id| ExportId(u64::from_be_bytes(id)));
                export
                    .and_then(|id| self.export_by_id(id))
                    .is_some_and(|(_, export)| export.local)
            }
        }
    }

    /// Runs a dispatched call and returns the complete, record-marked reply. A call the
    /// [duplicate request cache](crate::drc) has seen is not run again: it gets the first
    /// reply, or, while the first copy still runs, an empty reply, which means "send nothing"
    /// (the client sends the call again and gets the cached reply).
    pub fn handle(&self, connection: &Connection, call: &Call, args: &[u8]) -> Vec<u8> {
        if !drc::is_cached(call) {
            return self.run(connection, call, args);
        }
        let key = drc::Key::new(connection.peer, call, args);
        match self.duplicates.begin(key, Instant::now()) {
            drc::Decision::Run => {
                // Forgotten if the call panics, so that the client's next copy runs.
                let pending = Pending {
                    cache: &self.duplicates,
                    key,
                };
                let reply = self.run(connection, call, args);
                self.duplicates.finish(key, &reply);
                std::mem::forget(pending);
                reply
            }
            drc::Decision::Replay(reply) => {
                tracing::debug!(xid = call.xid, peer = %connection.peer, "replayed a call sent again");
                reply.to_vec()
            }
            drc::Decision::Drop => Vec::new(),
        }
    }

    /// [`Service::handle`] for a stream transport (TCP): the same reply, except that a READ's
    /// data may wait in a pipe (`Reply::tail`) for the transport to splice into its socket
    /// after the head. Calls the duplicate request cache keeps (never READ) go through
    /// `handle`.
    pub fn handle_stream(&self, connection: &Connection, call: &Call, args: &[u8]) -> Reply {
        if call.program != NFS_PROGRAM || drc::is_cached(call) {
            return Reply::from(self.handle(connection, call, args));
        }
        let mut out = begin_reply(call.xid);
        match nfs3::call_spliced(self, connection, call, args, &mut out) {
            Ok(tail) => finish_spliced_reply(call.xid, out, tail),
            Err(error) => Reply::from(error_reply(call.xid, error)),
        }
    }

    fn run(&self, connection: &Connection, call: &Call, args: &[u8]) -> Vec<u8> {
        let mut out = begin_reply(call.xid);
        let outcome = match call.program {
            PORTMAP_PROGRAM => portmap::call(self, connection, call, args, &mut out),
            MOUNT_PROGRAM => mount::call(self, connection, call, args, &mut out),
            NFS_PROGRAM => nfs3::call(self, connection, call, args, &mut out),
            _ => Err(ProcError::ProcUnavail),
        };
        match outcome {
            Ok(()) => finish_reply(out),
            Err(error) => error_reply(call.xid, error),
        }
    }
}

/// The reply to a call that failed at the RPC level.
fn error_reply(xid: u32, error: ProcError) -> Vec<u8> {
    let status = match error {
        ProcError::GarbageArgs => AcceptStatus::GarbageArgs,
        ProcError::ProcUnavail => AcceptStatus::ProcUnavail,
        ProcError::SystemErr => AcceptStatus::SystemErr,
    };
    framed_reply(&ReplyHeader {
        xid,
        body: ReplyBody::accepted(status),
    })
}

/// A call the duplicate request cache was told runs; dropped only if the call panicked.
struct Pending<'a> {
    cache: &'a DuplicateCache,
    key: drc::Key,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.cache.abandon(self.key);
    }
}

/// Starts the listing cache for the exports whose file system only this kernel changes and
/// whose handles are kernel handles (the cache's events name objects by them), unless
/// `VIPGATE_LISTING_CACHE=off`. Without `CAP_SYS_ADMIN` or fanotify's directory file id
/// reports (Linux 5.9) the exports are simply served without it.
fn start_listing_cache(exports: &mut [Export]) -> Option<Arc<ListingCache>> {
    if std::env::var_os("VIPGATE_LISTING_CACHE").is_some_and(|value| value == "off") {
        tracing::info!("listing cache off (VIPGATE_LISTING_CACHE=off)");
        return None;
    }
    let eligible =
        |export: &Export| export.local && export.resolver.scheme() == crate::handle::KERNEL_SCHEME;
    if !exports.iter().any(eligible) {
        return None;
    }
    let cache = match ListingCache::start(crate::listing_cache::DEFAULT_LIMIT) {
        Ok(cache) => cache,
        Err(error) => {
            tracing::info!(%error, "listing cache off: cannot watch file systems");
            return None;
        }
    };
    for export in exports.iter_mut().filter(|export| eligible(export)) {
        let watched = export
            .resolver
            .object_id(export.root.as_fd())
            .and_then(|root_id| cache.watch(export.root.as_fd(), &root_id));
        match watched {
            Ok(fsid) => {
                tracing::debug!(export = %export.name, "listing cache on");
                export.listing_fsid = Some(fsid);
            }
            Err(error) => {
                tracing::info!(export = %export.name, %error, "listing cache off for this export");
            }
        }
    }
    Some(cache)
}

/// The smallest READ to splice: `nfs3::SPLICE_MIN_READ`, or what `VIPGATE_SPLICE_MIN_READ` says
/// (a byte count, or `off` to copy every READ: for measurements, and a way out should a file
/// system misbehave under splice).
fn splice_min_read() -> usize {
    let Some(value) = std::env::var_os("VIPGATE_SPLICE_MIN_READ") else {
        return nfs3::SPLICE_MIN_READ;
    };
    match value.to_str().map(str::trim) {
        Some("off") => usize::MAX,
        Some(number) => number.parse().unwrap_or_else(|_| {
            tracing::warn!(
                ?value,
                "VIPGATE_SPLICE_MIN_READ is not a byte count or off; ignored"
            );
            nfs3::SPLICE_MIN_READ
        }),
        None => nfs3::SPLICE_MIN_READ,
    }
}

/// A reply buffer with room for the record mark and an accepted SUCCESS header; results are
/// appended, then [`finish_reply`] fills in the mark.
fn begin_reply(xid: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&[0; 4]);
    ReplyHeader {
        xid,
        body: ReplyBody::success(),
    }
    .encode(&mut Encoder::new(&mut out));
    out
}

/// Writes the record mark of a single-fragment record (every reply fits one: the largest is a
/// 1 MiB READ plus headers, well under the 2 GiB a fragment can hold).
fn finish_reply(mut out: Vec<u8>) -> Vec<u8> {
    let length = u32::try_from(out.len().saturating_sub(4)).unwrap_or(0);
    out[..4].copy_from_slice(&(LAST_FRAGMENT | length).to_be_bytes());
    out
}

/// Writes the record mark of a reply whose results end with spliced data (`tail`): its length
/// counts the data and its padding, which follow `out` on the wire.
fn finish_spliced_reply(xid: u32, mut out: Vec<u8>, tail: Option<SplicedData>) -> Reply {
    let Some(tail) = tail else {
        return Reply::from(finish_reply(out));
    };
    match crate::splice::record_mark(out.len(), tail.len()) {
        Some(mark) => {
            out[..4].copy_from_slice(&mark);
            Reply {
                head: out,
                tail: Some(tail),
            }
        }
        // Never: a READ is at most 1 MiB. Dropping the tail returns its pipe (closed, as it
        // holds data).
        None => Reply::from(error_reply(xid, ProcError::SystemErr)),
    }
}

/// A complete, record-marked reply with no results (errors and rejections).
pub fn framed_reply(header: &ReplyHeader) -> Vec<u8> {
    let mut out = vec![0; 4];
    header.encode(&mut Encoder::new(&mut out));
    finish_reply(out)
}
