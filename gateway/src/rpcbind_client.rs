//! A client of the machine's own rpcbind (RFC 1833), for a gateway that finds port 111 taken:
//! instead of serving portmap itself, it registers MOUNT and NFS with the rpcbind that holds the
//! port, keeps them registered, and removes them when it stops.
//!
//! The protocol side is pure and table-tested: [`registrations`] (what the gateway serves,
//! from [`crate::service::PROGRAMS`], on netids `tcp` and `tcp6` with universal addresses such
//! as `0.0.0.0.8.1` and `::.8.1`), [`plan`] (which stale entries of a DUMP to UNSET and which
//! registrations to SET), [`encode_call`] and the argument encoders, and the reply decoders
//! ([`decode_results`], [`decode_rpcb_dump`], [`decode_pmap_dump`]), which are bounded
//! ([`MAX_ENTRIES`], [`MAX_STRING`], [`MAX_REPLY`]) and never panic, whatever the bytes.
//!
//! The transport is the one libtirpc's `rpcb_set` uses: the AF_UNIX stream socket
//! [`SYSTEM_SOCKET`] first (rpcbind takes the registration's owner from SO_PEERCRED, so root
//! is `superuser` and may replace anyone's entry), then TCP to 127.0.0.1 from a reserved source
//! port: rpcbind accepts SET and UNSET only from a loopback caller, and Debian's treats one on a
//! reserved port as `superuser` too (checked: a stale root entry is replaced over TCP alone). An
//! old portmap (version 2 only) is spoken to with PMAPPROC_SET/UNSET. A [`Session`] proves the
//! peer is rpcbind with a NULL call and learns its version from the answer before anything else.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;

use crate::portmap::{IPPROTO_TCP, IPPROTO_UDP};
use crate::record::{DEFAULT_MAX_FRAGMENT, RecordDecoder, encode_record};
use crate::rpc::{
    AcceptStatus, AuthStat, Call, Credential, MOUNT_PROGRAM, NFS_PROGRAM, OpaqueAuth,
    PORTMAP_PROGRAM, RejectedReply, ReplyBody, ReplyError, decode_reply,
};
use crate::service::PROGRAMS;
use crate::xdr::{Decoder, Encoder, XdrError};

/// Where Debian's (and every libtirpc) rpcbind listens for local registrations.
pub const SYSTEM_SOCKET: &str = "/run/rpcbind.sock";

/// rpcbind's port.
pub const STANDARD_PORT: u16 = 111;

/// Longest netid, universal address or owner string decoded from a reply.
pub const MAX_STRING: u32 = 256;
/// Most entries decoded from a DUMP; a longer table is a bad reply.
pub const MAX_ENTRIES: usize = 4096;
/// Largest reply record read from rpcbind: [`MAX_ENTRIES`] entries of short strings fit.
pub const MAX_REPLY: usize = 1024 * 1024;

const PROC_NULL: u32 = 0;
const PROC_SET: u32 = 1;
const PROC_UNSET: u32 = 2;
const PROC_DUMP: u32 = 4;

/// The reserved ports a TCP connection to rpcbind binds first (as `bindresvport` does).
const RESERVED_PORTS: std::ops::Range<u16> = 512..1024;

/// The protocol the peer speaks, learnt from its answer to NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// rpcbind version 3 or 4: SET/UNSET take an `rpcb` with a netid and a universal address.
    Rpcbind(u32),
    /// portmap version 2 only: SET/UNSET take a `mapping` (protocol and port); only `tcp`
    /// (IPv4) can be expressed, and UNSET removes every protocol of a (program, version).
    Portmap,
}

