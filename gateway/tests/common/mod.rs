//! A small NFSv3 / MOUNT / portmap client over the gateway's own wire layer, and a test server
//! that serves a temporary directory on loopback, for the protocol tests.
//!
//! The client encodes arguments and decodes results itself, following RFC 1813 rather than the
//! server's code, so that a misreading of the RFC on one side shows up as a failing test.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "each test binary uses a different subset; a panic is how a test reports a failure"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cluster_config::{Access, ClientMatch, HandleScheme, Squash};
use gateway::export::Policy;
use gateway::handle::HandleKey;
use gateway::hostname::HostNames;
use gateway::record::{DEFAULT_MAX_RECORD, RecordDecoder, encode_record};
use gateway::rpc::{
    AcceptStatus, AuthSys, Call, Credential, MOUNT_PROGRAM, NFS_PROGRAM, OpaqueAuth,
    PORTMAP_PROGRAM, ReplyBody, decode_reply,
};
use gateway::xdr::{Decoder, Encoder};
use gateway::{ExportSpec, Limits, Ports, Service, ServiceOptions};
use tokio_util::sync::CancellationToken;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this test may run: the server needs root (open_by_handle_at, credentials).
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root, and CI must run it as root"
    );
    eprintln!("SKIPPED {test}: needs root");
    false
}

/// Host names for tests: none.
#[derive(Debug)]
pub struct NoNames;

impl HostNames for NoNames {
    fn names(&self, _: std::net::IpAddr) -> Vec<String> {
        Vec::new()
    }
}

pub const SECRET: &[u8] = b"the test cluster secret, 32 bytes";

/// One export of a test server.
#[derive(Debug, Clone)]
pub struct TestExport {
    pub name: &'static str,
    /// Relative to the server's volume directory.
    pub dir: &'static str,
    pub access: Access,
    pub squash: Squash,
    pub clients: Vec<ClientMatch>,
}

impl TestExport {
    pub fn rw(name: &'static str, dir: &'static str, squash: Squash) -> Self {
        TestExport {
            name,
            dir,
            access: Access::ReadWrite,
            squash,
            clients: vec![ClientMatch::Any],
        }
    }
}

/// A gateway serving exports of `volume` on 127.0.0.1 until dropped.
pub struct TestServer {
    pub address: SocketAddr,
    pub service: Arc<Service>,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(volume: &Path, exports: &[TestExport]) -> TestServer {
        Self::start_with(volume, exports, SECRET, Limits::default())
    }

