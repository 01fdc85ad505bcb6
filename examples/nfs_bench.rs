//! The client program of `tests/bench/nfs` (BENCHMARKS.md, "NFS"): the metadata rows — create,
//! lookup, getattr, READDIRPLUS and READDIR listings and remove of N files in a fresh directory —
//! against any
//! NFSv3 server, over one TCP connection with a chosen number of calls in flight, and the same
//! operations on a local directory as the physical limit. Prints one line per phase:
//! `PHASE OPERATIONS SECONDS`.
//!
//! Listings run twice: right after the files were created (`readdirplus`: every file is less
//! than a second old), and again once every file is `--settle-ms` old (`readdirplus-settled`),
//! which is what most listings of a real directory see. On a shared volume the gateway caches
//! handles only for files born at least a second before, on a local file system once the
//! kernel's timestamp clock has passed their birth (`gateway::handle_cache`), so the first is
//! mostly its uncached path there and the second its cached one. Every listed handle must be the
//! one CREATE returned.
//! Then the same number of plain READDIR listings (`readdir`: names, cookies and file ids, what a
//! client's plain `ls` uses); every listed file id must be the one CREATE's attributes gave.
//!
//! The protocol is spoken with the gateway's own wire layer (`xdr`, `record`, `rpc`), with the
//! arguments and results of RFC 1813 encoded and decoded here, so both servers get exactly the
//! same bytes. Every reply's status is checked: a benchmark of failing calls measures nothing.
//!
//!     nfs_bench meta --server 192.0.2.1 --nfs-port 2049 --mount-port 2049 --export /data \
//!         --dir run1 --files 2000 --window 1 --listings 10
//!     nfs_bench local --dir /srv/volume/data/run1 --files 2000 --listings 10
//!     nfs_bench remove --server 192.0.2.1 --nfs-port 2049 --mount-port 2049 --export /data big

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::{Parser, Subcommand};
use gateway::record::{DEFAULT_MAX_RECORD, RecordDecoder, encode_record};
use gateway::rpc::{
    AcceptStatus, AuthSys, Call, Credential, MOUNT_PROGRAM, NFS_PROGRAM, OpaqueAuth, ReplyBody,
    decode_reply,
};
use gateway::xdr::{Decoder, Encoder};