impl Dialect {
    /// The dialect of a peer whose NULL call to rpcbind version 4 ended with `status`; `None`
    /// when the peer is not rpcbind.
    pub fn from_null_status(status: AcceptStatus) -> Option<Dialect> {
        match status {
            AcceptStatus::Success => Some(Dialect::Rpcbind(4)),
            AcceptStatus::ProgMismatch { low, high } if low <= high => {
                if high >= 3 {
                    Some(Dialect::Rpcbind(high.min(4)))
                } else if low <= 2 && high == 2 {
                    Some(Dialect::Portmap)
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// The protocol version calls are sent with.
    pub fn version(self) -> u32 {
        match self {
            Dialect::Rpcbind(version) => version,
            Dialect::Portmap => 2,
        }
    }

    /// Whether this dialect can register a program on `netid`.
    pub fn can_express(self, netid: &str) -> bool {
        match self {
            Dialect::Rpcbind(_) => true,
            Dialect::Portmap => netid.eq_ignore_ascii_case("tcp"),
        }
    }

    /// Whether an UNSET of `entry` also removes `registration` (same program and version, and
    /// same netid unless this is portmap, whose UNSET knows no protocol).
    fn unset_covers(self, entry: &Entry, registration: &Registration) -> bool {
        entry.program == registration.program
            && entry.version == registration.version
            && (self == Dialect::Portmap || entry.netid.eq_ignore_ascii_case(registration.netid))
    }
}

/// One (program, version, netid) the gateway serves on `port` of every address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub program: u32,
    pub version: u32,
    /// `tcp` or `tcp6`.
    pub netid: &'static str,
    pub port: u16,
}

impl Registration {
    /// The wildcard universal address: `0.0.0.0.p1.p2` for `tcp`, `::.p1.p2` for `tcp6`.
    /// rpcbind answers GETADDR with the address of the interface the query arrived on.
    pub fn universal_address(&self) -> String {
        let host = if self.netid.ends_with('6') {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        crate::portmap::universal_address(SocketAddr::new(host, self.port))
    }

    /// Whether `entry` is exactly this registration (rpcbind compares netids without case).
    pub fn matches(&self, entry: &Entry) -> bool {
        entry.program == self.program
            && entry.version == self.version
            && entry.netid.eq_ignore_ascii_case(self.netid)
            && entry.address == self.universal_address()
    }
}

impl fmt::Display for Registration {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "program {} version {} on {} at {}",
            self.program,
            self.version,
            self.netid,
            self.universal_address()
        )
    }
}

/// What the gateway registers when NFS and MOUNT listen on `nfs_port`: every version of MOUNT
/// and NFS that [`PROGRAMS`] serves, on `tcp` and `tcp6`, and with `udp` MOUNT on `udp` and
/// `udp6` too (NFS is TCP-only, [`crate::udp`]). Versions the gateway does not answer are not
/// registered, so no client is sent to a port that answers PROG_MISMATCH.
pub fn registrations(nfs_port: u16, udp: bool) -> Vec<Registration> {
    let mut registrations = Vec::new();
    for program in PROGRAMS
        .iter()
        .filter(|program| matches!(program.prog, MOUNT_PROGRAM | NFS_PROGRAM))
    {
        let netids: &[&'static str] = if udp && program.prog == MOUNT_PROGRAM {
            &["tcp", "tcp6", "udp", "udp6"]
        } else {
            &["tcp", "tcp6"]
        };
        for version in program.versions.clone() {
            for &netid in netids {
                registrations.push(Registration {
                    program: program.prog,
                    version,
                    netid,
                    port: nfs_port,
                });
            }
        }
    }
    registrations
}

/// One entry of rpcbind's table, from a DUMP (a portmap DUMP gives netid `tcp`/`udp`, the
/// wildcard address and no owner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub program: u32,
    pub version: u32,
    pub netid: String,
    pub address: String,
    pub owner: String,
}

impl fmt::Display for Entry {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "program {} version {} on {} at {}",
            self.program, self.version, self.netid, self.address
        )?;
        if !self.owner.is_empty() {
            write!(formatter, " (owner {})", self.owner)?;
        }
        Ok(())
    }
}

/// What to change in rpcbind's table: UNSET `unset` (in this order), then SET `set`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Entries of the gateway's programs that are not the gateway's registrations: a previous
    /// gateway's on another port, knfsd's, versions or netids the gateway does not serve.
    pub unset: Vec<Entry>,
    /// Registrations missing from the table, or removed by one of the UNSETs.
    pub set: Vec<Registration>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.unset.is_empty() && self.set.is_empty()
    }
}

/// Compares rpcbind's `table` with the `expected` registrations (those `dialect` cannot
/// express are left out): every entry of a program the gateway registers that is not one of its
/// registrations is stale, and every registration that is absent or that an UNSET of a stale
/// entry would also remove must be SET. Entries of other programs are never touched.
pub fn plan(expected: &[Registration], table: &[Entry], dialect: Dialect) -> Plan {
    let expected: Vec<&Registration> = expected
        .iter()
        .filter(|registration| dialect.can_express(registration.netid))
        .collect();
    let programs: BTreeSet<u32> = expected
        .iter()
        .map(|registration| registration.program)
        .collect();
    let unset: Vec<Entry> = table
        .iter()
        .filter(|entry| programs.contains(&entry.program))
        .filter(|entry| {
            !expected
                .iter()
                .any(|registration| registration.matches(entry))
        })
        .cloned()
        .collect();
    let set = expected
        .into_iter()
        .filter(|registration| {
            let present = table.iter().any(|entry| registration.matches(entry));
            let removed = unset
                .iter()
                .any(|entry| dialect.unset_covers(entry, registration));
            !present || removed
        })
        .cloned()
        .collect();
    Plan { unset, set }
}

/// A complete, record-marked call to rpcbind `version` (AUTH_NONE: rpcbind identifies a local
/// caller by its socket, not by credentials).
pub fn encode_call(xid: u32, version: u32, procedure: u32, args: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(40 + args.len());
    let mut encoder = Encoder::new(&mut message);
    let call = Call {
        xid,
        program: PORTMAP_PROGRAM,
        version,
        procedure,
        credential: Credential::None,
        verifier: OpaqueAuth::none(),
    };
    // An AUTH_NONE call header has no length that could exceed a limit.
    let _ = call.encode(&mut encoder);
    encoder.raw(args);
    let mut framed = Vec::with_capacity(message.len() + 4);
    encode_record(&message, DEFAULT_MAX_FRAGMENT, &mut framed);
    framed
}

/// The arguments of rpcbind v3/v4 SET and UNSET: an `rpcb` (UNSET sends an empty address).
pub fn rpcb_args(
    program: u32,
    version: u32,
    netid: &str,
    address: &str,
    owner: &str,
) -> Result<Vec<u8>, XdrError> {
    let mut args = Vec::with_capacity(64);
    let mut encoder = Encoder::new(&mut args);
    encoder.u32(program);
    encoder.u32(version);
    encoder.string(netid, MAX_STRING)?;
    encoder.string(address, MAX_STRING)?;
    encoder.string(owner, MAX_STRING)?;
    Ok(args)
}