    pub fn start_with(
        volume: &Path,
        exports: &[TestExport],
        secret: &[u8],
        limits: Limits,
    ) -> TestServer {
        let listener = gateway::server::bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        let specs = exports
            .iter()
            .map(|export| ExportSpec {
                name: export.name.to_owned(),
                mount_path: format!("/{}", export.name),
                local_path: volume.join(export.dir),
                policy: Policy {
                    access: export.access,
                    clients: export.clients.clone(),
                    squash: export.squash,
                    anon_uid: 65534,
                    anon_gid: 65534,
                },
            })
            .collect();
        let service = Service::new(
            specs,
            ServiceOptions {
                ports: Ports {
                    nfs: address.port(),
                    portmap: address.port(),
                    udp: false,
                },
                handle_key: HandleKey::from_cluster_secret(secret),
                write_verifier: None,
                host_names: Arc::new(NoNames),
                handles: HandleScheme::Auto,
            },
        )
        .unwrap();
        let service = Arc::new(service);
        let shutdown = CancellationToken::new();
        let thread = {
            let service = service.clone();
            let shutdown = shutdown.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                runtime
                    .block_on(gateway::serve(service, vec![listener], limits, shutdown))
                    .unwrap();
            })
        };
        TestServer {
            address,
            service,
            shutdown,
            thread: Some(thread),
        }
    }

    pub fn client(&self) -> RpcClient {
        RpcClient::connect(self.address)
    }

    pub fn nfs(&self, credential: Credential) -> Nfs {
        Nfs {
            rpc: self.client(),
            credential,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub fn auth_sys(uid: u32, gid: u32, gids: &[u32]) -> Credential {
    Credential::Sys(AuthSys {
        stamp: 1,
        machinename: b"testclient".to_vec(),
        uid,
        gid,
        gids: gids.to_vec(),
    })
}

pub fn root() -> Credential {
    auth_sys(0, 0, &[])
}

/// A blocking ONC-RPC client over one TCP connection.
pub struct RpcClient {
    pub stream: TcpStream,
    decoder: RecordDecoder,
    next_xid: u32,
    pending: Vec<Vec<u8>>,
}

/// What came back for a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// SUCCESS with these result bytes.
    Results(Vec<u8>),
    /// Anything else.
    Rejected(ReplyBody),
}

impl RpcClient {
    pub fn connect(address: SocketAddr) -> RpcClient {
        Self::from_stream(TcpStream::connect(address).unwrap())
    }

    /// A client on a connection made elsewhere (from a chosen port, say).
    pub fn from_stream(stream: TcpStream) -> RpcClient {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        RpcClient {
            stream,
            decoder: RecordDecoder::new(DEFAULT_MAX_RECORD + 4096),
            next_xid: 1,
            pending: Vec::new(),
        }
    }

    /// Sends a call without waiting; returns its xid.
    pub fn send(
        &mut self,
        program: u32,
        version: u32,
        procedure: u32,
        credential: &Credential,
        args: &[u8],
    ) -> u32 {
        let xid = self.next_xid;
        self.next_xid += 1;
        let mut message = Vec::new();
        Call {
            xid,
            program,
            version,
            procedure,
            credential: credential.clone(),
            verifier: OpaqueAuth::none(),
        }
        .encode(&mut Encoder::new(&mut message))
        .unwrap();
        message.extend_from_slice(args);
        self.send_raw(&message);
        xid
    }

    /// Sends `message` as one record.
    pub fn send_raw(&mut self, message: &[u8]) {
        let mut framed = Vec::new();
        encode_record(message, 1 << 30, &mut framed);
        self.stream.write_all(&framed).unwrap();
    }

    /// Reads the next reply record.
    pub fn receive_record(&mut self) -> Vec<u8> {
        if let Some(record) = self.pending.pop() {
            return record;
        }
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let length = self.stream.read(&mut buffer).unwrap();
            assert!(length > 0, "server closed the connection");
            let mut input = &buffer[..length];
            while let Some(record) = self.decoder.decode(&mut input).unwrap() {
                self.pending.insert(0, record);
            }
            if let Some(record) = self.pending.pop() {
                return record;
            }
        }
    }

    /// Reads the next reply: (xid, outcome).
    pub fn receive(&mut self) -> (u32, Outcome) {
        let record = self.receive_record();
        let (header, offset) = decode_reply(&record).unwrap();
        let outcome = match header.body {
            ReplyBody::Accepted {
                status: AcceptStatus::Success,
                ..
            } => Outcome::Results(record[offset..].to_vec()),
            body => Outcome::Rejected(body),
        };
        (header.xid, outcome)
    }

    pub fn call(
        &mut self,
        program: u32,
        version: u32,
        procedure: u32,
        credential: &Credential,
        args: &[u8],
    ) -> Outcome {
        let xid = self.send(program, version, procedure, credential, args);
        let (reply_xid, outcome) = self.receive();
        assert_eq!(reply_xid, xid);
        outcome
    }
}

/// Argument builder.
#[derive(Default)]
pub struct Args(pub Vec<u8>);

