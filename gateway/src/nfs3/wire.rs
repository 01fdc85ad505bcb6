//! NFSv3 wire types (RFC 1813) on our XDR layer: decoding every procedure's arguments into
//! [`Args`], borrowing names, paths, handles and WRITE data from the record (no copies, no
//! allocation), and encoding the structures results are built from.
//!
//! Bounds: handles are `opaque<64>` as the protocol says (longer is GARBAGE_ARGS). File names
//! and paths are `<>` in the `.x` file; we decode up to [`MAX_DECODED_NAME`] bytes so that a
//! name over 255 bytes reaches the handler and gets NFS3ERR_NAMETOOLONG, as clients expect,
//! while anything absurd is refused as GARBAGE_ARGS. WRITE data is bounded by the record size.

use crate::sys::{SetTime, Stat, Time};
use crate::xdr::{Decoder, Encoder, XdrError};

/// `NFS3_FHSIZE`.
pub const FHSIZE: u32 = 64;
/// Longest name or path we decode; see the module documentation.
pub const MAX_DECODED_NAME: u32 = 8192;
/// Longest file name we accept (NFS3ERR_NAMETOOLONG above).
pub const MAX_NAME: usize = 255;
/// Longest symbolic link target we accept (`PATH_MAX` less the NUL).
pub const MAX_PATH: usize = 4095;

/// `nfsstat3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    Perm = 1,
    NoEnt = 2,
    Io = 5,
    NxIo = 6,
    Acces = 13,
    Exist = 17,
    XDev = 18,
    NoDev = 19,
    NotDir = 20,
    IsDir = 21,
    Inval = 22,
    FBig = 27,
    NoSpc = 28,
    RoFs = 30,
    MLink = 31,
    NameTooLong = 63,
    NotEmpty = 66,
    DQuot = 69,
    Stale = 70,
    Remote = 71,
    BadHandle = 10001,
    NotSync = 10002,
    BadCookie = 10003,
    NotSupp = 10004,
    TooSmall = 10005,
    ServerFault = 10006,
    BadType = 10007,
    Jukebox = 10008,
}

impl Status {
    /// The NFS error for a failed system call.
    pub fn from_errno(errno: i32) -> Status {
        match errno {
            libc::EPERM => Status::Perm,
            libc::ENOENT => Status::NoEnt,
            libc::ENXIO => Status::NxIo,
            libc::EACCES => Status::Acces,
            libc::EEXIST => Status::Exist,
            libc::EXDEV => Status::XDev,
            libc::ENODEV => Status::NoDev,
            libc::ENOTDIR => Status::NotDir,
            libc::EISDIR => Status::IsDir,
            libc::EINVAL => Status::Inval,
            libc::EFBIG => Status::FBig,
            libc::ENOSPC => Status::NoSpc,
            libc::EROFS => Status::RoFs,
            libc::EMLINK => Status::MLink,
            libc::ENAMETOOLONG => Status::NameTooLong,
            libc::ENOTEMPTY => Status::NotEmpty,
            libc::EDQUOT => Status::DQuot,
            libc::ESTALE => Status::Stale,
            libc::EOPNOTSUPP => Status::NotSupp,
            libc::EAGAIN | libc::ETIMEDOUT => Status::Jukebox,
            // A loop where a plain name was expected: a symbolic link we refuse to follow.
            libc::ELOOP => Status::Inval,
            libc::EBUSY => Status::Acces,
            libc::EOVERFLOW => Status::Inval,
            libc::ENOMEM => Status::ServerFault,
            _ => Status::Io,
        }
    }

    pub fn from_io(error: &std::io::Error) -> Status {
        error.raw_os_error().map_or(Status::Io, Status::from_errno)
    }
}

/// `ftype3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum FileType {
    Regular = 1,
    Directory = 2,
    Block = 3,
    Character = 4,
    Symlink = 5,
    Socket = 6,
    Fifo = 7,
}

impl TryFrom<u32> for FileType {
    type Error = ();
    fn try_from(value: u32) -> Result<Self, ()> {
        Ok(match value {
            1 => FileType::Regular,
            2 => FileType::Directory,
            3 => FileType::Block,
            4 => FileType::Character,
            5 => FileType::Symlink,
            6 => FileType::Socket,
            7 => FileType::Fifo,
            _ => return Err(()),
        })
    }
}