/// NFSv3 procedure numbers (RFC 1813).
const GETATTR: u32 = 1;
const LOOKUP: u32 = 3;
const CREATE: u32 = 8;
const MKDIR: u32 = 9;
const REMOVE: u32 = 12;
const RMDIR: u32 = 13;
const READDIR: u32 = 16;
const READDIRPLUS: u32 = 17;
/// MOUNT v3 MNT.
const MNT: u32 = 1;
/// NFSv3 handles are at most 64 bytes.
const FHSIZE: u32 = 64;
/// READDIRPLUS sizes as the Linux client asks them: dircount is an eighth of maxcount. The
/// client's directory read size grows to the server's FSINFO `dtpref` (vipgate: 64 KiB), capped by
/// `rsize`; both servers get the same sizes.
const READDIR_MAXCOUNT: u32 = 65536;
const READDIR_DIRCOUNT: u32 = READDIR_MAXCOUNT / 8;
/// READDIR's `count`: the Linux client asks the same directory read size as for READDIRPLUS's
/// maxcount.
const READDIR_COUNT: u32 = READDIR_MAXCOUNT;

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct Server {
    /// The server's address.
    #[arg(long)]
    server: IpAddr,
    /// TCP port of NFSv3.
    #[arg(long, default_value_t = 2049)]
    nfs_port: u16,
    /// TCP port of MOUNT v3.
    #[arg(long, default_value_t = 2049)]
    mount_port: u16,
    /// The path to mount.
    #[arg(long)]
    export: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The metadata phases against an NFSv3 server, in a new directory of the export's root.
    Meta {
        #[command(flatten)]
        server: Server,
        /// Name of the directory to create for the run (it must not exist; it is removed at the end).
        #[arg(long)]
        dir: String,
        /// Files to create, look up, list and remove.
        #[arg(long, default_value_t = 2000)]
        files: usize,
        /// Calls in flight on the connection (1: each call waits for the previous reply).
        #[arg(long, default_value_t = 1)]
        window: usize,
        /// Complete listings of the directory in each readdir phase.
        #[arg(long, default_value_t = 10)]
        listings: usize,
        /// How old every file is before the settled listings (0: no settled listings).
        #[arg(long, default_value_t = 1500)]
        settle_ms: u64,
    },
    /// The same phases on a local directory (created, and removed at the end).
    Local {
        /// The directory to create for the run.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 2000)]
        files: usize,
        #[arg(long, default_value_t = 10)]
        listings: usize,
        #[arg(long, default_value_t = 1500)]
        settle_ms: u64,
    },
    /// Lists an existing directory of the export's root with READDIRPLUS, or READDIR with
    /// `--plain` (for the listing CPU rows and profiling).
    List {
        #[command(flatten)]
        server: Server,
        #[arg(long)]
        dir: String,
        #[arg(long, default_value_t = 10)]
        listings: usize,
        /// Lists with READDIR instead of READDIRPLUS.
        #[arg(long)]
        plain: bool,
    },
    /// Removes files from the export's root directory.
    Remove {
        #[command(flatten)]
        server: Server,
        /// File names in the export's root.
        names: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Meta {
            server,
            dir,
            files,
            window,
            listings,
            settle_ms,
        } => meta(
            &server,
            &dir,
            files,
            window.max(1),
            listings,
            Duration::from_millis(settle_ms),
        ),
        Command::Local {
            dir,
            files,
            listings,
            settle_ms,
        } => local(&dir, files, listings, Duration::from_millis(settle_ms)),
        Command::List {
            server,
            dir,
            listings,
            plain,
        } => {
            let root = mount(&server)?;
            let mut nfs = Connection::connect(SocketAddr::new(server.server, server.nfs_port))?;
            let reply = nfs.call(NFS_PROGRAM, 3, LOOKUP, &diropargs(&root, &dir)?)?;
            let directory = status_ok(&reply, "LOOKUP", &dir)?.opaque(FHSIZE)?.to_vec();
            let started = Instant::now();
            let mut names = 0;
            for _ in 0..listings {
                names += if plain {
                    list_plain(&mut nfs, &directory, None)?
                } else {
                    list_plus(&mut nfs, &directory, None)?
                };
            }
            let phase = if plain { "readdir" } else { "readdirplus" };
            report(phase, names, started.elapsed());
            Ok(())
        }
        Command::Remove { server, names } => {
            let root = mount(&server)?;
            let mut nfs = Connection::connect(SocketAddr::new(server.server, server.nfs_port))?;
            for name in &names {
                let reply = nfs.call(NFS_PROGRAM, 3, REMOVE, &diropargs(&root, name)?)?;
                check_status(&reply, "REMOVE", name)?;
            }
            Ok(())
        }
    }
}

fn file_name(index: usize) -> String {
    format!("f{index:06}")
}

fn report(phase: &str, operations: usize, elapsed: Duration) {
    println!("{phase} {operations} {:.6}", elapsed.as_secs_f64());
}