impl Args {
    pub fn new() -> Self {
        Args(Vec::new())
    }
    pub fn u32(mut self, value: u32) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }
    pub fn u64(mut self, value: u64) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }
    pub fn opaque(mut self, bytes: &[u8]) -> Self {
        Encoder::new(&mut self.0).opaque(bytes, u32::MAX).unwrap();
        self
    }
    pub fn fixed(mut self, bytes: &[u8]) -> Self {
        Encoder::new(&mut self.0).fixed_opaque(bytes);
        self
    }
    /// An empty `sattr3` (nothing set).
    pub fn no_sattr(self) -> Self {
        self.u32(0).u32(0).u32(0).u32(0).u32(0).u32(0)
    }
    /// A `sattr3` with only the mode set.
    pub fn sattr_mode(self, mode: u32) -> Self {
        self.u32(1).u32(mode).u32(0).u32(0).u32(0).u32(0).u32(0)
    }
}

/// NFSv3 status codes the tests name.
pub mod status {
    pub const OK: u32 = 0;
    pub const PERM: u32 = 1;
    pub const NOENT: u32 = 2;
    pub const ACCES: u32 = 13;
    pub const EXIST: u32 = 17;
    pub const XDEV: u32 = 18;
    pub const NOTDIR: u32 = 20;
    pub const ISDIR: u32 = 21;
    pub const INVAL: u32 = 22;
    pub const ROFS: u32 = 30;
    pub const NAMETOOLONG: u32 = 63;
    pub const NOTEMPTY: u32 = 66;
    pub const STALE: u32 = 70;
    pub const BADHANDLE: u32 = 10001;
    pub const NOT_SYNC: u32 = 10002;
    pub const TOOSMALL: u32 = 10005;
    pub const BADTYPE: u32 = 10007;
}

/// `fattr3`, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub kind: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub used: u64,
    pub fsid: u64,
    pub fileid: u64,
    pub atime: (u32, u32),
    pub mtime: (u32, u32),
    pub ctime: (u32, u32),
}

pub fn fattr3(decoder: &mut Decoder<'_>) -> Attr {
    let kind = decoder.u32().unwrap();
    let mode = decoder.u32().unwrap();
    let nlink = decoder.u32().unwrap();
    let uid = decoder.u32().unwrap();
    let gid = decoder.u32().unwrap();
    let size = decoder.u64().unwrap();
    let used = decoder.u64().unwrap();
    let _rdev = (decoder.u32().unwrap(), decoder.u32().unwrap());
    let fsid = decoder.u64().unwrap();
    let fileid = decoder.u64().unwrap();
    let mut time = || (decoder.u32().unwrap(), decoder.u32().unwrap());
    let atime = time();
    let mtime = time();
    let ctime = time();
    Attr {
        kind,
        mode,
        nlink,
        uid,
        gid,
        size,
        used,
        fsid,
        fileid,
        atime,
        mtime,
        ctime,
    }
}

pub fn post_op_attr(decoder: &mut Decoder<'_>) -> Option<Attr> {
    decoder.bool().unwrap().then(|| fattr3(decoder))
}

pub fn wcc_data(decoder: &mut Decoder<'_>) -> Option<Attr> {
    if decoder.bool().unwrap() {
        decoder.u64().unwrap();
        decoder.u64().unwrap();
        decoder.u64().unwrap();
    }
    post_op_attr(decoder)
}

/// One READDIR(PLUS) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub fileid: u64,
    pub name: Vec<u8>,
    pub cookie: u64,
    pub attr: Option<Attr>,
    pub handle: Option<Vec<u8>>,
}

/// A WRITE's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub count: u32,
    pub committed: u32,
    pub verifier: [u8; 8],
}

/// An NFSv3 + MOUNT client acting as one credential.
pub struct Nfs {
    pub rpc: RpcClient,
    pub credential: Credential,
}

type Fh = Vec<u8>;

impl Nfs {
    pub fn call(&mut self, procedure: u32, args: Args) -> Vec<u8> {
        match self
            .rpc
            .call(NFS_PROGRAM, 3, procedure, &self.credential.clone(), &args.0)
        {
            Outcome::Results(results) => results,
            Outcome::Rejected(body) => panic!("NFS procedure {procedure} rejected: {body:?}"),
        }
    }