impl FileType {
    /// The NFS type of a `st_mode`; anything unknown reads as a regular file.
    pub fn of_mode(mode: u32) -> FileType {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => FileType::Directory,
            libc::S_IFBLK => FileType::Block,
            libc::S_IFCHR => FileType::Character,
            libc::S_IFLNK => FileType::Symlink,
            libc::S_IFSOCK => FileType::Socket,
            libc::S_IFIFO => FileType::Fifo,
            _ => FileType::Regular,
        }
    }
}

/// `stable_how`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum StableHow {
    Unstable = 0,
    DataSync = 1,
    FileSync = 2,
}

impl TryFrom<u32> for StableHow {
    type Error = ();
    fn try_from(value: u32) -> Result<Self, ()> {
        Ok(match value {
            0 => StableHow::Unstable,
            1 => StableHow::DataSync,
            2 => StableHow::FileSync,
            _ => return Err(()),
        })
    }
}

/// ACCESS3 bits.
pub mod access {
    pub const READ: u32 = 0x01;
    pub const LOOKUP: u32 = 0x02;
    pub const MODIFY: u32 = 0x04;
    pub const EXTEND: u32 = 0x08;
    pub const DELETE: u32 = 0x10;
    pub const EXECUTE: u32 = 0x20;
}

/// `sattr3`: attributes a client asks to set; `None`/[`SetTime::Keep`] leave them alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetAttributes {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: SetTimeArg,
    pub mtime: SetTimeArg,
}

/// `set_atime`/`set_mtime` (a newtype so `Default` is "don't change").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetTimeArg(pub SetTime);

impl Default for SetTimeArg {
    fn default() -> Self {
        SetTimeArg(SetTime::Keep)
    }
}

impl SetAttributes {
    pub fn is_empty(&self) -> bool {
        *self == SetAttributes::default()
    }
}

/// `createhow3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateHow {
    Unchecked(SetAttributes),
    Guarded(SetAttributes),
    Exclusive([u8; 8]),
}

/// `mknoddata3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MknodData {
    Device {
        kind: FileType,
        attributes: SetAttributes,
        major: u32,
        minor: u32,
    },
    Special {
        kind: FileType,
        attributes: SetAttributes,
    },
    /// A type MKNOD cannot create (regular, directory, link).
    Other(FileType),
}

/// `diropargs3`: a directory handle and a name in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirOp<'a> {
    pub dir: &'a [u8],
    pub name: &'a [u8],
}

/// The decoded arguments of one NFSv3 call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args<'a> {
    Null,
    GetAttr {
        object: &'a [u8],
    },
    SetAttr {
        object: &'a [u8],
        attributes: SetAttributes,
        guard: Option<Time>,
    },
    Lookup(DirOp<'a>),
    Access {
        object: &'a [u8],
        access: u32,
    },
    ReadLink {
        object: &'a [u8],
    },
    Read {
        file: &'a [u8],
        offset: u64,
        count: u32,
    },
    Write {
        file: &'a [u8],
        offset: u64,
        count: u32,
        stable: StableHow,
        data: &'a [u8],
    },
    Create {
        place: DirOp<'a>,
        how: CreateHow,
    },
    MkDir {
        place: DirOp<'a>,
        attributes: SetAttributes,
    },
    Symlink {
        place: DirOp<'a>,
        attributes: SetAttributes,
        target: &'a [u8],
    },
    MkNod {
        place: DirOp<'a>,
        data: MknodData,
    },
    Remove(DirOp<'a>),
    RmDir(DirOp<'a>),
    Rename {
        from: DirOp<'a>,
        to: DirOp<'a>,
    },
    Link {
        file: &'a [u8],
        link: DirOp<'a>,
    },
    ReadDir {
        dir: &'a [u8],
        cookie: u64,
        verifier: [u8; 8],
        count: u32,
    },
    ReadDirPlus {
        dir: &'a [u8],
        cookie: u64,
        verifier: [u8; 8],
        dircount: u32,
        maxcount: u32,
    },
    FsStat {
        root: &'a [u8],
    },
    FsInfo {
        root: &'a [u8],
    },
    PathConf {
        object: &'a [u8],
    },
    Commit {
        file: &'a [u8],
        offset: u64,
        count: u32,
    },
}

/// The number of NFSv3 procedures (0 NULL to 21 COMMIT).
pub const PROCEDURES: u32 = 22;

/// The procedures that move file data (RFC 1813 numbers).
pub const PROC_READ: u32 = 6;
pub const PROC_WRITE: u32 = 7;
pub const PROC_COMMIT: u32 = 21;

fn handle<'a>(decoder: &mut Decoder<'a>) -> Result<&'a [u8], XdrError> {
    decoder.opaque(FHSIZE)
}