fn meta(
    server: &Server,
    dir: &str,
    files: usize,
    window: usize,
    listings: usize,
    settle: Duration,
) -> anyhow::Result<()> {
    let root = mount(server)?;
    let mut nfs = Connection::connect(SocketAddr::new(server.server, server.nfs_port))?;

    let mut args = diropargs(&root, dir)?;
    sattr_mode(&mut args, 0o755);
    let reply = nfs.call(NFS_PROGRAM, 3, MKDIR, &args)?;
    let directory = created_handle(&reply, "MKDIR", dir)?;

    let mut handles = vec![Vec::new(); files];
    let mut fileids = vec![None; files];
    let started = Instant::now();
    nfs.pipeline(
        files,
        window,
        |index| {
            let mut args = diropargs(&directory, &file_name(index))?;
            args.extend_from_slice(&0u32.to_be_bytes()); // UNCHECKED
            sattr_mode(&mut args, 0o644);
            Ok((CREATE, args))
        },
        |index, reply| {
            let decoder = &mut status_ok(reply, "CREATE", &file_name(index))?;
            handles[index] = post_op_fh(decoder, "CREATE", &file_name(index))?;
            fileids[index] = post_op_fileid(decoder)?;
            Ok(())
        },
    )?;
    report("create", files, started.elapsed());
    let created = Instant::now();

    let started = Instant::now();
    nfs.pipeline(
        files,
        window,
        |index| Ok((LOOKUP, diropargs(&directory, &file_name(index))?)),
        |index, reply| {
            let decoder = &mut status_ok(reply, "LOOKUP", &file_name(index))?;
            let handle = decoder.opaque(FHSIZE)?;
            ensure!(
                handle == handles[index].as_slice(),
                "LOOKUP of {} returned another handle than CREATE",
                file_name(index)
            );
            ensure!(
                decoder.bool()?,
                "LOOKUP of {} without attributes",
                file_name(index)
            );
            Ok(())
        },
    )?;
    report("lookup", files, started.elapsed());

    let started = Instant::now();
    nfs.pipeline(
        files,
        window,
        |index| {
            let mut args = Vec::new();
            Encoder::new(&mut args).opaque(&handles[index], FHSIZE)?;
            Ok((GETATTR, args))
        },
        |index, reply| {
            status_ok(reply, "GETATTR", &file_name(index))?;
            Ok(())
        },
    )?;
    report("getattr", files, started.elapsed());

    for (phase, wait) in [("readdirplus", None), ("readdirplus-settled", Some(settle))] {
        if let Some(wait) = wait {
            if wait.is_zero() || listings == 0 {
                continue;
            }
            std::thread::sleep((created + wait).saturating_duration_since(Instant::now()));
        }
        let started = Instant::now();
        for _ in 0..listings {
            let names = list_plus(&mut nfs, &directory, Some(&handles))?;
            ensure!(
                names == files,
                "READDIRPLUS of {dir} listed {names} files, not {files}"
            );
        }
        report(phase, files * listings, started.elapsed());
    }

    let started = Instant::now();
    for _ in 0..listings {
        let names = list_plain(&mut nfs, &directory, Some(&fileids))?;
        ensure!(
            names == files,
            "READDIR of {dir} listed {names} files, not {files}"
        );
    }
    report("readdir", files * listings, started.elapsed());

    let started = Instant::now();
    nfs.pipeline(
        files,
        window,
        |index| Ok((REMOVE, diropargs(&directory, &file_name(index))?)),
        |index, reply| check_status(reply, "REMOVE", &file_name(index)),
    )?;
    report("remove", files, started.elapsed());

    let reply = nfs.call(NFS_PROGRAM, 3, RMDIR, &diropargs(&root, dir)?)?;
    check_status(&reply, "RMDIR", dir)
}

/// Lists a directory completely with READDIRPLUS; returns the number of names other than `.`
/// and `..`, each of which came with attributes and the handle CREATE returned for it
/// (`handles[index]` for [`file_name`]`(index)`), when `handles` are given.
fn list_plus(
    nfs: &mut Connection,
    directory: &[u8],
    handles: Option<&[Vec<u8>]>,
) -> anyhow::Result<usize> {
    let mut cookie = 0u64;
    let mut verifier = [0u8; 8];
    let mut names = 0;
    for _ in 0..1_000_000 {
        let mut args = Vec::new();
        let mut encoder = Encoder::new(&mut args);
        encoder.opaque(directory, FHSIZE)?;
        encoder.u64(cookie);
        encoder.fixed_opaque(&verifier);
        encoder.u32(READDIR_DIRCOUNT);
        encoder.u32(READDIR_MAXCOUNT);
        let reply = nfs.call(NFS_PROGRAM, 3, READDIRPLUS, &args)?;
        let decoder = &mut Decoder::new(&reply);
        let status = decoder.u32()?;
        skip_post_op_attr(decoder)?;
        if status != 0 {
            bail!("READDIRPLUS failed with NFS status {status}");
        }
        verifier = decoder.fixed_array()?;
        let mut entries = 0;
        while decoder.bool()? {
            let _fileid = decoder.u64()?;
            let name = decoder.opaque(255)?;
            cookie = decoder.u64()?;
            let has_attributes = decoder.bool()?;
            if has_attributes {
                decoder.fixed_opaque(FATTR3_BYTES)?;
            }
            let has_handle = decoder.bool()?;
            let handle = if has_handle {
                decoder.opaque(FHSIZE)?
            } else {
                &[]
            };
            entries += 1;
            if name != b"." && name != b".." {
                let shown = || String::from_utf8_lossy(name);
                ensure!(
                    has_attributes && has_handle,
                    "READDIRPLUS entry {} without attributes or handle",
                    shown()
                );
                let Some(handles) = handles else {
                    names += 1;
                    continue;
                };
                let created = name
                    .strip_prefix(b"f")
                    .and_then(|digits| std::str::from_utf8(digits).ok())
                    .and_then(|digits| digits.parse::<usize>().ok())
                    .and_then(|index| handles.get(index));
                ensure!(
                    created.map(Vec::as_slice) == Some(handle),
                    "READDIRPLUS listed {} with another handle than CREATE returned",
                    shown()
                );
                names += 1;
            }
        }
        if decoder.bool()? {
            return Ok(names);
        }
        ensure!(entries > 0, "READDIRPLUS returned no entry and no end");
    }
    bail!("READDIRPLUS never reached the end of the directory")
}