    pub fn mnt(&mut self, path: &str) -> Result<Fh, u32> {
        let args = Args::new().opaque(path.as_bytes());
        let Outcome::Results(results) =
            self.rpc
                .call(MOUNT_PROGRAM, 3, 1, &self.credential.clone(), &args.0)
        else {
            panic!("MNT rejected");
        };
        let decoder = &mut Decoder::new(&results);
        match decoder.u32().unwrap() {
            0 => {
                let handle = decoder.opaque(64).unwrap().to_vec();
                let flavors = decoder.array(16, Decoder::u32).unwrap();
                assert_eq!(flavors, vec![1], "AUTH_SYS offered");
                Ok(handle)
            }
            status => Err(status),
        }
    }

    pub fn getattr(&mut self, fh: &[u8]) -> Result<Attr, u32> {
        let results = self.call(1, Args::new().opaque(fh));
        let decoder = &mut Decoder::new(&results);
        match decoder.u32().unwrap() {
            0 => Ok(fattr3(decoder)),
            status => Err(status),
        }
    }

    /// SETATTR with a raw `sattr3` + guard.
    pub fn setattr_raw(&mut self, fh: &[u8], sattr_and_guard: Args) -> Result<Attr, u32> {
        let mut args = Args::new().opaque(fh);
        args.0.extend_from_slice(&sattr_and_guard.0);
        let results = self.call(2, args);
        let decoder = &mut Decoder::new(&results);
        let status = decoder.u32().unwrap();
        let after = wcc_data(decoder);
        match status {
            0 => Ok(after.unwrap()),
            status => Err(status),
        }
    }

    pub fn chmod(&mut self, fh: &[u8], mode: u32) -> Result<Attr, u32> {
        self.setattr_raw(fh, Args::new().sattr_mode(mode).u32(0))
    }

    pub fn chown(&mut self, fh: &[u8], uid: u32, gid: u32) -> Result<Attr, u32> {
        let sattr = Args::new()
            .u32(0)
            .u32(1)
            .u32(uid)
            .u32(1)
            .u32(gid)
            .u32(0)
            .u32(0)
            .u32(0)
            .u32(0);
        self.setattr_raw(fh, sattr)
    }

    pub fn truncate(&mut self, fh: &[u8], size: u64) -> Result<Attr, u32> {
        let sattr = Args::new()
            .u32(0)
            .u32(0)
            .u32(0)
            .u32(1)
            .u64(size)
            .u32(0)
            .u32(0)
            .u32(0);
        self.setattr_raw(fh, sattr)
    }

    pub fn lookup(&mut self, dir: &[u8], name: &[u8]) -> Result<(Fh, Attr), u32> {
        let results = self.call(3, Args::new().opaque(dir).opaque(name));
        let decoder = &mut Decoder::new(&results);
        match decoder.u32().unwrap() {
            0 => {
                let handle = decoder.opaque(64).unwrap().to_vec();
                let attr = post_op_attr(decoder).unwrap();
                assert!(post_op_attr(decoder).is_some(), "directory attributes");
                Ok((handle, attr))
            }
            status => Err(status),
        }
    }

    pub fn access(&mut self, fh: &[u8], wanted: u32) -> Result<u32, u32> {
        let results = self.call(4, Args::new().opaque(fh).u32(wanted));
        let decoder = &mut Decoder::new(&results);
        let status = decoder.u32().unwrap();
        post_op_attr(decoder);
        match status {
            0 => Ok(decoder.u32().unwrap()),
            status => Err(status),
        }
    }

    pub fn readlink(&mut self, fh: &[u8]) -> Result<Vec<u8>, u32> {
        let results = self.call(5, Args::new().opaque(fh));
        let decoder = &mut Decoder::new(&results);
        let status = decoder.u32().unwrap();
        post_op_attr(decoder);
        match status {
            0 => Ok(decoder.opaque(4096).unwrap().to_vec()),
            status => Err(status),
        }
    }