fn name<'a>(decoder: &mut Decoder<'a>) -> Result<&'a [u8], XdrError> {
    decoder.opaque(MAX_DECODED_NAME)
}

fn dirop<'a>(decoder: &mut Decoder<'a>) -> Result<DirOp<'a>, XdrError> {
    Ok(DirOp {
        dir: handle(decoder)?,
        name: name(decoder)?,
    })
}

fn nfstime(decoder: &mut Decoder<'_>) -> Result<Time, XdrError> {
    Ok(Time {
        seconds: i64::from(decoder.u32()?),
        nanoseconds: decoder.u32()?,
    })
}

fn set_time(decoder: &mut Decoder<'_>) -> Result<SetTimeArg, XdrError> {
    let offset = decoder.position();
    Ok(SetTimeArg(match decoder.u32()? {
        0 => SetTime::Keep,
        1 => SetTime::Now,
        2 => SetTime::To(nfstime(decoder)?),
        value => {
            return Err(XdrError::BadEnum {
                offset,
                name: "time_how",
                value,
            });
        }
    }))
}

fn sattr(decoder: &mut Decoder<'_>) -> Result<SetAttributes, XdrError> {
    Ok(SetAttributes {
        mode: decoder.optional(Decoder::u32)?,
        uid: decoder.optional(Decoder::u32)?,
        gid: decoder.optional(Decoder::u32)?,
        size: decoder.optional(Decoder::u64)?,
        atime: set_time(decoder)?,
        mtime: set_time(decoder)?,
    })
}

/// Decodes the arguments of `procedure`. Bytes after the arguments are ignored, as the Linux
/// server does. Never panics, whatever the bytes; allocates nothing.
pub fn decode_args(procedure: u32, bytes: &[u8]) -> Result<Args<'_>, XdrError> {
    let decoder = &mut Decoder::new(bytes);
    Ok(match procedure {
        0 => Args::Null,
        1 => Args::GetAttr {
            object: handle(decoder)?,
        },
        2 => Args::SetAttr {
            object: handle(decoder)?,
            attributes: sattr(decoder)?,
            guard: decoder.optional(nfstime)?,
        },
        3 => Args::Lookup(dirop(decoder)?),
        4 => Args::Access {
            object: handle(decoder)?,
            access: decoder.u32()?,
        },
        5 => Args::ReadLink {
            object: handle(decoder)?,
        },
        6 => Args::Read {
            file: handle(decoder)?,
            offset: decoder.u64()?,
            count: decoder.u32()?,
        },
        7 => Args::Write {
            file: handle(decoder)?,
            offset: decoder.u64()?,
            count: decoder.u32()?,
            stable: decoder.enumeration("stable_how")?,
            data: decoder.opaque(u32::MAX)?,
        },
        8 => {
            let place = dirop(decoder)?;
            let offset = decoder.position();
            let how = match decoder.u32()? {
                0 => CreateHow::Unchecked(sattr(decoder)?),
                1 => CreateHow::Guarded(sattr(decoder)?),
                2 => CreateHow::Exclusive(decoder.fixed_array()?),
                value => {
                    return Err(XdrError::BadEnum {
                        offset,
                        name: "createmode3",
                        value,
                    });
                }
            };
            Args::Create { place, how }
        }
        9 => Args::MkDir {
            place: dirop(decoder)?,
            attributes: sattr(decoder)?,
        },
        10 => Args::Symlink {
            place: dirop(decoder)?,
            attributes: sattr(decoder)?,
            target: name(decoder)?,
        },
        11 => {
            let place = dirop(decoder)?;
            let kind: FileType = decoder.enumeration("ftype3")?;
            let data = match kind {
                FileType::Character | FileType::Block => MknodData::Device {
                    kind,
                    attributes: sattr(decoder)?,
                    major: decoder.u32()?,
                    minor: decoder.u32()?,
                },
                FileType::Socket | FileType::Fifo => MknodData::Special {
                    kind,
                    attributes: sattr(decoder)?,
                },
                other => MknodData::Other(other),
            };
            Args::MkNod { place, data }
        }
        12 => Args::Remove(dirop(decoder)?),
        13 => Args::RmDir(dirop(decoder)?),
        14 => Args::Rename {
            from: dirop(decoder)?,
            to: dirop(decoder)?,
        },
        15 => Args::Link {
            file: handle(decoder)?,
            link: dirop(decoder)?,
        },
        16 => Args::ReadDir {
            dir: handle(decoder)?,
            cookie: decoder.u64()?,
            verifier: decoder.fixed_array()?,
            count: decoder.u32()?,
        },
        17 => Args::ReadDirPlus {
            dir: handle(decoder)?,
            cookie: decoder.u64()?,
            verifier: decoder.fixed_array()?,
            dircount: decoder.u32()?,
            maxcount: decoder.u32()?,
        },
        18 => Args::FsStat {
            root: handle(decoder)?,
        },
        19 => Args::FsInfo {
            root: handle(decoder)?,
        },
        20 => Args::PathConf {
            object: handle(decoder)?,
        },
        21 => Args::Commit {
            file: handle(decoder)?,
            offset: decoder.u64()?,
            count: decoder.u32()?,
        },
        value => {
            return Err(XdrError::BadEnum {
                offset: 0,
                name: "nfs3 procedure",
                value,
            });
        }
    })
}