/// Lists a directory completely with READDIR; returns the number of names other than `.` and
/// `..`. With `fileids` (`fileids[index]` for [`file_name`]`(index)`, as CREATE's attributes gave
/// it, `None` when CREATE returned no attributes), every name must be one of those files, listed
/// once, with its file id.
fn list_plain(
    nfs: &mut Connection,
    directory: &[u8],
    fileids: Option<&[Option<u64>]>,
) -> anyhow::Result<usize> {
    let mut cookie = 0u64;
    let mut verifier = [0u8; 8];
    let mut names = 0;
    let mut seen = vec![false; fileids.map_or(0, <[_]>::len)];
    for _ in 0..1_000_000 {
        let mut args = Vec::new();
        let mut encoder = Encoder::new(&mut args);
        encoder.opaque(directory, FHSIZE)?;
        encoder.u64(cookie);
        encoder.fixed_opaque(&verifier);
        encoder.u32(READDIR_COUNT);
        let reply = nfs.call(NFS_PROGRAM, 3, READDIR, &args)?;
        let decoder = &mut Decoder::new(&reply);
        let status = decoder.u32()?;
        skip_post_op_attr(decoder)?;
        if status != 0 {
            bail!("READDIR failed with NFS status {status}");
        }
        verifier = decoder.fixed_array()?;
        let mut entries = 0;
        while decoder.bool()? {
            let fileid = decoder.u64()?;
            let name = decoder.opaque(255)?;
            cookie = decoder.u64()?;
            entries += 1;
            if name == b"." || name == b".." {
                continue;
            }
            names += 1;
            let Some(fileids) = fileids else {
                continue;
            };
            let shown = || String::from_utf8_lossy(name);
            let index = name
                .strip_prefix(b"f")
                .and_then(|digits| std::str::from_utf8(digits).ok())
                .and_then(|digits| digits.parse::<usize>().ok())
                .filter(|index| *index < fileids.len());
            let Some(index) = index else {
                bail!("READDIR listed {}, which was not created", shown());
            };
            ensure!(!seen[index], "READDIR listed {} twice", shown());
            seen[index] = true;
            ensure!(
                fileids[index].is_none_or(|created| created == fileid),
                "READDIR listed {} with another file id than CREATE returned",
                shown()
            );
        }
        if decoder.bool()? {
            return Ok(names);
        }
        ensure!(entries > 0, "READDIR returned no entry and no end");
    }
    bail!("READDIR never reached the end of the directory")
}