/// The arguments of portmap v2 SET and UNSET: a `mapping` (UNSET ignores protocol and port).
pub fn pmap_args(program: u32, version: u32, protocol: u32, port: u16) -> Vec<u8> {
    let mut args = Vec::with_capacity(16);
    let mut encoder = Encoder::new(&mut args);
    encoder.u32(program);
    encoder.u32(version);
    encoder.u32(protocol);
    encoder.u32(u32::from(port));
    args
}

/// Why a reply record does not carry the results of the call it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ReplyProblem {
    #[error("the reply does not decode")]
    Malformed(#[from] XdrError),
    #[error("the message is not a reply (message type {0})")]
    NotAReply(u32),
    #[error("the reply is for transaction {got:#010x}, not {expected:#010x}")]
    WrongXid { expected: u32, got: u32 },
    #[error("program unavailable")]
    ProgUnavail,
    #[error("version mismatch: versions {low} to {high} are served")]
    ProgMismatch { low: u32, high: u32 },
    #[error("procedure unavailable")]
    ProcUnavail,
    #[error("the arguments were refused as garbage")]
    GarbageArgs,
    #[error("system error")]
    SystemErr,
    #[error("rpc version mismatch: versions {low} to {high} are served")]
    RpcMismatch { low: u32, high: u32 },
    #[error("authentication refused ({0:?})")]
    AuthError(AuthStat),
    #[error("the table has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
}

impl From<ReplyError> for ReplyProblem {
    fn from(error: ReplyError) -> Self {
        match error {
            ReplyError::Xdr(error) => ReplyProblem::Malformed(error),
            ReplyError::NotAReply { message_type, .. } => ReplyProblem::NotAReply(message_type),
        }
    }
}

/// The results of the successful reply `record` to call `xid`, or why there are none.
pub fn decode_results(record: &[u8], xid: u32) -> Result<&[u8], ReplyProblem> {
    let (header, offset) = decode_reply(record)?;
    if header.xid != xid {
        return Err(ReplyProblem::WrongXid {
            expected: xid,
            got: header.xid,
        });
    }
    match header.body {
        ReplyBody::Accepted { status, .. } => match status {
            AcceptStatus::Success => Ok(record.get(offset..).unwrap_or_default()),
            AcceptStatus::ProgUnavail => Err(ReplyProblem::ProgUnavail),
            AcceptStatus::ProgMismatch { low, high } => {
                Err(ReplyProblem::ProgMismatch { low, high })
            }
            AcceptStatus::ProcUnavail => Err(ReplyProblem::ProcUnavail),
            AcceptStatus::GarbageArgs => Err(ReplyProblem::GarbageArgs),
            AcceptStatus::SystemErr => Err(ReplyProblem::SystemErr),
        },
        ReplyBody::Denied(RejectedReply::RpcMismatch { low, high }) => {
            Err(ReplyProblem::RpcMismatch { low, high })
        }
        ReplyBody::Denied(RejectedReply::AuthError(stat)) => Err(ReplyProblem::AuthError(stat)),
    }
}

/// The boolean result of SET or UNSET. portmap answers with an XDR `long`, so any non-zero
/// value is TRUE, as libtirpc reads it.
pub fn decode_answer(results: &[u8]) -> Result<bool, ReplyProblem> {
    Ok(Decoder::new(results).u32()? != 0)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The entries of an rpcbind v3/v4 DUMP result (`rpcblist_ptr`).
pub fn decode_rpcb_dump(results: &[u8]) -> Result<Vec<Entry>, ReplyProblem> {
    let decoder = &mut Decoder::new(results);
    let mut entries = Vec::new();
    while decoder.bool()? {
        if entries.len() == MAX_ENTRIES {
            return Err(ReplyProblem::TooManyEntries);
        }
        let program = decoder.u32()?;
        let version = decoder.u32()?;
        let netid = lossy(decoder.opaque(MAX_STRING)?);
        let address = lossy(decoder.opaque(MAX_STRING)?);
        let owner = lossy(decoder.opaque(MAX_STRING)?);
        entries.push(Entry {
            program,
            version,
            netid,
            address,
            owner,
        });
    }
    Ok(entries)
}

/// The entries of a portmap v2 DUMP result (`pmaplist`), as rpcbind would list them: netid
/// `tcp` or `udp` (other protocols are skipped), the IPv4 wildcard address, no owner.
pub fn decode_pmap_dump(results: &[u8]) -> Result<Vec<Entry>, ReplyProblem> {
    let decoder = &mut Decoder::new(results);
    let mut entries = Vec::new();
    let mut seen = 0usize;
    while decoder.bool()? {
        seen += 1;
        if seen > MAX_ENTRIES {
            return Err(ReplyProblem::TooManyEntries);
        }
        let program = decoder.u32()?;
        let version = decoder.u32()?;
        let protocol = decoder.u32()?;
        let port = decoder.u32()?;
        let netid = match protocol {
            IPPROTO_TCP => "tcp",
            IPPROTO_UDP => "udp",
            _ => continue,
        };
        // A port over 65535 cannot be served; keep the entry (it is stale) with the low bits.
        let port = u16::try_from(port & 0xffff).unwrap_or_default();
        entries.push(Entry {
            program,
            version,
            netid: netid.to_owned(),
            address: crate::portmap::universal_address(SocketAddr::from((
                Ipv4Addr::UNSPECIFIED,
                port,
            ))),
            owner: String::new(),
        });
    }
    Ok(entries)
}

/// Where an rpcbind may listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// An AF_UNIX stream socket.
    Local(PathBuf),
    /// TCP, connected from a reserved port when this process may bind one.
    Tcp(SocketAddr),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Local(path) => write!(formatter, "{}", path.display()),
            Endpoint::Tcp(address) => write!(formatter, "tcp {address}"),
        }
    }
}