    /// READ: (data, eof).
    pub fn read(&mut self, fh: &[u8], offset: u64, count: u32) -> Result<(Vec<u8>, bool), u32> {
        let results = self.call(6, Args::new().opaque(fh).u64(offset).u32(count));
        let decoder = &mut Decoder::new(&results);
        let status = decoder.u32().unwrap();
        post_op_attr(decoder);
        match status {
            0 => {
                let count = decoder.u32().unwrap();
                let eof = decoder.bool().unwrap();
                let data = decoder.opaque(u32::MAX).unwrap().to_vec();
                assert_eq!(count as usize, data.len());
                decoder.finish().unwrap();
                Ok((data, eof))
            }
            status => Err(status),
        }
    }

    pub fn write(
        &mut self,
        fh: &[u8],
        offset: u64,
        data: &[u8],
        stable: u32,
    ) -> Result<Written, u32> {
        let args = Args::new()
            .opaque(fh)
            .u64(offset)
            .u32(data.len() as u32)
            .u32(stable)
            .opaque(data);
        let results = self.call(7, args);
        let decoder = &mut Decoder::new(&results);
        let status = decoder.u32().unwrap();
        wcc_data(decoder);
        match status {
            0 => Ok(Written {
                count: decoder.u32().unwrap(),
                committed: decoder.u32().unwrap(),
                verifier: decoder.fixed_array().unwrap(),
            }),
            status => Err(status),
        }
    }

    fn created(&mut self, procedure: u32, args: Args) -> Result<(Fh, Attr), u32> {
        let results = self.call(procedure, args);
        let decoder = &mut Decoder::new(&results);
        match decoder.u32().unwrap() {
            0 => {
                let handle = decoder
                    .optional(|decoder| decoder.opaque(64).map(<[u8]>::to_vec))
                    .unwrap()
                    .expect("handle of the new object");
                let attr = post_op_attr(decoder).expect("attributes of the new object");
                assert!(wcc_data(decoder).is_some());
                Ok((handle, attr))
            }
            status => {
                wcc_data(decoder);
                Err(status)
            }
        }
    }

    /// CREATE UNCHECKED (0) or GUARDED (1) with a mode.
    pub fn create(
        &mut self,
        dir: &[u8],
        name: &[u8],
        how: u32,
        mode: u32,
    ) -> Result<(Fh, Attr), u32> {
        let args = Args::new()
            .opaque(dir)
            .opaque(name)
            .u32(how)
            .sattr_mode(mode);
        self.created(8, args)
    }

    pub fn create_exclusive(
        &mut self,
        dir: &[u8],
        name: &[u8],
        verifier: [u8; 8],
    ) -> Result<(Fh, Attr), u32> {
        let args = Args::new().opaque(dir).opaque(name).u32(2).fixed(&verifier);
        self.created(8, args)
    }

    pub fn mkdir(&mut self, dir: &[u8], name: &[u8], mode: u32) -> Result<(Fh, Attr), u32> {
        self.created(9, Args::new().opaque(dir).opaque(name).sattr_mode(mode))
    }

    pub fn symlink(&mut self, dir: &[u8], name: &[u8], target: &[u8]) -> Result<(Fh, Attr), u32> {
        let args = Args::new()
            .opaque(dir)
            .opaque(name)
            .no_sattr()
            .opaque(target);
        self.created(10, args)
    }

    /// MKNOD of a FIFO (7), socket (6) or, with `device`, a character (4) / block (3) device.
    pub fn mknod(&mut self, dir: &[u8], name: &[u8], kind: u32) -> Result<(Fh, Attr), u32> {
        let mut args = Args::new().opaque(dir).opaque(name).u32(kind);
        if kind == 3 || kind == 4 {
            args = args.sattr_mode(0o600).u32(1).u32(3);
        } else if kind == 6 || kind == 7 {
            args = args.sattr_mode(0o600);
        }
        self.created(11, args)
    }

    fn dir_wcc(&mut self, procedure: u32, args: Args) -> Result<(), u32> {
        let results = self.call(procedure, args);
        let decoder = &mut Decoder::new(&results);
        let status = decoder.u32().unwrap();
        wcc_data(decoder);
        match status {
            0 => Ok(()),
            status => Err(status),
        }
    }