fn local(
    dir: &std::path::Path,
    files: usize,
    listings: usize,
    settle: Duration,
) -> anyhow::Result<()> {
    std::fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let paths: Vec<PathBuf> = (0..files).map(|index| dir.join(file_name(index))).collect();

    let started = Instant::now();
    for path in &paths {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
    }
    report("create", files, started.elapsed());
    let created = Instant::now();

    let started = Instant::now();
    for path in &paths {
        std::fs::symlink_metadata(path)
            .with_context(|| format!("cannot stat {}", path.display()))?;
    }
    report("lookup", files, started.elapsed());

    for (phase, wait) in [("readdirplus", None), ("readdirplus-settled", Some(settle))] {
        if let Some(wait) = wait {
            if wait.is_zero() || listings == 0 {
                continue;
            }
            std::thread::sleep((created + wait).saturating_duration_since(Instant::now()));
        }
        let started = Instant::now();
        for _ in 0..listings {
            let mut names = 0;
            for entry in std::fs::read_dir(dir)? {
                entry?.metadata()?;
                names += 1;
            }
            ensure!(names == files, "{} lists {names} files", dir.display());
        }
        report(phase, files * listings, started.elapsed());
    }

    // READDIR: names and file ids, no attributes.
    let started = Instant::now();
    for _ in 0..listings {
        let mut names = 0;
        for entry in std::fs::read_dir(dir)? {
            entry?;
            names += 1;
        }
        ensure!(names == files, "{} lists {names} files", dir.display());
    }
    report("readdir", files * listings, started.elapsed());

    let started = Instant::now();
    for path in &paths {
        std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    report("remove", files, started.elapsed());
    std::fs::remove_dir(dir).with_context(|| format!("cannot remove {}", dir.display()))
}

/// MNT of the export: its root handle.
fn mount(server: &Server) -> anyhow::Result<Vec<u8>> {
    let mut connection = Connection::connect(SocketAddr::new(server.server, server.mount_port))?;
    let mut args = Vec::new();
    Encoder::new(&mut args).string(&server.export, 1024)?;
    let reply = connection.call(MOUNT_PROGRAM, 3, MNT, &args)?;
    let decoder = &mut Decoder::new(&reply);
    let status = decoder.u32()?;
    ensure!(
        status == 0,
        "MNT of {} failed with status {status}",
        server.export
    );
    Ok(decoder.opaque(FHSIZE)?.to_vec())
}

/// `diropargs3`: a directory handle and a name.
fn diropargs(directory: &[u8], name: &str) -> anyhow::Result<Vec<u8>> {
    let mut args = Vec::new();
    let mut encoder = Encoder::new(&mut args);
    encoder.opaque(directory, FHSIZE)?;
    encoder.string(name, 255)?;
    Ok(args)
}

/// Appends a `sattr3` that sets only the mode.
fn sattr_mode(args: &mut Vec<u8>, mode: u32) {
    let mut encoder = Encoder::new(args);
    encoder.u32(1);
    encoder.u32(mode);
    for _ in 0..5 {
        encoder.u32(0); // uid, gid, size: not set; atime, mtime: DONT_CHANGE
    }
}

/// The size of a `fattr3`.
const FATTR3_BYTES: usize = 84;

fn skip_post_op_attr(decoder: &mut Decoder<'_>) -> anyhow::Result<()> {
    if decoder.bool()? {
        decoder.fixed_opaque(FATTR3_BYTES)?;
    }
    Ok(())
}

/// A decoder past an NFS3_OK status, or the error naming the call.
fn status_ok<'a>(reply: &'a [u8], procedure: &str, name: &str) -> anyhow::Result<Decoder<'a>> {
    let mut decoder = Decoder::new(reply);
    let status = decoder.u32()?;
    ensure!(
        status == 0,
        "{procedure} of {name} failed with NFS status {status}"
    );
    Ok(decoder)
}

fn check_status(reply: &[u8], procedure: &str, name: &str) -> anyhow::Result<()> {
    status_ok(reply, procedure, name).map(drop)
}

/// The handle in a CREATE or MKDIR result (`post_op_fh3`, which both servers fill in).
fn created_handle(reply: &[u8], procedure: &str, name: &str) -> anyhow::Result<Vec<u8>> {
    post_op_fh(&mut status_ok(reply, procedure, name)?, procedure, name)
}

/// A `post_op_fh3` that must be there.
fn post_op_fh(decoder: &mut Decoder<'_>, procedure: &str, name: &str) -> anyhow::Result<Vec<u8>> {
    ensure!(decoder.bool()?, "{procedure} of {name} returned no handle");
    Ok(decoder.opaque(FHSIZE)?.to_vec())
}

/// The file id in a `post_op_attr`, if the attributes are there.
fn post_op_fileid(decoder: &mut Decoder<'_>) -> anyhow::Result<Option<u64>> {
    if !decoder.bool()? {
        return Ok(None);
    }
    // type, mode, nlink, uid, gid (4 bytes each), size, used, rdev, fsid (8 each), then fileid.
    decoder.fixed_opaque(FATTR3_FILEID_OFFSET)?;
    let fileid = decoder.u64()?;
    decoder.fixed_opaque(FATTR3_BYTES - FATTR3_FILEID_OFFSET - 8)?;
    Ok(Some(fileid))
}