/// Why talking to rpcbind failed.
#[derive(Debug, Error)]
pub enum RpcbindError {
    #[error("no rpcbind answers ({tried})")]
    NotAnswering { tried: String },
    #[error("{endpoint} does not answer as rpcbind: {problem}")]
    NotRpcbind {
        endpoint: Endpoint,
        problem: ReplyProblem,
    },
    #[error("rpcbind at {endpoint} failed during {operation}")]
    Io {
        endpoint: Endpoint,
        operation: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("rpcbind at {endpoint} sent a bad reply to {operation}: {problem}")]
    BadReply {
        endpoint: Endpoint,
        operation: &'static str,
        problem: ReplyProblem,
    },
    #[error("rpcbind at {endpoint} refused {operation} of {what}: {reason}")]
    Refused {
        endpoint: Endpoint,
        operation: &'static str,
        what: String,
        reason: String,
    },
}

/// The rpcbind to talk to: the endpoints tried in order, and the time allowed for connecting
/// and for each read or write.
#[derive(Debug, Clone)]
pub struct RpcbindClient {
    pub endpoints: Vec<Endpoint>,
    pub timeout: Duration,
}

impl RpcbindClient {
    /// The rpcbind holding TCP `port` of this machine: for the standard port 111,
    /// [`SYSTEM_SOCKET`] first, then TCP 127.0.0.1:111; for another port, only TCP to it
    /// (the local socket belongs to the rpcbind on 111, not to whatever holds that port).
    pub fn system(port: u16) -> RpcbindClient {
        let mut endpoints = Vec::new();
        if port == STANDARD_PORT {
            endpoints.push(Endpoint::Local(PathBuf::from(SYSTEM_SOCKET)));
        }
        endpoints.push(Endpoint::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port))));
        RpcbindClient {
            endpoints,
            timeout: Duration::from_secs(3),
        }
    }

    /// A session with the first endpoint that connects and answers NULL as rpcbind.
    pub fn connect(&self) -> Result<Session, RpcbindError> {
        let mut tried = Vec::new();
        for endpoint in &self.endpoints {
            match Session::open(endpoint.clone(), self.timeout) {
                Ok(session) => return Ok(session),
                // Each error names its endpoint.
                Err(error) => tried.push(error_chain(&error)),
            }
        }
        Err(RpcbindError::NotAnswering {
            tried: tried.join("; "),
        })
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

enum Stream {
    Local(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn connect(endpoint: &Endpoint, timeout: Duration) -> io::Result<Stream> {
        let stream = match endpoint {
            Endpoint::Local(path) => {
                let stream = UnixStream::connect(path)?;
                stream.set_read_timeout(Some(timeout))?;
                stream.set_write_timeout(Some(timeout))?;
                Stream::Local(stream)
            }
            Endpoint::Tcp(address) => {
                let stream = connect_from_reserved_port(*address, timeout)?;
                stream.set_read_timeout(Some(timeout))?;
                stream.set_write_timeout(Some(timeout))?;
                stream.set_nodelay(true)?;
                Stream::Tcp(stream)
            }
        };
        Ok(stream)
    }
}

impl Read for Stream {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Local(stream) => stream.read(buffer),
            Stream::Tcp(stream) => stream.read(buffer),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Local(stream) => stream.write(buffer),
            Stream::Tcp(stream) => stream.write(buffer),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Local(stream) => stream.flush(),
            Stream::Tcp(stream) => stream.flush(),
        }
    }
}

/// A TCP connection to `address` from the highest free reserved port, as `bindresvport` picks
/// one; from any port when this process may not bind reserved ones (rpcbind then treats the
/// caller as unprivileged).
fn connect_from_reserved_port(address: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let local_ip = match address {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    let mut last_error = None;
    for port in RESERVED_PORTS.rev() {
        let socket = Socket::new(
            Domain::for_address(address),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        match socket.bind(&SocketAddr::new(local_ip, port).into()) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AddrInUse => continue,
            Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
                return TcpStream::connect_timeout(&address, timeout);
            }
            Err(error) => return Err(error),
        }
        match socket.connect_timeout(&address.into(), timeout) {
            Ok(()) => return Ok(socket.into()),
            // The pair (this port, rpcbind) is still in TIME_WAIT from an earlier connection.
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE)
                ) =>
            {
                last_error = Some(error);
            }
            Err(error) => return Err(error),
        }
    }
    Err(last_error
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::AddrInUse, "no reserved port is free")))
}

/// One connection to rpcbind, after a NULL call proved what it speaks.
pub struct Session {
    stream: Stream,
    endpoint: Endpoint,
    dialect: Dialect,
    next_xid: u32,
    owner: String,
}

