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

use std::ops::RangeInclusive;

use crate::rpc::{AcceptStatus, AuthStat, Call, Credential, ReplyBody};

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
}