/// Bytes of an encoded `fattr3`.
pub const FATTR3_SIZE: usize = 84;
/// Bytes of an encoded `post_op_attr` with attributes.
pub const POST_OP_ATTR_SIZE: usize = 4 + FATTR3_SIZE;

fn nfstime_encode(encoder: &mut Encoder<'_>, time: Time) {
    // nfstime3 seconds are unsigned 32 bits: times before 1970 read as 1970, after 2106 as 2106.
    let seconds = u32::try_from(time.seconds.max(0)).unwrap_or(u32::MAX);
    encoder.u32(seconds);
    encoder.u32(time.nanoseconds);
}

/// `fattr3` of `stat`; `fsid` is the export's stable id (the device number differs between
/// nodes and would make clients think the file system changed after a failover).
pub fn fattr3(encoder: &mut Encoder<'_>, stat: &Stat, fsid: u64) {
    encoder.u32(FileType::of_mode(stat.mode) as u32);
    encoder.u32(stat.mode & 0o7777);
    encoder.u32(stat.nlink);
    encoder.u32(stat.uid);
    encoder.u32(stat.gid);
    encoder.u64(stat.size);
    encoder.u64(stat.blocks.saturating_mul(512));
    encoder.u32(stat.rdev_major);
    encoder.u32(stat.rdev_minor);
    encoder.u64(fsid);
    encoder.u64(stat.ino);
    nfstime_encode(encoder, stat.atime);
    nfstime_encode(encoder, stat.mtime);
    nfstime_encode(encoder, stat.ctime);
}

/// `post_op_attr`.
pub fn post_op_attr(encoder: &mut Encoder<'_>, stat: Option<&Stat>, fsid: u64) {
    encoder.bool(stat.is_some());
    if let Some(stat) = stat {
        fattr3(encoder, stat, fsid);
    }
}

/// `pre_op_attr`.
pub fn pre_op_attr(encoder: &mut Encoder<'_>, stat: Option<&Stat>) {
    encoder.bool(stat.is_some());
    if let Some(stat) = stat {
        encoder.u64(stat.size);
        nfstime_encode(encoder, stat.mtime);
        nfstime_encode(encoder, stat.ctime);
    }
}

/// `wcc_data`.
pub fn wcc_data(encoder: &mut Encoder<'_>, before: Option<&Stat>, after: Option<&Stat>, fsid: u64) {
    pre_op_attr(encoder, before);
    post_op_attr(encoder, after, fsid);
}

/// `nfs_fh3`.
pub fn fh3(encoder: &mut Encoder<'_>, handle: &[u8]) {
    // Our handles are at most 64 bytes by construction; a longer one is never produced.
    let _ = encoder.opaque(handle, FHSIZE);
}

/// `post_op_fh3`.
pub fn post_op_fh3(encoder: &mut Encoder<'_>, handle: Option<&[u8]>) {
    encoder.bool(handle.is_some());
    if let Some(handle) = handle {
        fh3(encoder, handle);
    }
}