impl fmt::Debug for Session {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Session")
            .field("endpoint", &self.endpoint)
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Connects to `endpoint` and sends NULL to rpcbind version 4; the answer (success, or a
    /// version mismatch naming the versions served) gives the [`Dialect`].
    pub fn open(endpoint: Endpoint, timeout: Duration) -> Result<Session, RpcbindError> {
        let stream = Stream::connect(&endpoint, timeout).map_err(|source| RpcbindError::Io {
            endpoint: endpoint.clone(),
            operation: "connect",
            source,
        })?;
        let mut session = Session {
            stream,
            endpoint,
            dialect: Dialect::Rpcbind(4),
            next_xid: initial_xid(),
            // What libtirpc's rpcb_set sends; rpcbind takes the owner from the socket anyway.
            // SAFETY: geteuid has no preconditions and cannot fail.
            owner: unsafe { libc::geteuid() }.to_string(),
        };
        let xid = session.next_xid;
        let record = session.exchange(4, PROC_NULL, &[], "NULL")?;
        let problem = decode_results(&record, xid).err();
        let status = match problem {
            None => AcceptStatus::Success,
            Some(ReplyProblem::ProgMismatch { low, high }) => {
                AcceptStatus::ProgMismatch { low, high }
            }
            Some(_) => AcceptStatus::ProgUnavail,
        };
        let Some(dialect) = Dialect::from_null_status(status) else {
            return Err(RpcbindError::NotRpcbind {
                endpoint: session.endpoint,
                problem: problem.unwrap_or(ReplyProblem::ProgUnavail),
            });
        };
        session.dialect = dialect;
        Ok(session)
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Sends one call and reads the reply record that follows.
    fn exchange(
        &mut self,
        version: u32,
        procedure: u32,
        args: &[u8],
        operation: &'static str,
    ) -> Result<Vec<u8>, RpcbindError> {
        let xid = self.next_xid;
        self.next_xid = self.next_xid.wrapping_add(1);
        let io_error = |endpoint: &Endpoint, source| RpcbindError::Io {
            endpoint: endpoint.clone(),
            operation,
            source,
        };
        self.stream
            .write_all(&encode_call(xid, version, procedure, args))
            .map_err(|source| io_error(&self.endpoint, source))?;
        let mut decoder = RecordDecoder::new(MAX_REPLY);
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let read = self
                .stream
                .read(&mut buffer)
                .map_err(|source| io_error(&self.endpoint, source))?;
            if read == 0 {
                return Err(io_error(
                    &self.endpoint,
                    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"),
                ));
            }
            let mut input = buffer.get(..read).unwrap_or_default();
            match decoder.decode(&mut input) {
                Ok(Some(record)) => return Ok(record),
                Ok(None) => {}
                Err(error) => {
                    return Err(io_error(
                        &self.endpoint,
                        io::Error::new(io::ErrorKind::InvalidData, error),
                    ));
                }
            }
        }
    }

    /// One call whose reply must be a success; returns the results.
    fn call(
        &mut self,
        procedure: u32,
        args: &[u8],
        operation: &'static str,
    ) -> Result<Vec<u8>, RpcbindError> {
        let xid = self.next_xid;
        let record = self.exchange(self.dialect.version(), procedure, args, operation)?;
        decode_results(&record, xid)
            .map(<[u8]>::to_vec)
            .map_err(|problem| RpcbindError::BadReply {
                endpoint: self.endpoint.clone(),
                operation,
                problem,
            })
    }

    /// SET or UNSET: the call, then its boolean answer; FALSE and an authentication error
    /// (rpcbind's answer to a caller it does not trust) are refusals.
    fn change(
        &mut self,
        procedure: u32,
        args: &[u8],
        operation: &'static str,
        what: String,
    ) -> Result<(), RpcbindError> {
        let refused = |endpoint: &Endpoint, reason: String| RpcbindError::Refused {
            endpoint: endpoint.clone(),
            operation,
            what: what.clone(),
            reason,
        };
        match self.call(procedure, args, operation) {
            Ok(results) => match decode_answer(&results) {
                Ok(true) => Ok(()),
                Ok(false) => Err(refused(&self.endpoint, "it answered FALSE".to_owned())),
                Err(problem) => Err(RpcbindError::BadReply {
                    endpoint: self.endpoint.clone(),
                    operation,
                    problem,
                }),
            },
            Err(RpcbindError::BadReply {
                problem: problem @ ReplyProblem::AuthError(_),
                ..
            }) => Err(refused(&self.endpoint, problem.to_string())),
            Err(error) => Err(error),
        }
    }

    /// rpcbind's table (DUMP).
    pub fn dump(&mut self) -> Result<Vec<Entry>, RpcbindError> {
        let results = self.call(PROC_DUMP, &[], "DUMP")?;
        let entries = match self.dialect {
            Dialect::Rpcbind(_) => decode_rpcb_dump(&results),
            Dialect::Portmap => decode_pmap_dump(&results),
        };
        entries.map_err(|problem| RpcbindError::BadReply {
            endpoint: self.endpoint.clone(),
            operation: "DUMP",
            problem,
        })
    }

    /// SET `registration`. rpcbind refuses when the (program, version, netid) is registered
    /// at another address: UNSET that first.
    pub fn set(&mut self, registration: &Registration) -> Result<(), RpcbindError> {
        let args = match self.dialect {
            Dialect::Rpcbind(_) => rpcb_args(
                registration.program,
                registration.version,
                registration.netid,
                &registration.universal_address(),
                &self.owner,
            )
            .map_err(|error| self.encode_error("SET", error))?,
            Dialect::Portmap => pmap_args(
                registration.program,
                registration.version,
                IPPROTO_TCP,
                registration.port,
            ),
        };
        self.change(PROC_SET, &args, "SET", registration.to_string())
    }

    /// UNSET (program, version) on `netid`; portmap removes every protocol of it.
    pub fn unset(&mut self, program: u32, version: u32, netid: &str) -> Result<(), RpcbindError> {
        let args = match self.dialect {
            Dialect::Rpcbind(_) => rpcb_args(program, version, netid, "", &self.owner)
                .map_err(|error| self.encode_error("UNSET", error))?,
            Dialect::Portmap => pmap_args(program, version, 0, 0),
        };
        let what = format!("program {program} version {version} on {netid}");
        self.change(PROC_UNSET, &args, "UNSET", what)
    }

    fn encode_error(&self, operation: &'static str, error: XdrError) -> RpcbindError {
        RpcbindError::Io {
            endpoint: self.endpoint.clone(),
            operation,
            source: io::Error::new(io::ErrorKind::InvalidInput, error),
        }
    }

    /// Makes rpcbind's table hold exactly `expected` for the programs in it: DUMP, then the
    /// UNSETs and SETs of [`plan`], logging each replaced entry. Returns what was changed.
    pub fn reconcile(&mut self, expected: &[Registration]) -> Result<Plan, RpcbindError> {
        let table = self.dump()?;
        let plan = plan(expected, &table, self.dialect);
        let mut unset_done = BTreeSet::new();
        for entry in &plan.unset {
            tracing::info!(endpoint = %self.endpoint, "rpcbind: removing {entry}");
            let netid = match self.dialect {
                Dialect::Rpcbind(_) => entry.netid.as_str(),
                Dialect::Portmap => "",
            };
            if unset_done.insert((entry.program, entry.version, netid.to_ascii_lowercase())) {
                self.unset(entry.program, entry.version, netid)?;
            }
        }
        for registration in &plan.set {
            self.set(registration)?;
        }
        Ok(plan)
    }

    /// UNSETs every (program, version, netid) of `registrations` (stopping: the entries go
    /// whoever made them, as in libtirpc's `svc_unreg`).
    pub fn unregister(&mut self, registrations: &[Registration]) -> Result<(), RpcbindError> {
        let mut done = BTreeSet::new();
        let dialect = self.dialect;
        for registration in registrations
            .iter()
            .filter(|registration| dialect.can_express(registration.netid))
        {
            let netid = match self.dialect {
                Dialect::Rpcbind(_) => registration.netid,
                Dialect::Portmap => "",
            };
            if done.insert((registration.program, registration.version, netid)) {
                self.unset(registration.program, registration.version, netid)?;
            }
        }
        Ok(())
    }
}

/// A transaction id that differs between runs, so a reply meant for an earlier process that
/// used the same reserved port is never taken for ours.
fn initial_xid() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    nanos ^ std::process::id().rotate_left(16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{ReplyHeader, encode_reply};

    fn registration(program: u32, version: u32, netid: &'static str) -> Registration {
        Registration {
            program,
            version,
            netid,
            port: 2049,
        }
    }

    fn entry(program: u32, version: u32, netid: &str, address: &str, owner: &str) -> Entry {
        Entry {
            program,
            version,
            netid: netid.to_owned(),
            address: address.to_owned(),
            owner: owner.to_owned(),
        }
    }

    #[test]
    fn registrations_are_what_the_gateway_serves() {
        let addresses: Vec<String> = registrations(2049, true)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            addresses,
            [
                "program 100005 version 3 on tcp at 0.0.0.0.8.1",
                "program 100005 version 3 on tcp6 at ::.8.1",
                "program 100005 version 3 on udp at 0.0.0.0.8.1",
                "program 100005 version 3 on udp6 at ::.8.1",
                "program 100003 version 3 on tcp at 0.0.0.0.8.1",
                "program 100003 version 3 on tcp6 at ::.8.1",
            ]
        );
    }

