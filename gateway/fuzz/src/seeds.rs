//! The seed corpus: a valid call of every portmap/rpcbind, MOUNT and NFSv3 procedure (with
//! AUTH_SYS, AUTH_NONE and an unsupported flavor, and file handles sealed with
//! [`crate::handle_key`] so the handle check can pass), plus a few calls the gateway rejects,
//! encoded with the gateway's own XDR and RPC encoders. `examples/seeds.rs` writes them out and
//! frames them for the `stream` target; `tests/corpus.rs` checks they decode as intended.

use gateway::export::ExportId;
use gateway::handle::{FileHandle, KERNEL_SCHEME, ObjectId};
use gateway::rpc::{
    AuthSys, Call, Credential, MOUNT_PROGRAM, NFS_PROGRAM, OpaqueAuth, PORTMAP_PROGRAM, RPCSEC_GSS,
};
use gateway::xdr::Encoder;

const IPPROTO_TCP: u32 = 6;

/// The file handle every seed carries: sealed with [`crate::handle_key`] for export `data`,
/// with an object id shaped like ext4's (it names no real file).
pub fn placeholder_handle() -> Vec<u8> {
    let object = ObjectId::new(&[0x0c, 0, 0, 0, 1, 0, 0, 0, 0x2a, 0, 0, 0, 0x17, 0xd0, 0, 0])
        .unwrap_or_else(|| unreachable!("16 bytes fit an object id"));
    FileHandle {
        scheme: KERNEL_SCHEME,
        export: ExportId::of_name("data"),
        object,
    }
    .encode(&crate::handle_key())
}

/// The seeds of the `serve` target: the portmap, MOUNT and NFSv3 seeds with the placeholder
/// handle replaced by a marker (`serve`'s module documentation): of `file.txt` for procedures
/// on files, of `link` for READLINK, of the export root otherwise.
pub fn serve_records() -> Vec<(String, Vec<u8>)> {
    let mut placeholder = Vec::new();
    let _ = Encoder::new(&mut placeholder).opaque(&placeholder_handle(), 64);
    let on_files = [
        "getattr", "setattr", "access", "-read", "write", "commit", "-link",
    ];
    records()
        .into_iter()
        .map(|(name, record)| {
            let object = if name.ends_with("readlink") {
                3
            } else if on_files.iter().any(|suffix| name.ends_with(suffix)) {
                2
            } else {
                0
            };
            let marker = crate::serve::marker(object);
            let mut out = Vec::with_capacity(record.len());
            let mut rest = &record[..];
            while !rest.is_empty() {
                if rest.starts_with(&placeholder) {
                    out.extend_from_slice(&marker);
                    rest = &rest[placeholder.len()..];
                } else {
                    out.push(rest[0]);
                    rest = &rest[1..];
                }
            }
            (name, out)
        })
        .collect()
}

/// XDR arguments, built item by item with the gateway's encoder.
#[derive(Default)]
struct Args(Vec<u8>);

impl Args {
    fn u32(mut self, value: u32) -> Self {
        Encoder::new(&mut self.0).u32(value);
        self
    }

    fn u64(mut self, value: u64) -> Self {
        Encoder::new(&mut self.0).u64(value);
        self
    }

    fn opaque(mut self, bytes: &[u8]) -> Self {
        if Encoder::new(&mut self.0).opaque(bytes, u32::MAX).is_err() {
            unreachable!("no seed is over 4 GiB");
        }
        self
    }

    fn fixed(mut self, bytes: &[u8]) -> Self {
        Encoder::new(&mut self.0).fixed_opaque(bytes);
        self
    }

    fn handle(self) -> Self {
        self.opaque(&placeholder_handle())
    }
    fn dirop(self, name: &[u8]) -> Self {
        self.handle().opaque(name)
    }

    /// `sattr3`: mode 0644, uid and gid kept, size 0, atime = server time, mtime = a time.
    fn sattr(self) -> Self {
        self.u32(1)
            .u32(0o644)
            .u32(0)
            .u32(0)
            .u32(1)
            .u64(0)
            .u32(1)
            .u32(2)
            .u32(1_700_000_000)
            .u32(5)
    }

    /// An rpcbind `rpcb`.
    fn rpcb(self, program: u32, version: u32, netid: &[u8], address: &[u8]) -> Self {
        self.u32(program)
            .u32(version)
            .opaque(netid)
            .opaque(address)
            .opaque(b"superuser")
    }
}