    pub fn remove(&mut self, dir: &[u8], name: &[u8]) -> Result<(), u32> {
        self.dir_wcc(12, Args::new().opaque(dir).opaque(name))
    }

    pub fn rmdir(&mut self, dir: &[u8], name: &[u8]) -> Result<(), u32> {
        self.dir_wcc(13, Args::new().opaque(dir).opaque(name))
    }

    pub fn rename(
        &mut self,
        from: &[u8],
        from_name: &[u8],
        to: &[u8],
        to_name: &[u8],
    ) -> Result<(), u32> {
        let args = Args::new()
            .opaque(from)
            .opaque(from_name)
            .opaque(to)
            .opaque(to_name);
        let results = self.call(14, args);
        let decoder = &mut Decoder::new(&results);
        let status = decoder.u32().unwrap();
        wcc_data(decoder);
        wcc_data(decoder);
        decoder.finish().unwrap();
        match status {
            0 => Ok(()),
            status => Err(status),
        }
    }

    pub fn link(&mut self, file: &[u8], dir: &[u8], name: &[u8]) -> Result<Attr, u32> {
        let results = self.call(15, Args::new().opaque(file).opaque(dir).opaque(name));
        let decoder = &mut Decoder::new(&results);
        let status = decoder.u32().unwrap();
        let attr = post_op_attr(decoder);
        wcc_data(decoder);
        match status {
            0 => Ok(attr.unwrap()),
            status => Err(status),
        }
    }

    /// One READDIR (plus = false) or READDIRPLUS call: (entries, eof).
    pub fn readdir_once(
        &mut self,
        dir: &[u8],
        cookie: u64,
        count: u32,
        plus: bool,
    ) -> Result<(Vec<Entry>, bool), u32> {
        let args = if plus {
            Args::new()
                .opaque(dir)
                .u64(cookie)
                .fixed(&[0; 8])
                .u32(count)
                .u32(count)
        } else {
            Args::new()
                .opaque(dir)
                .u64(cookie)
                .fixed(&[0; 8])
                .u32(count)
        };
        let results = self.call(if plus { 17 } else { 16 }, args);
        assert!(
            results.len() <= count as usize,
            "reply over the client's count"
        );
        let decoder = &mut Decoder::new(&results);
        let status = decoder.u32().unwrap();
        post_op_attr(decoder);
        if status != 0 {
            return Err(status);
        }
        let _verifier: [u8; 8] = decoder.fixed_array().unwrap();
        let mut entries = Vec::new();
        while decoder.bool().unwrap() {
            let fileid = decoder.u64().unwrap();
            let name = decoder.opaque(255).unwrap().to_vec();
            let cookie = decoder.u64().unwrap();
            let (attr, handle) = if plus {
                let attr = post_op_attr(decoder);
                let handle = decoder
                    .optional(|decoder| decoder.opaque(64).map(<[u8]>::to_vec))
                    .unwrap();
                (attr, handle)
            } else {
                (None, None)
            };
            entries.push(Entry {
                fileid,
                name,
                cookie,
                attr,
                handle,
            });
        }
        let eof = decoder.bool().unwrap();
        decoder.finish().unwrap();
        Ok((entries, eof))
    }

    /// A whole directory listing, `count` bytes per call.
    pub fn readdir_all(&mut self, dir: &[u8], count: u32, plus: bool) -> Vec<Entry> {
        let mut all = Vec::new();
        let mut cookie = 0;
        for _ in 0..100_000 {
            let (entries, eof) = self.readdir_once(dir, cookie, count, plus).unwrap();
            if let Some(last) = entries.last() {
                cookie = last.cookie;
            }
            all.extend(entries);
            if eof {
                return all;
            }
        }
        panic!("listing never ended");
    }

