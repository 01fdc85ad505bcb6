//! Sequential NFSv3 READs of one size, one call at a time, against any server: the client of
//! `tests/bench/nfs-read-sizes` (BENCHMARKS.md, "nfs"), which runs it for several sizes against
//! the gateway with its READs spliced and copied, to choose `nfs3::SPLICE_MIN_READ`. Mounts
//! `EXPORT`, looks `FILE` up, reads it from the start in `SIZE`-byte READs (wrapping at its end)
//! until `COUNT` READs are done, checks every reply's status and count, and prints
//! `SIZE COUNT SECONDS`.
//!
//! ```text
//! read_bench SERVER:PORT EXPORT FILE SIZE COUNT
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use gateway::record::{DEFAULT_MAX_RECORD, RecordDecoder, encode_record};
use gateway::rpc::{
    AcceptStatus, AuthSys, Call, Credential, MOUNT_PROGRAM, NFS_PROGRAM, OpaqueAuth, ReplyBody,
    decode_reply,
};
use gateway::xdr::{Decoder, Encoder};

type Error = Box<dyn std::error::Error>;

const MNT: u32 = 1;
const GETATTR: u32 = 1;
const LOOKUP: u32 = 3;
const READ: u32 = 6;

struct Client {
    stream: TcpStream,
    decoder: RecordDecoder,
    buffer: Vec<u8>,
    xid: u32,
}

impl Client {
    fn call(&mut self, program: u32, procedure: u32, args: &[u8]) -> Result<Vec<u8>, Error> {
        self.xid = self.xid.wrapping_add(1);
        let mut message = Vec::with_capacity(128 + args.len());
        Call {
            xid: self.xid,
            program,
            version: 3,
            procedure,
            credential: Credential::Sys(AuthSys {
                stamp: 1,
                machinename: b"read-bench".to_vec(),
                uid: 0,
                gid: 0,
                gids: Vec::new(),
            }),
            verifier: OpaqueAuth::none(),
        }
        .encode(&mut Encoder::new(&mut message))?;
        message.extend_from_slice(args);
        let mut framed = Vec::with_capacity(message.len() + 4);
        encode_record(&message, DEFAULT_MAX_RECORD, &mut framed);
        self.stream.write_all(&framed)?;
        loop {
            let length = self.stream.read(&mut self.buffer)?;
            if length == 0 {
                return Err("the server closed the connection".into());
            }
            let mut input = &self.buffer[..length];
            if let Some(record) = self.decoder.decode(&mut input)? {
                if !input.is_empty() {
                    return Err("bytes after the reply".into());
                }
                let (header, offset) = decode_reply(&record)?;
                if header.xid != self.xid {
                    return Err(format!("reply to {}, not {}", header.xid, self.xid).into());
                }
                return match header.body {
                    ReplyBody::Accepted {
                        status: AcceptStatus::Success,
                        ..
                    } => Ok(record[offset..].to_vec()),
                    body => Err(format!("call refused: {body:?}").into()),
                };
            }
        }
    }
}

fn opaque(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    Encoder::new(&mut out).opaque(bytes, u32::MAX)?;
    Ok(out)
}

fn status_ok(results: &[u8], what: &str) -> Result<(), Error> {
    match Decoder::new(results).u32()? {
        0 => Ok(()),
        status => Err(format!("{what}: status {status}").into()),
    }
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, export, file, size, count] = args.as_slice() else {
        return Err("usage: read_bench SERVER:PORT EXPORT FILE SIZE COUNT".into());
    };
    let server: SocketAddr = server.parse()?;
    let size: u32 = size.parse()?;
    let count: usize = count.parse()?;
    let stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut client = Client {
        stream,
        decoder: RecordDecoder::new(DEFAULT_MAX_RECORD + 4096),
        buffer: vec![0; 2 << 20],
        xid: 0,
    };
    let mounted = client.call(MOUNT_PROGRAM, MNT, &opaque(export.as_bytes())?)?;
    status_ok(&mounted, "MNT")?;
    let root = Decoder::new(&mounted[4..]).opaque(64)?.to_vec();
    let mut lookup = opaque(&root)?;
    lookup.extend(opaque(file.as_bytes())?);
    let found = client.call(NFS_PROGRAM, LOOKUP, &lookup)?;
    status_ok(&found, "LOOKUP")?;
    let handle = Decoder::new(&found[4..]).opaque(64)?.to_vec();
    let attributes = client.call(NFS_PROGRAM, GETATTR, &opaque(&handle)?)?;
    status_ok(&attributes, "GETATTR")?;
    // fattr3: type, mode, nlink, uid, gid (5 words), then size.
    let file_size = Decoder::new(&attributes[4 + 20..]).u64()?;
    let mut offset = 0u64;
    let started = Instant::now();
    for _ in 0..count {
        if offset + u64::from(size) > file_size {
            offset = 0;
        }
        let mut args = opaque(&handle)?;
        args.extend_from_slice(&offset.to_be_bytes());
        args.extend_from_slice(&size.to_be_bytes());
        let results = client.call(NFS_PROGRAM, READ, &args)?;
        let decoder = &mut Decoder::new(&results);
        if decoder.u32()? != 0 {
            return Err(format!("READ at {offset}: an error status").into());
        }
        if decoder.bool()? {
            decoder.fixed_opaque(84)?;
        }
        let read = decoder.u32()?;
        decoder.bool()?;
        let data = decoder.opaque(u32::MAX)?;
        if read != size || data.len() != size as usize {
            return Err(format!("READ at {offset}: {read} bytes, not {size}").into());
        }
        offset += u64::from(size);
    }
    println!("{size} {count} {:.6}", started.elapsed().as_secs_f64());
    Ok(())
}