fn auth_sys() -> Credential {
    Credential::Sys(AuthSys {
        stamp: 0x65f0_0001,
        machinename: b"client1".to_vec(),
        uid: 1000,
        gid: 1000,
        gids: vec![1000, 27, 100],
    })
}

fn record(
    program: u32,
    version: u32,
    procedure: u32,
    credential: Credential,
    args: &Args,
) -> Vec<u8> {
    let call = Call {
        xid: 0x5b1d_3c00 ^ (program << 8) ^ procedure,
        program,
        version,
        procedure,
        credential,
        verifier: OpaqueAuth::none(),
    };
    let mut record = Vec::new();
    if call.encode(&mut Encoder::new(&mut record)).is_err() {
        unreachable!("the seeds' credentials are within bounds");
    }
    record.extend_from_slice(&args.0);
    record
}

/// Every seed record, with a file name.
pub fn records() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut add = |name: &str, program, version, procedure, args: Args| {
        seeds.push((
            name.to_owned(),
            record(program, version, procedure, auth_sys(), &args),
        ));
    };
    let nfs3: Vec<(u32, &str, Args)> = vec![
        (0, "null", Args::default()),
        (1, "getattr", Args::default().handle()),
        (
            2,
            "setattr",
            Args::default()
                .handle()
                .sattr()
                .u32(1)
                .u32(1_700_000_000)
                .u32(0),
        ),
        (3, "lookup", Args::default().dirop(b"file.txt")),
        (4, "access", Args::default().handle().u32(0x3f)),
        (5, "readlink", Args::default().handle()),
        (6, "read", Args::default().handle().u64(4096).u32(32768)),
        (
            7,
            "write",
            Args::default()
                .handle()
                .u64(0)
                .u32(11)
                .u32(0)
                .opaque(b"hello world"),
        ),
        (8, "create", Args::default().dirop(b"new").u32(0).sattr()),
        (
            8,
            "create-guarded",
            Args::default().dirop(b"new").u32(1).sattr(),
        ),
        (
            8,
            "create-exclusive",
            Args::default().dirop(b"new").u32(2).fixed(&[7; 8]),
        ),
        (9, "mkdir", Args::default().dirop(b"dir").sattr()),
        (
            10,
            "symlink",
            Args::default().dirop(b"link").sattr().opaque(b"../target"),
        ),
        (
            11,
            "mknod-chr",
            Args::default().dirop(b"tty").u32(4).sattr().u32(4).u32(1),
        ),
        (
            11,
            "mknod-fifo",
            Args::default().dirop(b"fifo").u32(7).sattr(),
        ),
        (11, "mknod-reg", Args::default().dirop(b"reg").u32(1)),
        (12, "remove", Args::default().dirop(b"old")),
        (13, "rmdir", Args::default().dirop(b"dir")),
        (14, "rename", Args::default().dirop(b"a").dirop(b"b")),
        (15, "link", Args::default().handle().dirop(b"hard")),
        (
            16,
            "readdir",
            Args::default().handle().u64(0).fixed(&[0; 8]).u32(8192),
        ),
        (
            17,
            "readdirplus",
            Args::default()
                .handle()
                .u64(12)
                .fixed(&[1; 8])
                .u32(4096)
                .u32(32768),
        ),
        (18, "fsstat", Args::default().handle()),
        (19, "fsinfo", Args::default().handle()),
        (20, "pathconf", Args::default().handle()),
        (21, "commit", Args::default().handle().u64(0).u32(0)),
    ];
    for (procedure, name, args) in nfs3 {
        add(
            &format!("nfs3-{procedure:02}-{name}"),
            NFS_PROGRAM,
            3,
            procedure,
            args,
        );
    }

    let mount: Vec<(&str, Args)> = vec![
        ("null", Args::default()),
        ("mnt", Args::default().opaque(b"/data")),
        ("dump", Args::default()),
        ("umnt", Args::default().opaque(b"/data/sub")),
        ("umntall", Args::default()),
        ("export", Args::default()),
    ];
    for (procedure, (name, args)) in (0u32..).zip(mount) {
        add(
            &format!("mount-{procedure}-{name}"),
            MOUNT_PROGRAM,
            3,
            procedure,
            args,
        );
    }

    let mapping = || {
        Args::default()
            .u32(NFS_PROGRAM)
            .u32(3)
            .u32(IPPROTO_TCP)
            .u32(2049)
    };
    let portmap: Vec<(&str, Args)> = vec![
        ("null", Args::default()),
        ("set", mapping()),
        ("unset", mapping()),
        (
            "getport",
            Args::default()
                .u32(MOUNT_PROGRAM)
                .u32(3)
                .u32(IPPROTO_TCP)
                .u32(0),
        ),
        ("dump", Args::default()),
        (
            "callit",
            Args::default().u32(NFS_PROGRAM).u32(3).u32(0).opaque(b""),
        ),
    ];
    for (procedure, (name, args)) in (0u32..).zip(portmap) {
        add(
            &format!("portmap2-{procedure}-{name}"),
            PORTMAP_PROGRAM,
            2,
            procedure,
            args,
        );
    }
    for version in [3, 4] {
        let rpcb = || Args::default().rpcb(NFS_PROGRAM, 3, b"tcp", b"0.0.0.0.8.1");
        let mut rpcbind: Vec<(&str, Args)> = vec![
            ("null", Args::default()),
            ("set", rpcb()),
            ("unset", rpcb()),
            (
                "getaddr",
                Args::default().rpcb(MOUNT_PROGRAM, 3, b"tcp6", b""),
            ),
            ("dump", Args::default()),
            (
                "callit",
                Args::default().u32(NFS_PROGRAM).u32(3).u32(0).opaque(b""),
            ),
            ("gettime", Args::default()),
            ("uaddr2taddr", Args::default().opaque(b"192.0.2.1.8.1")),
            (
                "taddr2uaddr",
                Args::default().u32(16).opaque(&[0, 2, 8, 1, 192, 0, 2, 1]),
            ),
        ];
        if version == 4 {
            rpcbind.extend([
                (
                    "getversaddr",
                    Args::default().rpcb(NFS_PROGRAM, 3, b"tcp", b""),
                ),
                (
                    "indirect",
                    Args::default().u32(NFS_PROGRAM).u32(3).u32(0).opaque(b""),
                ),
                (
                    "getaddrlist",
                    Args::default().rpcb(NFS_PROGRAM, 3, b"udp", b""),
                ),
                ("getstat", Args::default()),
            ]);
        }
        for (procedure, (name, args)) in (0u32..).zip(rpcbind) {
            add(
                &format!("rpcbind{version}-{procedure:02}-{name}"),
                PORTMAP_PROGRAM,
                version,
                procedure,
                args,
            );
        }
    }

    // The other credential flavors, and calls the gateway turns away.
    seeds.push((
        "auth-none-nfs3-null".to_owned(),
        record(NFS_PROGRAM, 3, 0, Credential::None, &Args::default()),
    ));
    seeds.push((
        "auth-none-portmap-getport".to_owned(),
        record(PORTMAP_PROGRAM, 2, 3, Credential::None, &mapping()),
    ));
    let mut gss = Vec::new();
    let gss_call = Call {
        xid: 77,
        program: NFS_PROGRAM,
        version: 4,
        procedure: 1,
        credential: Credential::None,
        verifier: OpaqueAuth::none(),
    };
    let mut encoder = Encoder::new(&mut gss);
    for word in [gss_call.xid, 0, 2, NFS_PROGRAM, 4, 1, RPCSEC_GSS] {
        encoder.u32(word);
    }
    let _ = encoder.opaque(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 3], 400);
    encoder.u32(RPCSEC_GSS);
    let _ = encoder.opaque(&[0xab; 16], 400);
    seeds.push(("rpcsec-gss-nfs4-compound".to_owned(), gss));
    seeds.push((
        "nfs2-null".to_owned(),
        record(NFS_PROGRAM, 2, 0, auth_sys(), &Args::default()),
    ));
    seeds.push((
        "nlm4-null".to_owned(),
        record(100_021, 4, 0, auth_sys(), &Args::default()),
    ));
    let mut wrong_version = record(NFS_PROGRAM, 3, 0, auth_sys(), &Args::default());
    wrong_version[8..12].copy_from_slice(&3u32.to_be_bytes());
    seeds.push(("rpc-version-3".to_owned(), wrong_version));
    seeds
}
