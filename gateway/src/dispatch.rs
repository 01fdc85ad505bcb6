//! Program, version and procedure dispatch: the pure decision between running a procedure and
//! answering AUTH_ERROR, PROG_UNAVAIL, PROG_MISMATCH or PROC_UNAVAIL.
//!
//! The serving loop registers a table of [`Program`]s — one entry per program number and range
//! of versions that share a procedure count — and asks [`dispatch`] about each decoded call.
//! A program whose versions differ in procedure count (rpcbind: 6 procedures in version 2, 9 in
//! version 3, 13 in version 4) is registered as several entries with the same `prog`;
//! PROG_MISMATCH then reports the lowest and highest version over all of them, which is all the
//! protocol can express.
//!
//! Checks run in the order of the Linux server: credential flavor, program, version,
//! procedure. A flavor we do not implement gets AUTH_BADCRED, as knfsd answers for a flavor it
//! has no handler for; AUTH_TOOWEAK is left for export policy ("this export wants a stronger
//! flavor than the one you used"), which is a later, per-export decision.
//!
//! [`decode_arguments`] decodes a dispatched call's arguments with the decoder its program's
//! handler uses, and [`decode_record`] runs a whole record through classification, dispatch and
//! argument decoding: everything a remote client reaches before a procedure touches the
//! volume, with no service and no I/O (the fuzz targets in `gateway/fuzz/` drive it).

use std::ops::RangeInclusive;

use crate::rpc::{
    AcceptStatus, AuthStat, Call, CallError, Classification, Credential, MOUNT_PROGRAM,
    NFS_PROGRAM, PORTMAP_PROGRAM, ReplyBody, ReplyHeader, classify,
};
use crate::service::ProcError;
use crate::{mount, nfs3, portmap};

/// One registered program and range of versions, each with procedures `0..procedures`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub prog: u32,
    pub versions: RangeInclusive<u32>,
    /// Number of procedures in each of `versions`; procedure numbers run from 0 (NULL).
    pub procedures: u32,
}

/// What to do with a well-formed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'p> {
    /// Run the procedure: `call.procedure` of `call.version` of this registered program.
    Dispatch(&'p Program),
    /// Answer with this reply body and nothing else.
    Reject(ReplyBody),
}

/// Decides whether `call` reaches a registered procedure, and if not, what to answer.
pub fn dispatch<'p>(programs: &'p [Program], call: &Call) -> Decision<'p> {
    if let Credential::Unsupported(_) = call.credential {
        return Decision::Reject(ReplyBody::auth_error(AuthStat::BadCred));
    }
    let mut versions_served: Option<(u32, u32)> = None;
    for program in programs
        .iter()
        .filter(|program| program.prog == call.program)
    {
        if program.versions.contains(&call.version) {
            return if call.procedure < program.procedures {
                Decision::Dispatch(program)
            } else {
                Decision::Reject(ReplyBody::accepted(AcceptStatus::ProcUnavail))
            };
        }
        let (low, high) = (*program.versions.start(), *program.versions.end());
        versions_served = Some(match versions_served {
            None => (low, high),
            Some((known_low, known_high)) => (known_low.min(low), known_high.max(high)),
        });
    }
    Decision::Reject(ReplyBody::accepted(match versions_served {
        None => AcceptStatus::ProgUnavail,
        Some((low, high)) => AcceptStatus::ProgMismatch { low, high },
    }))
}

/// The decoded arguments of a call to one of the gateway's programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arguments<'a> {
    Portmap(portmap::Args<'a>),
    Mount(mount::Args<'a>),
    Nfs3(nfs3::wire::Args<'a>),
}

/// Decodes the arguments of a call `dispatch` let through, with the same decoder the program's
/// handler runs first (`portmap::decode_args`, `mount::decode_args`, `nfs3::wire::decode_args`):
/// GARBAGE_ARGS if they do not decode, PROC_UNAVAIL for a program or procedure without one.
/// Allocates nothing.
pub fn decode_arguments<'a>(call: &Call, args: &'a [u8]) -> Result<Arguments<'a>, ProcError> {
    match call.program {
        PORTMAP_PROGRAM => {
            portmap::decode_args(call.version, call.procedure, args).map(Arguments::Portmap)
        }
        MOUNT_PROGRAM => mount::decode_args(call.procedure, args).map(Arguments::Mount),
        NFS_PROGRAM => Ok(Arguments::Nfs3(nfs3::wire::decode_args(
            call.procedure,
            args,
        )?)),
        _ => Err(ProcError::ProcUnavail),
    }
}