    #[test]
    fn system_endpoints() {
        let local = Endpoint::Local(PathBuf::from("/run/rpcbind.sock"));
        let tcp = |port| Endpoint::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        assert_eq!(RpcbindClient::system(111).endpoints, [local, tcp(111)]);
        assert_eq!(RpcbindClient::system(1111).endpoints, [tcp(1111)]);
    }

    #[test]
    fn universal_addresses() {
        let cases = [
            (2049, "tcp", "0.0.0.0.8.1"),
            (2049, "tcp6", "::.8.1"),
            (20048, "tcp", "0.0.0.0.78.80"),
            (1, "tcp6", "::.0.1"),
            (65535, "tcp", "0.0.0.0.255.255"),
        ];
        for (port, netid, expected) in cases {
            let registration = Registration {
                program: NFS_PROGRAM,
                version: 3,
                netid,
                port,
            };
            assert_eq!(registration.universal_address(), expected, "{port} {netid}");
        }
    }

    #[test]
    fn dialect_from_null() {
        let cases = [
            (AcceptStatus::Success, Some(Dialect::Rpcbind(4))),
            (
                AcceptStatus::ProgMismatch { low: 2, high: 3 },
                Some(Dialect::Rpcbind(3)),
            ),
            (
                AcceptStatus::ProgMismatch { low: 2, high: 2 },
                Some(Dialect::Portmap),
            ),
            (
                AcceptStatus::ProgMismatch { low: 2, high: 9 },
                Some(Dialect::Rpcbind(4)),
            ),
            (AcceptStatus::ProgMismatch { low: 5, high: 1 }, None),
            (AcceptStatus::ProgMismatch { low: 1, high: 1 }, None),
            (AcceptStatus::ProgUnavail, None),
            (AcceptStatus::ProcUnavail, None),
            (AcceptStatus::SystemErr, None),
        ];
        for (status, expected) in cases {
            assert_eq!(Dialect::from_null_status(status), expected, "{status:?}");
        }
    }