/// Where `fileid` sits in a `fattr3`.
const FATTR3_FILEID_OFFSET: usize = 52;

/// One ONC-RPC connection over TCP, AUTH_SYS as root, with any number of calls in flight.
struct Connection {
    stream: TcpStream,
    decoder: RecordDecoder,
    records: VecDeque<Vec<u8>>,
    buffer: Vec<u8>,
    credential: Credential,
    next_xid: u32,
}

impl Connection {
    fn connect(address: SocketAddr) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
            .with_context(|| format!("cannot connect to {address}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Connection {
            stream,
            decoder: RecordDecoder::new(DEFAULT_MAX_RECORD + 4096),
            records: VecDeque::new(),
            buffer: vec![0; 256 * 1024],
            credential: Credential::Sys(AuthSys {
                stamp: 1,
                machinename: b"nfs-bench".to_vec(),
                uid: 0,
                gid: 0,
                gids: Vec::new(),
            }),
            next_xid: 1,
        })
    }

    /// Sends a call; returns its xid.
    fn send(
        &mut self,
        program: u32,
        version: u32,
        procedure: u32,
        args: &[u8],
    ) -> anyhow::Result<u32> {
        let xid = self.next_xid;
        self.next_xid = self.next_xid.wrapping_add(1);
        let mut message = Vec::with_capacity(128 + args.len());
        Call {
            xid,
            program,
            version,
            procedure,
            credential: self.credential.clone(),
            verifier: OpaqueAuth::none(),
        }
        .encode(&mut Encoder::new(&mut message))?;
        message.extend_from_slice(args);
        let mut framed = Vec::with_capacity(message.len() + 4);
        encode_record(&message, DEFAULT_MAX_RECORD, &mut framed);
        self.stream
            .write_all(&framed)
            .context("cannot send a call")?;
        Ok(xid)
    }

    /// The next reply: its xid and the results of a successful call.
    fn receive(&mut self) -> anyhow::Result<(u32, Vec<u8>)> {
        while self.records.is_empty() {
            let length = self
                .stream
                .read(&mut self.buffer)
                .context("cannot read a reply")?;
            ensure!(length > 0, "the server closed the connection");
            let mut input = &self.buffer[..length];
            while let Some(record) = self.decoder.decode(&mut input)? {
                self.records.push_back(record);
            }
        }
        let Some(record) = self.records.pop_front() else {
            bail!("no reply");
        };
        let (header, offset) = decode_reply(&record)?;
        match header.body {
            ReplyBody::Accepted {
                status: AcceptStatus::Success,
                ..
            } => Ok((header.xid, record[offset..].to_vec())),
            body => bail!("call {} was not run: {body:?}", header.xid),
        }
    }

    fn call(
        &mut self,
        program: u32,
        version: u32,
        procedure: u32,
        args: &[u8],
    ) -> anyhow::Result<Vec<u8>> {
        let xid = self.send(program, version, procedure, args)?;
        let (reply_xid, results) = self.receive()?;
        ensure!(reply_xid == xid, "reply to call {reply_xid}, not {xid}");
        Ok(results)
    }

    /// Makes `count` NFSv3 calls with at most `window` in flight: `call(index)` gives the
    /// procedure and arguments of call `index`, `done(index, results)` checks its reply (replies
    /// may come in any order).
    fn pipeline(
        &mut self,
        count: usize,
        window: usize,
        mut call: impl FnMut(usize) -> anyhow::Result<(u32, Vec<u8>)>,
        mut done: impl FnMut(usize, &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let first_xid = self.next_xid;
        let mut sent = 0;
        let mut received = 0;
        while received < count {
            while sent < count && sent - received < window {
                let (procedure, args) = call(sent)?;
                self.send(NFS_PROGRAM, 3, procedure, &args)?;
                sent += 1;
            }
            let (xid, results) = self.receive()?;
            let index = xid.wrapping_sub(first_xid) as usize;
            ensure!(index < sent, "reply to call {xid}, which was not sent");
            done(index, &results)?;
            received += 1;
        }
        Ok(())
    }
}