/// What the gateway's decoding makes of one record, before any procedure runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Not answered at all (see `rpc`'s table).
    Drop(CallError),
    /// Answered with this error reply by the header checks or by [`dispatch`].
    Reject(ReplyHeader),
    /// A dispatched call whose arguments do not decode (or, for a registered procedure with no
    /// decoder, PROC_UNAVAIL): answered with this reply.
    BadArguments { call: Call, reply: ReplyHeader },
    /// A dispatched call with its decoded arguments: what the procedure would run with.
    Call {
        call: Call,
        arguments: Arguments<'a>,
    },
}

/// Runs one complete record through the decoding the serving loop applies — [`classify`],
/// [`dispatch`] against `programs`, then [`decode_arguments`] at the offset the header ends —
/// and reports the outcome. Pure: no service, no I/O. Never panics, whatever the bytes; its
/// only allocations are the credential's fields (see [`classify`]).
pub fn decode_record<'a>(programs: &[Program], record: &'a [u8]) -> Decoded<'a> {
    let (call, args_offset) = match classify(record) {
        Classification::Call { call, args_offset } => (call, args_offset),
        Classification::Reject { reply, .. } => return Decoded::Reject(reply),
        Classification::Drop(cause) => return Decoded::Drop(cause),
    };
    if let Decision::Reject(body) = dispatch(programs, &call) {
        return Decoded::Reject(ReplyHeader {
            xid: call.xid,
            body,
        });
    }
    let args = record.get(args_offset..).unwrap_or_default();
    match decode_arguments(&call, args) {
        Ok(arguments) => Decoded::Call { call, arguments },
        Err(error) => {
            let status = match error {
                ProcError::GarbageArgs => AcceptStatus::GarbageArgs,
                ProcError::ProcUnavail => AcceptStatus::ProcUnavail,
                ProcError::SystemErr => AcceptStatus::SystemErr,
            };
            let reply = ReplyHeader {
                xid: call.xid,
                body: ReplyBody::accepted(status),
            };
            Decoded::BadArguments { call, reply }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{
        AuthSys, MOUNT_PROGRAM, NFS_PROGRAM, OpaqueAuth, PORTMAP_PROGRAM, RPCSEC_GSS,
    };

    /// The gateway's own table, plus an NFSv4 entry so version mismatches within NFS are
    /// exercised too.
    fn table() -> Vec<Program> {
        let mut table = crate::service::PROGRAMS.to_vec();
        table.push(Program {
            prog: NFS_PROGRAM,
            versions: 4..=4,
            procedures: 2,
        });
        table
    }

    fn call(program: u32, version: u32, procedure: u32, credential: Credential) -> Call {
        Call {
            xid: 1,
            program,
            version,
            procedure,
            credential,
            verifier: OpaqueAuth::none(),
        }
    }

    /// A decision written compactly: `Ok(index into the table)` or the rejection.
    fn decide(programs: &[Program], call: &Call) -> Result<usize, ReplyBody> {
        match dispatch(programs, call) {
            Decision::Dispatch(program) => Ok(programs
                .iter()
                .position(|candidate| std::ptr::eq(candidate, program))
                .unwrap()),
            Decision::Reject(body) => Err(body),
        }
    }

    #[test]
    fn dispatch_table() {
        let programs = table();
        let sys = || {
            Credential::Sys(AuthSys {
                stamp: 0,
                machinename: b"client".to_vec(),
                uid: 1000,
                gid: 1000,
                gids: vec![],
            })
        };
        let mismatch = |low, high| {
            Err(ReplyBody::accepted(AcceptStatus::ProgMismatch {
                low,
                high,
            }))
        };
        let cases: Vec<(&str, Call, Result<usize, ReplyBody>)> = vec![
            (
                "portmap v2 NULL",
                call(PORTMAP_PROGRAM, 2, 0, Credential::None),
                Ok(0),
            ),
            (
                "portmap v2 DUMP",
                call(PORTMAP_PROGRAM, 2, 4, Credential::None),
                Ok(0),
            ),
            (
                "portmap v2 has 6 procedures",
                call(PORTMAP_PROGRAM, 2, 6, Credential::None),
                Err(ReplyBody::accepted(AcceptStatus::ProcUnavail)),
            ),
            (
                "rpcbind v3 proc 8",
                call(PORTMAP_PROGRAM, 3, 8, Credential::None),
                Ok(1),
            ),
            (
                "rpcbind v4 proc 12",
                call(PORTMAP_PROGRAM, 4, 12, Credential::None),
                Ok(2),
            ),
            (
                "rpcbind v4 proc 13",
                call(PORTMAP_PROGRAM, 4, 13, Credential::None),
                Err(ReplyBody::accepted(AcceptStatus::ProcUnavail)),
            ),
            (
                "rpcbind v5",
                call(PORTMAP_PROGRAM, 5, 0, Credential::None),
                mismatch(2, 4),
            ),
            (
                "portmap v1",
                call(PORTMAP_PROGRAM, 1, 0, Credential::None),
                mismatch(2, 4),
            ),
            ("NFSv3 COMMIT", call(NFS_PROGRAM, 3, 21, sys()), Ok(4)),
            (
                "NFSv3 procedure 22",
                call(NFS_PROGRAM, 3, 22, sys()),
                Err(ReplyBody::accepted(AcceptStatus::ProcUnavail)),
            ),
            (
                "NFSv3 procedure u32::MAX",
                call(NFS_PROGRAM, 3, u32::MAX, sys()),
                Err(ReplyBody::accepted(AcceptStatus::ProcUnavail)),
            ),
            ("NFSv4 COMPOUND", call(NFS_PROGRAM, 4, 1, sys()), Ok(5)),
            ("NFSv2", call(NFS_PROGRAM, 2, 0, sys()), mismatch(3, 4)),
            (
                "MOUNT v1 is not served",
                call(MOUNT_PROGRAM, 1, 0, sys()),
                mismatch(3, 3),
            ),
            ("MOUNT v3 EXPORT", call(MOUNT_PROGRAM, 3, 5, sys()), Ok(3)),
            (
                "NLM is not served",
                call(100_021, 4, 0, sys()),
                Err(ReplyBody::accepted(AcceptStatus::ProgUnavail)),
            ),
            (
                "RPCSEC_GSS is refused before the program is looked at",
                call(100_021, 4, 0, Credential::Unsupported(RPCSEC_GSS)),
                Err(ReplyBody::auth_error(AuthStat::BadCred)),
            ),
            (
                "an unknown flavor on NFSv3 NULL",
                call(NFS_PROGRAM, 3, 0, Credential::Unsupported(390_003)),
                Err(ReplyBody::auth_error(AuthStat::BadCred)),
            ),
        ];
        for (name, call, expected) in cases {
            assert_eq!(decide(&programs, &call), expected, "{name}");
        }
    }

    #[test]
    fn empty_table_serves_nothing() {
        assert_eq!(
            decide(&[], &call(NFS_PROGRAM, 3, 0, Credential::None)),
            Err(ReplyBody::accepted(AcceptStatus::ProgUnavail))
        );
    }

    #[test]
    fn zero_procedures_means_every_procedure_is_unavailable() {
        let programs = [Program {
            prog: 7,
            versions: 1..=1,
            procedures: 0,
        }];
        assert_eq!(
            decide(&programs, &call(7, 1, 0, Credential::None)),
            Err(ReplyBody::accepted(AcceptStatus::ProcUnavail))
        );
    }

    /// A record: a call header with an AUTH_SYS credential, then `args`.
    fn record(program: u32, version: u32, procedure: u32, args: &[u8]) -> Vec<u8> {
        let mut record = Vec::new();
        call(
            program,
            version,
            procedure,
            Credential::Sys(AuthSys {
                stamp: 0,
                machinename: b"c".to_vec(),
                uid: 1,
                gid: 1,
                gids: vec![],
            }),
        )
        .encode(&mut crate::xdr::Encoder::new(&mut record))
        .unwrap();
        record.extend_from_slice(args);
        record
    }

    fn words(values: &[u32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|value| value.to_be_bytes())
            .collect()
    }

    /// The outcome of `decode_record` written compactly: the arguments, or the reply body.
    fn decoded(record: &[u8]) -> Result<Arguments<'_>, Option<ReplyBody>> {
        match decode_record(crate::service::PROGRAMS, record) {
            Decoded::Call { arguments, .. } => Ok(arguments),
            Decoded::BadArguments { reply, .. } | Decoded::Reject(reply) => Err(Some(reply.body)),
            Decoded::Drop(_) => Err(None),
        }
    }

    #[test]
    fn decode_record_table() {
        use crate::nfs3::wire::Args as Nfs3;
        let garbage = || Err(Some(ReplyBody::accepted(AcceptStatus::GarbageArgs)));
        let handle = [0, 0, 0, 4, 1, 2, 3, 4];
        let path = [0, 0, 0, 5, b'/', b'd', b'a', b't', b'a', 0, 0, 0];
        type Expected<'a> = Result<Arguments<'a>, Option<ReplyBody>>;
        let cases: Vec<(&str, Vec<u8>, Expected<'_>)> = vec![
            (
                "NFSv3 NULL",
                record(NFS_PROGRAM, 3, 0, &[]),
                Ok(Arguments::Nfs3(Nfs3::Null)),
            ),
            (
                "NFSv3 GETATTR",
                record(NFS_PROGRAM, 3, 1, &handle),
                Ok(Arguments::Nfs3(Nfs3::GetAttr {
                    object: &[1, 2, 3, 4],
                })),
            ),
            (
                "NFSv3 GETATTR with a 65-byte handle",
                record(NFS_PROGRAM, 3, 1, &words(&[65])),
                garbage(),
            ),
            (
                "NFSv3 procedure 22",
                record(NFS_PROGRAM, 3, 22, &[]),
                Err(Some(ReplyBody::accepted(AcceptStatus::ProcUnavail))),
            ),
            (
                "NFSv2",
                record(NFS_PROGRAM, 2, 0, &[]),
                Err(Some(ReplyBody::accepted(AcceptStatus::ProgMismatch {
                    low: 3,
                    high: 3,
                }))),
            ),
            (
                "MOUNT MNT",
                record(MOUNT_PROGRAM, 3, 1, &path),
                Ok(Arguments::Mount(mount::Args::Mount { path: b"/data" })),
            ),
            (
                "MOUNT MNT of a path cut short",
                record(MOUNT_PROGRAM, 3, 1, &path[..8]),
                garbage(),
            ),
            (
                "MOUNT EXPORT",
                record(MOUNT_PROGRAM, 3, 5, &[]),
                Ok(Arguments::Mount(mount::Args::Export)),
            ),
            (
                "portmap GETPORT",
                record(PORTMAP_PROGRAM, 2, 3, &words(&[NFS_PROGRAM, 3, 6, 0])),
                Ok(Arguments::Portmap(portmap::Args::GetPort {
                    program: NFS_PROGRAM,
                    version: 3,
                    protocol: 6,
                })),
            ),
            (
                "portmap GETPORT without its port",
                record(PORTMAP_PROGRAM, 2, 3, &words(&[NFS_PROGRAM, 3, 6])),
                garbage(),
            ),
            (
                // Registered (rpcbind v3 has 9 procedures) but not answered by this table.
                "rpcbind v3 CALLIT",
                record(PORTMAP_PROGRAM, 3, 5, &[]),
                Err(Some(ReplyBody::accepted(AcceptStatus::ProcUnavail))),
            ),
            (
                "a reply is dropped",
                with_word(&record(NFS_PROGRAM, 3, 0, &[]), 1, 1),
                Err(None),
            ),
            (
                "rpc version 3",
                with_word(&record(NFS_PROGRAM, 3, 0, &[]), 2, 3),
                Err(Some(ReplyBody::Denied(
                    crate::rpc::RejectedReply::RpcMismatch { low: 2, high: 2 },
                ))),
            ),
        ];
        for (name, record, expected) in cases {
            assert_eq!(decoded(&record), expected, "{name}");
        }
    }

    fn with_word(record: &[u8], index: usize, value: u32) -> Vec<u8> {
        let mut record = record.to_vec();
        record[index * 4..index * 4 + 4].copy_from_slice(&value.to_be_bytes());
        record
    }
}