/// Bytes an opaque of `length` occupies on the wire (length word plus padded data).
pub fn opaque_size(length: usize) -> usize {
    4 + length.next_multiple_of(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(values: &[u32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|value| value.to_be_bytes())
            .collect()
    }

    #[test]
    fn arguments_table() {
        let fh = [0, 0, 0, 4, 1, 2, 3, 4];
        let name = [0, 0, 0, 3, b'a', b'b', b'c', 0];
        let cases: Vec<(u32, Vec<u8>, Result<Args<'static>, ()>)> = vec![
            (0, vec![], Ok(Args::Null)),
            (
                1,
                fh.to_vec(),
                Ok(Args::GetAttr {
                    object: &[1, 2, 3, 4],
                }),
            ),
            (1, vec![0, 0, 0, 65], Err(())),
            (
                3,
                [&fh[..], &name[..]].concat(),
                Ok(Args::Lookup(DirOp {
                    dir: &[1, 2, 3, 4],
                    name: b"abc",
                })),
            ),
            (
                6,
                [&fh[..], &words(&[1, 2, 4096])[..]].concat(),
                Ok(Args::Read {
                    file: &[1, 2, 3, 4],
                    offset: (1 << 32) + 2,
                    count: 4096,
                }),
            ),
            (
                7,
                [&fh[..], &words(&[0, 0, 3, 0, 3])[..], b"xyz\0"].concat(),
                Ok(Args::Write {
                    file: &[1, 2, 3, 4],
                    offset: 0,
                    count: 3,
                    stable: StableHow::Unstable,
                    data: b"xyz",
                }),
            ),
            // stable_how 3 does not exist.
            (7, [&fh[..], &words(&[0, 0, 3, 3, 0])[..]].concat(), Err(())),
            (
                8,
                [&fh[..], &name[..], &words(&[2])[..], &[9; 8]].concat(),
                Ok(Args::Create {
                    place: DirOp {
                        dir: &[1, 2, 3, 4],
                        name: b"abc",
                    },
                    how: CreateHow::Exclusive([9; 8]),
                }),
            ),
            (
                8,
                [
                    &fh[..],
                    &name[..],
                    &words(&[1, 1, 0o640, 0, 0, 1, 0, 7, 1, 2, 5, 6])[..],
                ]
                .concat(),
                Ok(Args::Create {
                    place: DirOp {
                        dir: &[1, 2, 3, 4],
                        name: b"abc",
                    },
                    how: CreateHow::Guarded(SetAttributes {
                        mode: Some(0o640),
                        uid: None,
                        gid: None,
                        size: Some(7),
                        atime: SetTimeArg(SetTime::Now),
                        mtime: SetTimeArg(SetTime::To(Time {
                            seconds: 5,
                            nanoseconds: 6,
                        })),
                    }),
                }),
            ),
            (8, [&fh[..], &name[..], &words(&[3])[..]].concat(), Err(())),
            (
                11,
                [&fh[..], &name[..], &words(&[7, 0, 0, 0, 0, 0, 0])[..]].concat(),
                Ok(Args::MkNod {
                    place: DirOp {
                        dir: &[1, 2, 3, 4],
                        name: b"abc",
                    },
                    data: MknodData::Special {
                        kind: FileType::Fifo,
                        attributes: SetAttributes::default(),
                    },
                }),
            ),
            (22, vec![], Err(())),
            // Truncated arguments.
            (6, fh.to_vec(), Err(())),
        ];
        for (procedure, bytes, expected) in cases {
            let decoded = decode_args(procedure, &bytes).map_err(|_| ());
            assert_eq!(decoded, expected, "procedure {procedure}");
        }
    }

    #[test]
    fn fattr3_is_84_bytes_and_clamps_times() {
        let stat = Stat {
            mode: libc::S_IFREG | 0o4755,
            atime: Time {
                seconds: -5,
                nanoseconds: 1,
            },
            mtime: Time {
                seconds: 1 << 40,
                nanoseconds: 2,
            },
            ..Stat::default()
        };
        let mut out = Vec::new();
        fattr3(&mut Encoder::new(&mut out), &stat, 9);
        assert_eq!(out.len(), FATTR3_SIZE);
        assert_eq!(&out[0..8], &words(&[1, 0o4755])[..]);
        assert_eq!(&out[60..68], &words(&[0, 1])[..], "atime clamped to 0");
        assert_eq!(&out[68..76], &words(&[u32::MAX, 2])[..], "mtime clamped");
    }

    #[test]
    fn errno_mapping_table() {
        for (errno, status) in [
            (libc::ENOENT, Status::NoEnt),
            (libc::EACCES, Status::Acces),
            (libc::ENOTEMPTY, Status::NotEmpty),
            (libc::EROFS, Status::RoFs),
            (libc::ENAMETOOLONG, Status::NameTooLong),
            (libc::ESTALE, Status::Stale),
            (libc::EDQUOT, Status::DQuot),
            (9999, Status::Io),
        ] {
            assert_eq!(Status::from_errno(errno), status, "errno {errno}");
        }
    }
}