    #[test]
    fn plans() {
        let ours = registrations(2049, false);
        let nfs_tcp = entry(NFS_PROGRAM, 3, "tcp", "0.0.0.0.8.1", "superuser");
        let nfs_tcp6 = entry(NFS_PROGRAM, 3, "tcp6", "::.8.1", "superuser");
        let mount_tcp = entry(MOUNT_PROGRAM, 3, "tcp", "0.0.0.0.8.1", "superuser");
        let mount_tcp6 = entry(MOUNT_PROGRAM, 3, "tcp6", "::.8.1", "superuser");
        let portmap = entry(PORTMAP_PROGRAM, 4, "tcp", "0.0.0.0.0.111", "superuser");
        let nlm = entry(100_021, 4, "tcp", "0.0.0.0.175.3", "unknown");
        let complete = vec![
            portmap.clone(),
            nfs_tcp.clone(),
            nfs_tcp6.clone(),
            mount_tcp.clone(),
            mount_tcp6.clone(),
            nlm.clone(),
        ];
        // A stale MOUNT of an earlier gateway (mountd's port 20048), knfsd's NFSv4, UDP.
        let old_mount = entry(MOUNT_PROGRAM, 3, "tcp", "0.0.0.0.78.80", "superuser");
        let knfsd_v4 = entry(NFS_PROGRAM, 4, "tcp", "0.0.0.0.8.1", "superuser");
        let nfs_udp = entry(NFS_PROGRAM, 3, "udp", "0.0.0.0.8.1", "superuser");
        let nfs_upper = entry(NFS_PROGRAM, 3, "TCP", "0.0.0.0.8.1", "superuser");

        type Case = (
            &'static str,
            Vec<Entry>,
            Dialect,
            Vec<Entry>,
            Vec<Registration>,
        );
        let cases: Vec<Case> = vec![
            (
                "empty table",
                vec![portmap.clone()],
                Dialect::Rpcbind(4),
                vec![],
                ours.clone(),
            ),
            (
                "complete",
                complete.clone(),
                Dialect::Rpcbind(4),
                vec![],
                vec![],
            ),
            (
                "netids compare without case",
                vec![
                    nfs_upper,
                    nfs_tcp6.clone(),
                    mount_tcp.clone(),
                    mount_tcp6.clone(),
                ],
                Dialect::Rpcbind(3),
                vec![],
                vec![],
            ),
            (
                "one missing",
                vec![nfs_tcp.clone(), mount_tcp.clone(), mount_tcp6.clone()],
                Dialect::Rpcbind(4),
                vec![],
                vec![registration(NFS_PROGRAM, 3, "tcp6")],
            ),
            (
                "stale address is replaced",
                vec![
                    nfs_tcp.clone(),
                    nfs_tcp6.clone(),
                    old_mount.clone(),
                    mount_tcp6.clone(),
                ],
                Dialect::Rpcbind(4),
                vec![old_mount.clone()],
                vec![registration(MOUNT_PROGRAM, 3, "tcp")],
            ),
            (
                "versions and netids not served are removed, others' programs kept",
                [complete.clone(), vec![knfsd_v4.clone(), nfs_udp.clone()]].concat(),
                Dialect::Rpcbind(4),
                vec![knfsd_v4.clone(), nfs_udp.clone()],
                vec![],
            ),
            (
                "portmap registers tcp only",
                vec![],
                Dialect::Portmap,
                vec![],
                vec![
                    registration(MOUNT_PROGRAM, 3, "tcp"),
                    registration(NFS_PROGRAM, 3, "tcp"),
                ],
            ),
            (
                "portmap: unsetting udp removes tcp too, so it is set again",
                vec![nfs_tcp.clone(), nfs_udp.clone(), mount_tcp.clone()],
                Dialect::Portmap,
                vec![nfs_udp.clone()],
                vec![registration(NFS_PROGRAM, 3, "tcp")],
            ),
            (
                "rpcbind: unsetting udp leaves tcp",
                [complete.clone(), vec![nfs_udp.clone()]].concat(),
                Dialect::Rpcbind(4),
                vec![nfs_udp.clone()],
                vec![],
            ),
        ];
        for (name, table, dialect, unset, set) in cases {
            assert_eq!(plan(&ours, &table, dialect), Plan { unset, set }, "{name}");
        }
        assert!(plan(&ours, &complete, Dialect::Rpcbind(4)).is_empty());
    }

    #[test]
    fn call_encoding() {
        let args = rpcb_args(NFS_PROGRAM, 3, "tcp", "0.0.0.0.8.1", "0").unwrap();
        let framed = encode_call(0x0102_0304, 4, PROC_SET, &args);
        let words = |values: &[u32]| -> Vec<u8> {
            values
                .iter()
                .flat_map(|value| value.to_be_bytes())
                .collect()
        };
        let expected = [
            words(&[0x8000_0000 | 80]),
            // xid, CALL, rpc version 2, rpcbind, version 4, SET, AUTH_NONE, AUTH_NONE
            words(&[0x0102_0304, 0, 2, PORTMAP_PROGRAM, 4, PROC_SET, 0, 0, 0, 0]),
            words(&[NFS_PROGRAM, 3, 3]),
            b"tcp\0".to_vec(),
            words(&[11]),
            b"0.0.0.0.8.1\0".to_vec(),
            words(&[1]),
            b"0\0\0\0".to_vec(),
        ]
        .concat();
        assert_eq!(framed, expected);
        assert_eq!(
            pmap_args(MOUNT_PROGRAM, 3, IPPROTO_TCP, 2049),
            words(&[MOUNT_PROGRAM, 3, 6, 2049])
        );
        assert!(rpcb_args(1, 1, &"x".repeat(300), "", "").is_err());
    }

