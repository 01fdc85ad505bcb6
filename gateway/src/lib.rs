//! The NFS side of a vipgate node: an ONC-RPC core, portmap, MOUNT and NFSv3 serving the node's
//! local mount of the replicated volume (see `ARCHITECTURE.md`). NFSv4 comes later on the same
//! core.
//!
//! The wire layer is pure and I/O-free:
//!
//! * [`xdr`] — XDR (RFC 4506) decoding and encoding, zero-copy and with every wire length
//!   bounded by a caller's maximum and by the bytes remaining before anything is allocated.
//! * [`record`] — TCP record marking (RFC 5531 §11): an incremental decoder that cuts records
//!   out of a byte stream under a maximum record size, and the framing of outgoing records.
//! * [`rpc`] — RPC call and reply messages, AUTH_NONE and AUTH_SYS credentials, and
//!   [`rpc::classify`], which turns any record into a call, an error reply or a drop.
//! * [`dispatch`] — the program/version/procedure table and the decision between running a
//!   procedure and answering AUTH_ERROR, PROG_UNAVAIL, PROG_MISMATCH or PROC_UNAVAIL.
//!
//! On it sit the programs ([`portmap`], [`mount`], [`nfs3`]), the policy and safety pieces
//! ([`export`] client lists and squash, [`handle`] failover-safe handles, [`handle_cache`] their
//! cache by inode incarnation and [`gfid`] their GlusterFS resolver, [`listing_cache`] the
//! READDIRPLUS cache of local file systems and [`fanotify`] its change events, [`drc`] the duplicate
//! request cache, [`creds`] per-thread
//! credentials, [`sys`] the system calls, [`splice`] zero-copy READ replies), the [`service::Service`] that holds the open exports
//! and runs calls, and [`server`], the serving loop. A connection's thread drives them in this
//! order for every chunk read from the socket:
//!
//! 1. feed the bytes to [`record::RecordDecoder::decode`] until it yields no more records
//!    (an error closes the connection);
//! 2. [`rpc::classify`] each record: drop it, send the error reply, or go on with the call;
//! 3. [`dispatch::dispatch`] the call against [`service::PROGRAMS`]: send the rejection, or
//!    run the procedure with [`service::Service::handle`] (on the connection's thread when it
//!    arrived alone, else on the [`call_pool`]; portmap right away,
//!    [`service::Service::is_inline`]), which decodes the arguments at `args_offset` (GARBAGE_ARGS
//!    if they do not decode) and returns the framed reply — over TCP
//!    [`service::Service::handle_stream`], whose READ replies may leave their data in a pipe
//!    ([`splice`]);
//! 4. queue the reply for the connection's writer, in completion order.
//!
//! To serve: build a [`Service`] from the exports ([`ExportSpec::from_config`]), bind listeners
//! ([`server::bind_wildcard`] for 2049 and 111), and run [`serve`] until a
//! `CancellationToken` is cancelled.
//!
//! When port 111 is taken by the machine's own rpcbind, [`rpcbind_client`] registers MOUNT and
//! NFS with it instead.
//!
//! [`smb`] is the Samba side: the rendered `smb.conf`, the supervised smbd and its probe.

pub mod call_pool;
pub mod creds;
pub mod dispatch;
pub mod drc;
pub mod export;
pub mod fanotify;
pub mod gfid;
pub mod handle;
pub mod handle_cache;
pub mod hostname;
pub mod listing_cache;
pub mod mount;
pub mod nfs3;
pub mod portmap;
pub mod record;
pub mod rpc;
pub mod rpcbind_client;
pub mod server;
pub mod service;
pub mod smb;
pub mod splice;
pub mod sys;
pub mod udp;
pub mod xdr;

pub use server::{Limits, serve};
pub use service::{ExportSpec, Ports, Service, ServiceOptions, StartupError};