    pub fn fsstat(&mut self, fh: &[u8]) -> Result<[u64; 6], u32> {
        let results = self.call(18, Args::new().opaque(fh));
        let decoder = &mut Decoder::new(&results);
        let status = decoder.u32().unwrap();
        post_op_attr(decoder);
        match status {
            0 => {
                let mut values = [0; 6];
                for value in &mut values {
                    *value = decoder.u64().unwrap();
                }
                decoder.u32().unwrap();
                Ok(values)
            }
            status => Err(status),
        }
    }

    /// FSINFO: (rtmax, wtmax, maxfilesize, properties).
    pub fn fsinfo(&mut self, fh: &[u8]) -> Result<(u32, u32, u64, u32), u32> {
        let results = self.call(19, Args::new().opaque(fh));
        let decoder = &mut Decoder::new(&results);
        let status = decoder.u32().unwrap();
        post_op_attr(decoder);
        match status {
            0 => {
                let rtmax = decoder.u32().unwrap();
                let _rtpref = decoder.u32().unwrap();
                let _rtmult = decoder.u32().unwrap();
                let wtmax = decoder.u32().unwrap();
                let _wtpref = decoder.u32().unwrap();
                let _wtmult = decoder.u32().unwrap();
                let _dtpref = decoder.u32().unwrap();
                let maxfilesize = decoder.u64().unwrap();
                let _delta = (decoder.u32().unwrap(), decoder.u32().unwrap());
                let properties = decoder.u32().unwrap();
                decoder.finish().unwrap();
                Ok((rtmax, wtmax, maxfilesize, properties))
            }
            status => Err(status),
        }
    }

    /// PATHCONF: (linkmax, name_max).
    pub fn pathconf(&mut self, fh: &[u8]) -> Result<(u32, u32), u32> {
        let results = self.call(20, Args::new().opaque(fh));
        let decoder = &mut Decoder::new(&results);
        let status = decoder.u32().unwrap();
        post_op_attr(decoder);
        match status {
            0 => {
                let linkmax = decoder.u32().unwrap();
                let name_max = decoder.u32().unwrap();
                for _ in 0..4 {
                    decoder.bool().unwrap();
                }
                decoder.finish().unwrap();
                Ok((linkmax, name_max))
            }
            status => Err(status),
        }
    }

    pub fn commit(&mut self, fh: &[u8]) -> Result<[u8; 8], u32> {
        let results = self.call(21, Args::new().opaque(fh).u64(0).u32(0));
        let decoder = &mut Decoder::new(&results);
        let status = decoder.u32().unwrap();
        wcc_data(decoder);
        match status {
            0 => Ok(decoder.fixed_array().unwrap()),
            status => Err(status),
        }
    }
}

/// portmap v2 GETPORT.
pub fn getport(rpc: &mut RpcClient, program: u32, version: u32, protocol: u32) -> u32 {
    let args = Args::new().u32(program).u32(version).u32(protocol).u32(0);
    let Outcome::Results(results) = rpc.call(PORTMAP_PROGRAM, 2, 3, &Credential::None, &args.0)
    else {
        panic!("GETPORT rejected");
    };
    Decoder::new(&results).u32().unwrap()
}

/// A server exporting the volume's `data` directory (made here) read-write to everyone, without
/// squashing, as `/data`; the volume goes with it.
#[allow(dead_code, reason = "not every test file uses it")]
pub fn data_server() -> (tempfile::TempDir, TestServer) {
    let volume = volume();
    make_dir(volume.path().join("data"));
    let server = TestServer::start(
        volume.path(),
        &[TestExport::rw("data", "data", Squash::None)],
    );
    (volume, server)
}

/// A temporary volume directory on the machine's disk (not tmpfs, which has no stable handles
/// across its remounts, though it has them within one).
pub fn volume() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("vipgate-nfs-test")
        .tempdir_in(std::env::temp_dir())
        .unwrap()
}

/// A directory (and its parents) with mode 0755.
pub fn make_dir(path: PathBuf) -> PathBuf {
    std::fs::create_dir_all(&path).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}