    fn reply(xid: u32, status: AcceptStatus, results: &[u8]) -> Vec<u8> {
        encode_reply(
            xid,
            &ReplyBody::Accepted {
                verifier: OpaqueAuth::none(),
                status,
            },
            results,
        )
    }

    #[test]
    fn reply_decoding() {
        let ok = reply(7, AcceptStatus::Success, &[0, 0, 0, 1]);
        assert_eq!(decode_results(&ok, 7), Ok(&[0u8, 0, 0, 1][..]));
        assert_eq!(
            decode_results(&ok, 8),
            Err(ReplyProblem::WrongXid {
                expected: 8,
                got: 7
            })
        );
        assert_eq!(decode_answer(&[0, 0, 0, 1]), Ok(true));
        assert_eq!(decode_answer(&[0, 0, 0, 0]), Ok(false));
        // portmap's `long` TRUE may be any non-zero value.
        assert_eq!(decode_answer(&[0xff, 0xff, 0xff, 0xff]), Ok(true));
        assert!(matches!(
            decode_answer(&[0, 0]),
            Err(ReplyProblem::Malformed(_))
        ));
        let mismatch = reply(1, AcceptStatus::ProgMismatch { low: 2, high: 2 }, &[]);
        assert_eq!(
            decode_results(&mismatch, 1),
            Err(ReplyProblem::ProgMismatch { low: 2, high: 2 })
        );
        let mut weak = Vec::new();
        ReplyHeader {
            xid: 3,
            body: ReplyBody::auth_error(AuthStat::TooWeak),
        }
        .encode(&mut Encoder::new(&mut weak));
        assert_eq!(
            decode_results(&weak, 3),
            Err(ReplyProblem::AuthError(AuthStat::TooWeak))
        );
        let call = encode_call(3, 4, 0, &[]);
        assert_eq!(
            decode_results(&call[4..], 3),
            Err(ReplyProblem::NotAReply(0))
        );
        assert!(matches!(
            decode_results(&[0, 0, 0], 3),
            Err(ReplyProblem::Malformed(_))
        ));
    }

    fn rpcb_dump(entries: &[Entry]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut encoder = Encoder::new(&mut bytes);
        for entry in entries {
            encoder.bool(true);
            encoder.u32(entry.program);
            encoder.u32(entry.version);
            encoder.string(&entry.netid, MAX_STRING).unwrap();
            encoder.string(&entry.address, MAX_STRING).unwrap();
            encoder.string(&entry.owner, MAX_STRING).unwrap();
        }
        encoder.bool(false);
        bytes
    }

    #[test]
    fn dump_decoding() {
        let entries = vec![
            entry(PORTMAP_PROGRAM, 4, "tcp6", "::.0.111", "superuser"),
            entry(NFS_PROGRAM, 3, "tcp", "0.0.0.0.8.1", "0"),
        ];
        assert_eq!(decode_rpcb_dump(&rpcb_dump(&entries)), Ok(entries.clone()));
        assert_eq!(decode_rpcb_dump(&[0, 0, 0, 0]), Ok(vec![]));
        // Truncated anywhere: an error, never a panic.
        let bytes = rpcb_dump(&entries);
        for length in 0..bytes.len() {
            assert!(
                decode_rpcb_dump(&bytes[..length]).is_err(),
                "{length} bytes"
            );
        }
        // A string over the limit.
        let mut long = vec![0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1];
        long.extend((MAX_STRING + 1).to_be_bytes());
        assert!(matches!(
            decode_rpcb_dump(&long),
            Err(ReplyProblem::Malformed(XdrError::LengthOverLimit { .. }))
        ));
        // More entries than the bound.
        let many = vec![entry(1, 1, "", "", ""); MAX_ENTRIES + 1];
        assert_eq!(
            decode_rpcb_dump(&rpcb_dump(&many)),
            Err(ReplyProblem::TooManyEntries)
        );

        let words = |values: &[u32]| -> Vec<u8> {
            values
                .iter()
                .flat_map(|value| value.to_be_bytes())
                .collect()
        };
        let pmap = words(&[
            1,
            NFS_PROGRAM,
            3,
            6,
            2049, //
            1,
            NFS_PROGRAM,
            3,
            17,
            2049, //
            1,
            7,
            1,
            99,
            5, // neither TCP nor UDP: skipped
            0,
        ]);
        assert_eq!(
            decode_pmap_dump(&pmap),
            Ok(vec![
                entry(NFS_PROGRAM, 3, "tcp", "0.0.0.0.8.1", ""),
                entry(NFS_PROGRAM, 3, "udp", "0.0.0.0.8.1", ""),
            ])
        );
        for length in 0..pmap.len() {
            assert!(decode_pmap_dump(&pmap[..length]).is_err(), "{length} bytes");
        }
    }
}
