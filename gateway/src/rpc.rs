//! ONC-RPC version 2 messages (RFC 5531): decoding CALLs with their AUTH_NONE / AUTH_SYS
//! credentials, encoding and decoding REPLYs, and [`classify`], the one function the serving
//! loop applies to every incoming record.
//!
//! Everything here is pure and works on complete records (see `record` for how they are cut out
//! of a TCP stream). A call's procedure arguments are not decoded here: [`classify`] returns the
//! offset where they start, and the program's handler decodes them, answering
//! [`AcceptStatus::GarbageArgs`] if it cannot.
//!
//! What a malformed call gets, in the order the checks run (the order of the Linux server's
//! `svc_process`):
//!
//! | problem | answer |
//! | --- | --- |
//! | fewer than 4 bytes: no xid | dropped |
//! | not a CALL, or truncated before `rpcvers` | dropped |
//! | `rpcvers` ≠ 2 | MSG_DENIED, RPC_MISMATCH (2, 2) |
//! | truncated in `prog`, `vers` or `proc` | dropped |
//! | credential truncated, over 400 bytes, or a malformed AUTH_SYS body | MSG_DENIED, AUTH_BADCRED |
//! | verifier truncated or over 400 bytes | MSG_DENIED, AUTH_BADVERF |
//!
//! Dropping is for messages we cannot answer meaningfully: without an xid there is nothing to
//! answer to, a REPLY must never be answered (two peers could bounce errors forever), and RFC
//! 5531 has no status for "your call header is cut short" — libtirpc and the Linux server drop
//! those too. Everything that happens after the header (unknown program, version or procedure;
//! credential flavors we do not implement) is decided by `dispatch`.

use thiserror::Error;

use crate::xdr::{Decoder, Encoder, XdrError};

/// The only RPC protocol version there is (RFC 5531 §8).
pub const RPC_VERSION: u32 = 2;

/// `msg_type` CALL.
pub const CALL: u32 = 0;
/// `msg_type` REPLY.
pub const REPLY: u32 = 1;

/// Authentication flavor numbers (RFC 5531 §8.2 and the IANA registry).
pub const AUTH_NONE: u32 = 0;
/// See [`AUTH_NONE`].
pub const AUTH_SYS: u32 = 1;
/// See [`AUTH_NONE`].
pub const AUTH_SHORT: u32 = 2;
/// See [`AUTH_NONE`].
pub const AUTH_DH: u32 = 3;
/// See [`AUTH_NONE`].
pub const RPCSEC_GSS: u32 = 6;

/// The body of any `opaque_auth` (credential or verifier) is at most 400 bytes.
pub const MAX_AUTH_BYTES: u32 = 400;
/// AUTH_SYS `machinename<255>`.
pub const AUTH_SYS_MAX_MACHINENAME: u32 = 255;
/// AUTH_SYS `gids<16>`.
pub const AUTH_SYS_MAX_GIDS: u32 = 16;

/// Well-known program numbers the gateway serves or talks to.
pub const PORTMAP_PROGRAM: u32 = 100_000;
/// See [`PORTMAP_PROGRAM`].
pub const NFS_PROGRAM: u32 = 100_003;
/// See [`PORTMAP_PROGRAM`].
pub const MOUNT_PROGRAM: u32 = 100_005;

/// An `opaque_auth`: a flavor and a body of at most [`MAX_AUTH_BYTES`].
///
/// The bound is enforced on construction, so encoding one can never fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaqueAuth {
    flavor: u32,
    body: Vec<u8>,
}

impl OpaqueAuth {
    /// The AUTH_NONE authenticator with an empty body, the verifier of every AUTH_NONE and
    /// AUTH_SYS exchange.
    pub const fn none() -> Self {
        OpaqueAuth {
            flavor: AUTH_NONE,
            body: Vec::new(),
        }
    }

    /// An authenticator of any flavor; fails if `body` is over [`MAX_AUTH_BYTES`].
    pub fn new(flavor: u32, body: Vec<u8>) -> Result<Self, XdrError> {
        if body.len() > MAX_AUTH_BYTES as usize {
            return Err(XdrError::LengthOverLimit {
                offset: 0,
                length: body.len(),
                limit: MAX_AUTH_BYTES as usize,
            });
        }
        Ok(OpaqueAuth { flavor, body })
    }

    pub fn flavor(&self) -> u32 {
        self.flavor
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Reads an `opaque_auth`; the body is copied (at most 400 bytes, and only once it is known
    /// to be present in the input).
    pub fn decode(decoder: &mut Decoder<'_>) -> Result<Self, XdrError> {
        let flavor = decoder.u32()?;
        let body = decoder.opaque(MAX_AUTH_BYTES)?.to_vec();
        Ok(OpaqueAuth { flavor, body })
    }

    pub fn encode(&self, encoder: &mut Encoder<'_>) {
        encoder.u32(self.flavor);
        // Cannot fail: the body's bound was checked when `self` was built.
        let _ = encoder.opaque(&self.body, MAX_AUTH_BYTES);
    }
}

impl Default for OpaqueAuth {
    fn default() -> Self {
        OpaqueAuth::none()
    }
}

/// The AUTH_SYS credential (RFC 5531 appendix A): who the client says the caller is.
///
/// Nothing here is verified — AUTH_SYS is a claim, trusted per export after squashing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSys {
    /// An arbitrary number the client chose.
    pub stamp: u32,
    /// The client's host name, as raw bytes: it is only ever logged, and a client whose host
    /// name is not UTF-8 should still be able to mount.
    pub machinename: Vec<u8>,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, at most [`AUTH_SYS_MAX_GIDS`].
    pub gids: Vec<u32>,
}

impl AuthSys {
    /// Parses a credential body, which must contain exactly one AUTH_SYS structure: trailing
    /// bytes mean the client and we disagree about the layout of an identity, so the
    /// credential is refused rather than guessed at.
    pub fn decode_body(body: &[u8]) -> Result<Self, XdrError> {
        let mut decoder = Decoder::new(body);
        let stamp = decoder.u32()?;
        let machinename = decoder.opaque(AUTH_SYS_MAX_MACHINENAME)?.to_vec();
        let uid = decoder.u32()?;
        let gid = decoder.u32()?;
        let gids = decoder.array(AUTH_SYS_MAX_GIDS, Decoder::u32)?;
        decoder.finish()?;
        Ok(AuthSys {
            stamp,
            machinename,
            uid,
            gid,
            gids,
        })
    }

    /// Writes the credential body (without the flavor and length in front).
    pub fn encode_body(&self, encoder: &mut Encoder<'_>) -> Result<(), XdrError> {
        encoder.u32(self.stamp);
        encoder.opaque(&self.machinename, AUTH_SYS_MAX_MACHINENAME)?;
        encoder.u32(self.uid);
        encoder.u32(self.gid);
        encoder.array(&self.gids, AUTH_SYS_MAX_GIDS, |encoder, gid| {
            encoder.u32(*gid);
            Ok(())
        })
    }

    /// The machine name for logs, with invalid UTF-8 replaced.
    pub fn machinename_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.machinename)
    }
}

/// A call's credential, by flavor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// AUTH_NONE: anonymous. Its body is ignored, as libtirpc does: it carries no meaning.
    None,
    /// AUTH_SYS (also called AUTH_UNIX).
    Sys(AuthSys),
    /// Any other flavor (AUTH_DH, RPCSEC_GSS, …), with its number. Its body was skipped;
    /// `dispatch` refuses such calls until a flavor is implemented.
    Unsupported(u32),
}

impl Credential {
    /// The flavor number.
    pub fn flavor(&self) -> u32 {
        match self {
            Credential::None => AUTH_NONE,
            Credential::Sys(_) => AUTH_SYS,
            Credential::Unsupported(flavor) => *flavor,
        }
    }

    /// Interprets a credential's flavor and body.
    pub fn from_wire(flavor: u32, body: &[u8]) -> Result<Self, XdrError> {
        match flavor {
            AUTH_NONE => Ok(Credential::None),
            AUTH_SYS => AuthSys::decode_body(body).map(Credential::Sys),
            other => Ok(Credential::Unsupported(other)),
        }
    }

    /// Writes the credential as an `opaque_auth`. An unsupported flavor is written with an
    /// empty body, since its body was not kept.
    pub fn encode(&self, encoder: &mut Encoder<'_>) -> Result<(), XdrError> {
        encoder.u32(self.flavor());
        match self {
            Credential::None | Credential::Unsupported(_) => encoder.u32(0),
            Credential::Sys(auth_sys) => {
                let mut body = Vec::new();
                auth_sys.encode_body(&mut Encoder::new(&mut body))?;
                encoder.opaque(&body, MAX_AUTH_BYTES)?;
            }
        }
        Ok(())
    }
}

/// The header of a CALL message (`rpc_msg` with a `call_body`), up to the procedure arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub xid: u32,
    pub program: u32,
    pub version: u32,
    pub procedure: u32,
    pub credential: Credential,
    pub verifier: OpaqueAuth,
}

/// Why a record is not a well-formed call; [`classify`] turns each into a reply or a drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum CallError {
    #[error("message of {length} bytes is too short to hold a transaction id")]
    NoXid { length: usize },
    #[error("message {xid:#010x} is not a call: message type {message_type}")]
    NotACall { xid: u32, message_type: u32 },
    #[error("call {xid:#010x} has a truncated header")]
    MalformedHeader {
        xid: u32,
        #[source]
        source: XdrError,
    },
    #[error("call {xid:#010x} uses rpc version {version}; only version 2 exists")]
    RpcVersion { xid: u32, version: u32 },
    #[error("call {xid:#010x} has a malformed credential")]
    BadCredential {
        xid: u32,
        #[source]
        source: XdrError,
    },
    #[error("call {xid:#010x} has a malformed verifier")]
    BadVerifier {
        xid: u32,
        #[source]
        source: XdrError,
    },
}

impl CallError {
    /// The transaction id, when it could be read.
    pub fn xid(&self) -> Option<u32> {
        match *self {
            CallError::NoXid { .. } => None,
            CallError::NotACall { xid, .. }
            | CallError::MalformedHeader { xid, .. }
            | CallError::RpcVersion { xid, .. }
            | CallError::BadCredential { xid, .. }
            | CallError::BadVerifier { xid, .. } => Some(xid),
        }
    }

    /// The reply this error deserves, or `None` when the message must be dropped (see the
    /// module documentation for why).
    pub fn reply(&self) -> Option<ReplyHeader> {
        let body = match self {
            CallError::NoXid { .. }
            | CallError::NotACall { .. }
            | CallError::MalformedHeader { .. } => return None,
            CallError::RpcVersion { .. } => ReplyBody::Denied(RejectedReply::RpcMismatch {
                low: RPC_VERSION,
                high: RPC_VERSION,
            }),
            CallError::BadCredential { .. } => ReplyBody::auth_error(AuthStat::BadCred),
            CallError::BadVerifier { .. } => ReplyBody::auth_error(AuthStat::BadVerf),
        };
        Some(ReplyHeader {
            xid: self.xid()?,
            body,
        })
    }
}

impl Call {
    /// Reads a call header, leaving `decoder` at the first byte of the procedure arguments.
    pub fn decode(decoder: &mut Decoder<'_>) -> Result<Call, CallError> {
        let length = decoder.remaining();
        let xid = decoder.u32().map_err(|_| CallError::NoXid { length })?;
        let header = |source| CallError::MalformedHeader { xid, source };
        let message_type = decoder.u32().map_err(header)?;
        if message_type != CALL {
            return Err(CallError::NotACall { xid, message_type });
        }
        let version = decoder.u32().map_err(header)?;
        if version != RPC_VERSION {
            return Err(CallError::RpcVersion { xid, version });
        }
        let program = decoder.u32().map_err(header)?;
        let version = decoder.u32().map_err(header)?;
        let procedure = decoder.u32().map_err(header)?;

        let bad_credential = |source| CallError::BadCredential { xid, source };
        let flavor = decoder.u32().map_err(bad_credential)?;
        let body = decoder.opaque(MAX_AUTH_BYTES).map_err(bad_credential)?;
        let credential = Credential::from_wire(flavor, body).map_err(bad_credential)?;

        let verifier =
            OpaqueAuth::decode(decoder).map_err(|source| CallError::BadVerifier { xid, source })?;
        Ok(Call {
            xid,
            program,
            version,
            procedure,
            credential,
            verifier,
        })
    }

    /// Writes the call header; the caller appends the procedure arguments.
    pub fn encode(&self, encoder: &mut Encoder<'_>) -> Result<(), XdrError> {
        encoder.u32(self.xid);
        encoder.u32(CALL);
        encoder.u32(RPC_VERSION);
        encoder.u32(self.program);
        encoder.u32(self.version);
        encoder.u32(self.procedure);
        self.credential.encode(encoder)?;
        self.verifier.encode(encoder);
        Ok(())
    }
}

/// What to do with one incoming record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classification {
    /// A well-formed call header; the procedure arguments start at `args_offset` in the record.
    Call { call: Call, args_offset: usize },
    /// A call that must be answered with an error reply and goes no further.
    Reject {
        reply: ReplyHeader,
        cause: CallError,
    },
    /// A message that gets no answer at all.
    Drop(CallError),
}

/// Decides what to do with a complete record received from a client. Never panics, whatever
/// the bytes; the only allocations are the credential's and verifier's fields, each no larger
/// than the part of the record it came from.
pub fn classify(record: &[u8]) -> Classification {
    let mut decoder = Decoder::new(record);
    match Call::decode(&mut decoder) {
        Ok(call) => Classification::Call {
            call,
            args_offset: decoder.position(),
        },
        Err(cause) => match cause.reply() {
            Some(reply) => Classification::Reject { reply, cause },
            None => Classification::Drop(cause),
        },
    }
}

/// `auth_stat`: why the server refused the caller's authentication (RFC 5531 §9 and RFC 2203).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthStat {
    Ok = 0,
    BadCred = 1,
    RejectedCred = 2,
    BadVerf = 3,
    RejectedVerf = 4,
    TooWeak = 5,
    InvalidResp = 6,
    Failed = 7,
    KerbGeneric = 8,
    TimeExpire = 9,
    TktFile = 10,
    Decode = 11,
    NetAddr = 12,
    RpcsecGssCredProblem = 13,
    RpcsecGssCtxProblem = 14,
}

impl TryFrom<u32> for AuthStat {
    type Error = ();

    fn try_from(value: u32) -> Result<Self, ()> {
        Ok(match value {
            0 => AuthStat::Ok,
            1 => AuthStat::BadCred,
            2 => AuthStat::RejectedCred,
            3 => AuthStat::BadVerf,
            4 => AuthStat::RejectedVerf,
            5 => AuthStat::TooWeak,
            6 => AuthStat::InvalidResp,
            7 => AuthStat::Failed,
            8 => AuthStat::KerbGeneric,
            9 => AuthStat::TimeExpire,
            10 => AuthStat::TktFile,
            11 => AuthStat::Decode,
            12 => AuthStat::NetAddr,
            13 => AuthStat::RpcsecGssCredProblem,
            14 => AuthStat::RpcsecGssCtxProblem,
            _ => return Err(()),
        })
    }
}

/// `accept_stat` with its data: how an accepted call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptStatus {
    /// The procedure ran; its results follow the reply header.
    Success,
    ProgUnavail,
    /// The program exists but not in this version; `low..=high` are the versions served.
    ProgMismatch {
        low: u32,
        high: u32,
    },
    ProcUnavail,
    /// The procedure's arguments could not be decoded.
    GarbageArgs,
    /// The server failed for a reason of its own (e.g. out of memory).
    SystemErr,
}

/// `rejected_reply`: why a call was refused before reaching its program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectedReply {
    /// The RPC version is not served; `low..=high` are the versions that are (always 2, 2).
    RpcMismatch {
        low: u32,
        high: u32,
    },
    AuthError(AuthStat),
}

/// `reply_body`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyBody {
    Accepted {
        verifier: OpaqueAuth,
        status: AcceptStatus,
    },
    Denied(RejectedReply),
}

impl ReplyBody {
    /// An accepted reply with the AUTH_NONE verifier used for AUTH_NONE and AUTH_SYS calls.
    pub const fn accepted(status: AcceptStatus) -> Self {
        ReplyBody::Accepted {
            verifier: OpaqueAuth::none(),
            status,
        }
    }

    /// SUCCESS; the caller appends the results after the header.
    pub const fn success() -> Self {
        ReplyBody::accepted(AcceptStatus::Success)
    }

    pub const fn auth_error(stat: AuthStat) -> Self {
        ReplyBody::Denied(RejectedReply::AuthError(stat))
    }
}

/// A REPLY message up to the procedure results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyHeader {
    pub xid: u32,
    pub body: ReplyBody,
}

/// Why a record is not a well-formed reply (seen by our clients: tests, the portmap client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ReplyError {
    #[error("reply is malformed")]
    Xdr(#[from] XdrError),
    #[error("message {xid:#010x} is not a reply: message type {message_type}")]
    NotAReply { xid: u32, message_type: u32 },
}

const MSG_ACCEPTED: u32 = 0;
const MSG_DENIED: u32 = 1;
const RPC_MISMATCH: u32 = 0;
const AUTH_ERROR: u32 = 1;

impl ReplyHeader {
    /// Writes the reply header. For [`AcceptStatus::Success`] the caller appends the results.
    pub fn encode(&self, encoder: &mut Encoder<'_>) {
        encoder.u32(self.xid);
        encoder.u32(REPLY);
        match &self.body {
            ReplyBody::Accepted { verifier, status } => {
                encoder.u32(MSG_ACCEPTED);
                verifier.encode(encoder);
                match *status {
                    AcceptStatus::Success => encoder.u32(0),
                    AcceptStatus::ProgUnavail => encoder.u32(1),
                    AcceptStatus::ProgMismatch { low, high } => {
                        encoder.u32(2);
                        encoder.u32(low);
                        encoder.u32(high);
                    }
                    AcceptStatus::ProcUnavail => encoder.u32(3),
                    AcceptStatus::GarbageArgs => encoder.u32(4),
                    AcceptStatus::SystemErr => encoder.u32(5),
                }
            }
            ReplyBody::Denied(rejected) => {
                encoder.u32(MSG_DENIED);
                match *rejected {
                    RejectedReply::RpcMismatch { low, high } => {
                        encoder.u32(RPC_MISMATCH);
                        encoder.u32(low);
                        encoder.u32(high);
                    }
                    RejectedReply::AuthError(stat) => {
                        encoder.u32(AUTH_ERROR);
                        encoder.u32(stat as u32);
                    }
                }
            }
        }
    }

    /// Reads a reply header, leaving `decoder` at the first byte of the results when the
    /// status is [`AcceptStatus::Success`].
    pub fn decode(decoder: &mut Decoder<'_>) -> Result<Self, ReplyError> {
        let xid = decoder.u32()?;
        let message_type = decoder.u32()?;
        if message_type != REPLY {
            return Err(ReplyError::NotAReply { xid, message_type });
        }
        let reply_stat_offset = decoder.position();
        let body = match decoder.u32()? {
            MSG_ACCEPTED => {
                let verifier = OpaqueAuth::decode(decoder)?;
                let status_offset = decoder.position();
                let status = match decoder.u32()? {
                    0 => AcceptStatus::Success,
                    1 => AcceptStatus::ProgUnavail,
                    2 => AcceptStatus::ProgMismatch {
                        low: decoder.u32()?,
                        high: decoder.u32()?,
                    },
                    3 => AcceptStatus::ProcUnavail,
                    4 => AcceptStatus::GarbageArgs,
                    5 => AcceptStatus::SystemErr,
                    value => {
                        return Err(XdrError::BadEnum {
                            offset: status_offset,
                            name: "accept_stat",
                            value,
                        }
                        .into());
                    }
                };
                ReplyBody::Accepted { verifier, status }
            }
            MSG_DENIED => {
                let reject_stat_offset = decoder.position();
                ReplyBody::Denied(match decoder.u32()? {
                    RPC_MISMATCH => RejectedReply::RpcMismatch {
                        low: decoder.u32()?,
                        high: decoder.u32()?,
                    },
                    AUTH_ERROR => RejectedReply::AuthError(decoder.enumeration("auth_stat")?),
                    value => {
                        return Err(XdrError::BadEnum {
                            offset: reject_stat_offset,
                            name: "reject_stat",
                            value,
                        }
                        .into());
                    }
                })
            }
            value => {
                return Err(XdrError::BadEnum {
                    offset: reply_stat_offset,
                    name: "reply_stat",
                    value,
                }
                .into());
            }
        };
        Ok(ReplyHeader { xid, body })
    }
}

/// Decodes a complete reply record: the header and the offset where the results start.
pub fn decode_reply(record: &[u8]) -> Result<(ReplyHeader, usize), ReplyError> {
    let mut decoder = Decoder::new(record);
    let header = ReplyHeader::decode(&mut decoder)?;
    Ok((header, decoder.position()))
}

/// Builds a complete reply message (not yet record-marked): the header, then `results`, which
/// must be empty unless the body is SUCCESS.
pub fn encode_reply(xid: u32, body: &ReplyBody, results: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(64 + results.len());
    let mut encoder = Encoder::new(&mut message);
    ReplyHeader {
        xid,
        body: body.clone(),
    }
    .encode(&mut encoder);
    encoder.raw(results);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NULL call to NFS version 3 as a Linux client sends it when it probes the server,
    /// including the record mark, byte by byte.
    const NFS3_NULL_CALL: [u8; 44] = [
        0x80, 0x00, 0x00, 0x28, // record mark: last fragment, 40 bytes follow
        0x5b, 0x1d, 0x3c, 0x01, // xid 0x5b1d3c01
        0x00, 0x00, 0x00, 0x00, // msg_type CALL
        0x00, 0x00, 0x00, 0x02, // rpcvers 2
        0x00, 0x01, 0x86, 0xa3, // prog 100003 (NFS)
        0x00, 0x00, 0x00, 0x03, // vers 3
        0x00, 0x00, 0x00, 0x00, // proc 0 (NULL)
        0x00, 0x00, 0x00, 0x00, // cred flavor AUTH_NONE
        0x00, 0x00, 0x00, 0x00, // cred body length 0
        0x00, 0x00, 0x00, 0x00, // verf flavor AUTH_NONE
        0x00, 0x00, 0x00, 0x00, // verf body length 0
    ];

    /// The server's answer to [`NFS3_NULL_CALL`], record mark included.
    const NFS3_NULL_REPLY: [u8; 28] = [
        0x80, 0x00, 0x00, 0x18, // record mark: last fragment, 24 bytes follow
        0x5b, 0x1d, 0x3c, 0x01, // the call's xid
        0x00, 0x00, 0x00, 0x01, // msg_type REPLY
        0x00, 0x00, 0x00, 0x00, // reply_stat MSG_ACCEPTED
        0x00, 0x00, 0x00, 0x00, // verf flavor AUTH_NONE
        0x00, 0x00, 0x00, 0x00, // verf body length 0
        0x00, 0x00, 0x00, 0x00, // accept_stat SUCCESS (NULL has no results)
    ];

    /// An NFSv3 GETATTR call with an AUTH_SYS credential, as a Linux client sends it.
    fn getattr_call_with_auth_sys() -> Vec<u8> {
        [
            &[0x00, 0x00, 0x00, 0x2a][..], // xid 42
            &[0x00, 0x00, 0x00, 0x00],     // CALL
            &[0x00, 0x00, 0x00, 0x02],     // rpcvers 2
            &[0x00, 0x01, 0x86, 0xa3],     // prog NFS
            &[0x00, 0x00, 0x00, 0x03],     // vers 3
            &[0x00, 0x00, 0x00, 0x01],     // proc 1 (GETATTR)
            &[0x00, 0x00, 0x00, 0x01],     // cred flavor AUTH_SYS
            &[0x00, 0x00, 0x00, 0x28],     // cred body length 40
            &[0x65, 0xf0, 0x00, 0x01],     //   stamp
            &[0x00, 0x00, 0x00, 0x07],     //   machinename length 7
            b"client1\0",                  //   "client1" + 1 byte of padding
            &[0x00, 0x00, 0x03, 0xe8],     //   uid 1000
            &[0x00, 0x00, 0x03, 0xe8],     //   gid 1000
            &[0x00, 0x00, 0x00, 0x03],     //   3 gids:
            &[0x00, 0x00, 0x03, 0xe8],     //     1000
            &[0x00, 0x00, 0x00, 0x1b],     //     27
            &[0x00, 0x00, 0x00, 0x64],     //     100
            &[0x00, 0x00, 0x00, 0x00],     // verf flavor AUTH_NONE
            &[0x00, 0x00, 0x00, 0x00],     // verf body length 0
            &[0x00, 0x00, 0x00, 0x08],     // GETATTR3args: fhandle3 length 8
            &[1, 2, 3, 4, 5, 6, 7, 8],     //   the handle
        ]
        .concat()
    }

    #[test]
    fn linux_nfs3_null_call_classifies_and_gets_its_reply() {
        let mut stream = &NFS3_NULL_CALL[..];
        let mut records = crate::record::RecordDecoder::new(crate::record::DEFAULT_MAX_RECORD);
        let record = records.decode(&mut stream).unwrap().unwrap();
        let Classification::Call { call, args_offset } = classify(&record) else {
            panic!("not a call: {:?}", classify(&record));
        };
        assert_eq!(
            call,
            Call {
                xid: 0x5b1d_3c01,
                program: NFS_PROGRAM,
                version: 3,
                procedure: 0,
                credential: Credential::None,
                verifier: OpaqueAuth::none(),
            }
        );
        assert_eq!(args_offset, 40, "NULL has no arguments");

        let message = encode_reply(call.xid, &ReplyBody::success(), &[]);
        let mut framed = Vec::new();
        crate::record::encode_record(&message, crate::record::DEFAULT_MAX_FRAGMENT, &mut framed);
        assert_eq!(framed, NFS3_NULL_REPLY);

        // And our own encoder produces the call byte for byte.
        let mut encoded = Vec::new();
        call.encode(&mut Encoder::new(&mut encoded)).unwrap();
        assert_eq!(encoded, NFS3_NULL_CALL[4..]);
    }

    #[test]
    fn auth_sys_call_decodes_to_a_typed_credential() {
        let record = getattr_call_with_auth_sys();
        let Classification::Call { call, args_offset } = classify(&record) else {
            panic!("not a call");
        };
        assert_eq!(
            call.credential,
            Credential::Sys(AuthSys {
                stamp: 0x65f0_0001,
                machinename: b"client1".to_vec(),
                uid: 1000,
                gid: 1000,
                gids: vec![1000, 27, 100],
            })
        );
        assert_eq!(call.procedure, 1);
        assert_eq!(
            &record[args_offset..],
            &[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]
        );

        let mut encoded = Vec::new();
        call.encode(&mut Encoder::new(&mut encoded)).unwrap();
        assert_eq!(encoded, record[..args_offset]);
    }

    /// A NULL call whose AUTH_SYS credential has a machine name of `name_length` bytes and
    /// `gid_count` groups, built by hand because our encoder refuses more than the limits.
    fn auth_sys_call(name_length: u32, gid_count: u32) -> Vec<u8> {
        let mut body = vec![0, 0, 0, 1]; // stamp
        body.extend_from_slice(&name_length.to_be_bytes());
        body.resize(body.len() + name_length.next_multiple_of(4) as usize, b'n');
        body.extend_from_slice(&[0, 0, 0, 5, 0, 0, 0, 5]); // uid, gid
        body.extend_from_slice(&gid_count.to_be_bytes());
        for gid in 0..gid_count {
            body.extend_from_slice(&gid.to_be_bytes());
        }
        let words = [1, CALL, RPC_VERSION, NFS_PROGRAM, 3, 0, AUTH_SYS];
        let mut record: Vec<u8> = words.iter().flat_map(|word| word.to_be_bytes()).collect();
        record.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        record.extend_from_slice(&body);
        record.extend_from_slice(&[0; 8]); // AUTH_NONE verifier
        record
    }

    /// A NULL call with an RPCSEC_GSS credential and verifier whose bodies (zeros) have the
    /// given lengths, all present.
    fn gss_call(credential_length: u32, verifier_length: u32) -> Vec<u8> {
        let words = [2, CALL, RPC_VERSION, NFS_PROGRAM, 4, 0];
        let mut record: Vec<u8> = words.iter().flat_map(|word| word.to_be_bytes()).collect();
        for length in [credential_length, verifier_length] {
            record.extend_from_slice(&RPCSEC_GSS.to_be_bytes());
            record.extend_from_slice(&length.to_be_bytes());
            record.resize(record.len() + length.next_multiple_of(4) as usize, 0);
        }
        record
    }

    /// Replaces the 4-byte word at `index` (counted in words) of `record`.
    fn with_word(record: &[u8], index: usize, value: u32) -> Vec<u8> {
        let mut record = record.to_vec();
        record[index * 4..index * 4 + 4].copy_from_slice(&value.to_be_bytes());
        record
    }

    #[derive(Debug, PartialEq)]
    enum Expected {
        Call,
        Reject(ReplyBody),
        Drop,
    }

    fn outcome(record: &[u8]) -> Expected {
        match classify(record) {
            Classification::Call { .. } => Expected::Call,
            Classification::Reject { reply, cause } => {
                assert_eq!(Some(reply.xid), cause.xid());
                Expected::Reject(reply.body)
            }
            Classification::Drop(_) => Expected::Drop,
        }
    }

    #[test]
    fn malformed_calls_table() {
        let good = getattr_call_with_auth_sys();
        let bad_cred = || Expected::Reject(ReplyBody::auth_error(AuthStat::BadCred));
        let cases: Vec<(&str, Vec<u8>, Expected)> = vec![
            ("empty record", vec![], Expected::Drop),
            ("three bytes", vec![0, 0, 0], Expected::Drop),
            ("only an xid", good[..4].to_vec(), Expected::Drop),
            ("a reply", with_word(&good, 1, REPLY), Expected::Drop),
            ("message type 7", with_word(&good, 1, 7), Expected::Drop),
            ("cut before rpcvers", good[..8].to_vec(), Expected::Drop),
            (
                "rpc version 3",
                with_word(&good, 2, 3),
                Expected::Reject(ReplyBody::Denied(RejectedReply::RpcMismatch {
                    low: 2,
                    high: 2,
                })),
            ),
            (
                "rpc version 1, cut right after it",
                with_word(&good, 2, 1)[..12].to_vec(),
                Expected::Reject(ReplyBody::Denied(RejectedReply::RpcMismatch {
                    low: 2,
                    high: 2,
                })),
            ),
            ("cut in prog", good[..14].to_vec(), Expected::Drop),
            ("cut after proc", good[..24].to_vec(), bad_cred()),
            ("cut in cred body", good[..40].to_vec(), bad_cred()),
            (
                "cred body over 400 bytes",
                with_word(&good, 7, 404),
                bad_cred(),
            ),
            ("400-byte credential", gss_call(400, 0), Expected::Call),
            (
                "401-byte credential, all present",
                gss_call(401, 0),
                bad_cred(),
            ),
            ("400-byte verifier", gss_call(0, 400), Expected::Call),
            (
                "401-byte verifier, all present",
                gss_call(0, 401),
                Expected::Reject(ReplyBody::auth_error(AuthStat::BadVerf)),
            ),
            (
                "cred body longer than the record",
                with_word(&good, 7, 396),
                bad_cred(),
            ),
            (
                // The body shrinks to 36 bytes: the last gid is cut off inside the body.
                "AUTH_SYS body too short for its gids",
                with_word(&good, 7, 36),
                bad_cred(),
            ),
            (
                "machinename claims 256 bytes, has 8",
                with_word(&good, 9, 256),
                bad_cred(),
            ),
            (
                // Short input would be refused anyway; here the body really holds 17 gids.
                "17 gids, all present",
                auth_sys_call(0, 17),
                bad_cred(),
            ),
            ("16 gids, all present", auth_sys_call(0, 16), Expected::Call),
            ("256-byte machinename", auth_sys_call(256, 0), bad_cred()),
            (
                "255-byte machinename",
                auth_sys_call(255, 0),
                Expected::Call,
            ),
            (
                "17 gids claimed, 3 present",
                with_word(&good, 14, 17),
                bad_cred(),
            ),
            (
                // Claims 2 gids where 3 are present: a trailing word in the body.
                "trailing bytes in the AUTH_SYS body",
                with_word(&good, 14, 2),
                bad_cred(),
            ),
            (
                "cut in verifier",
                good[..good.len() - 16].to_vec(),
                Expected::Reject(ReplyBody::auth_error(AuthStat::BadVerf)),
            ),
            (
                "verifier over 400 bytes",
                with_word(&good, 19, 401),
                Expected::Reject(ReplyBody::auth_error(AuthStat::BadVerf)),
            ),
            (
                // The handler, not the header parser, judges arguments.
                "garbage arguments",
                [&good[..good.len() - 12], &[0xff; 3]].concat(),
                Expected::Call,
            ),
            (
                // The flavor is judged by `dispatch`, not here.
                "unsupported flavor RPCSEC_GSS, empty body",
                [&with_word(&good, 6, RPCSEC_GSS)[..28], &[0; 12]].concat(),
                Expected::Call,
            ),
            ("the well-formed call", good.clone(), Expected::Call),
        ];
        for (name, record, expected) in cases {
            assert_eq!(outcome(&record), expected, "{name}");
        }
    }

    #[test]
    fn unsupported_flavors_are_kept_by_number() {
        let record = [
            &[0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 2][..], // xid 9, CALL, rpcvers 2
            &[0, 1, 0x86, 0xa3, 0, 0, 0, 4, 0, 0, 0, 1], // NFS v4 COMPOUND
            &[0, 0, 0, 6, 0, 0, 0, 4, 0xca, 0xfe, 0xba, 0xbe], // RPCSEC_GSS, 4-byte body
            &[0, 0, 0, 6, 0, 0, 0, 0],                 // verifier RPCSEC_GSS, empty
        ]
        .concat();
        let Classification::Call { call, args_offset } = classify(&record) else {
            panic!("not a call");
        };
        assert_eq!(call.credential, Credential::Unsupported(RPCSEC_GSS));
        assert_eq!(call.verifier.flavor(), RPCSEC_GSS);
        assert_eq!(args_offset, record.len());
    }

    #[test]
    fn reply_encodings_table() {
        let cases: Vec<(ReplyBody, Vec<u32>)> = vec![
            (ReplyBody::success(), vec![0, 0, 0, 0]),
            (
                ReplyBody::accepted(AcceptStatus::ProgUnavail),
                vec![0, 0, 0, 1],
            ),
            (
                ReplyBody::accepted(AcceptStatus::ProgMismatch { low: 3, high: 4 }),
                vec![0, 0, 0, 2, 3, 4],
            ),
            (
                ReplyBody::accepted(AcceptStatus::ProcUnavail),
                vec![0, 0, 0, 3],
            ),
            (
                ReplyBody::accepted(AcceptStatus::GarbageArgs),
                vec![0, 0, 0, 4],
            ),
            (
                ReplyBody::accepted(AcceptStatus::SystemErr),
                vec![0, 0, 0, 5],
            ),
            (
                ReplyBody::Denied(RejectedReply::RpcMismatch { low: 2, high: 2 }),
                vec![1, 0, 2, 2],
            ),
            (ReplyBody::auth_error(AuthStat::BadCred), vec![1, 1, 1]),
            (ReplyBody::auth_error(AuthStat::TooWeak), vec![1, 1, 5]),
        ];
        for (body, words_after_msg_type) in cases {
            let message = encode_reply(0xabcd, &body, &[]);
            let expected: Vec<u8> = [0xabcd, REPLY]
                .iter()
                .chain(&words_after_msg_type)
                .flat_map(|word| word.to_be_bytes())
                .collect();
            assert_eq!(message, expected, "{body:?}");
            let (decoded, results_offset) = decode_reply(&message).unwrap();
            assert_eq!(decoded, ReplyHeader { xid: 0xabcd, body }, "round trip");
            assert_eq!(results_offset, message.len());
        }
    }

    #[test]
    fn success_results_follow_the_header() {
        let message = encode_reply(7, &ReplyBody::success(), &[0, 0, 0, 1, 0, 0, 0, 2]);
        let (header, results_offset) = decode_reply(&message).unwrap();
        assert_eq!(header.body, ReplyBody::success());
        assert_eq!(&message[results_offset..], &[0, 0, 0, 1, 0, 0, 0, 2]);
    }

    #[test]
    fn malformed_replies_are_errors() {
        let ok = encode_reply(1, &ReplyBody::auth_error(AuthStat::BadCred), &[]);
        assert!(matches!(
            decode_reply(&with_word(&ok, 1, CALL)),
            Err(ReplyError::NotAReply {
                xid: 1,
                message_type: 0
            })
        ));
        assert!(matches!(
            decode_reply(&with_word(&ok, 2, 2)),
            Err(ReplyError::Xdr(XdrError::BadEnum {
                name: "reply_stat",
                ..
            }))
        ));
        assert!(matches!(
            decode_reply(&with_word(&ok, 3, 2)),
            Err(ReplyError::Xdr(XdrError::BadEnum {
                name: "reject_stat",
                ..
            }))
        ));
        assert!(matches!(
            decode_reply(&with_word(&ok, 4, 15)),
            Err(ReplyError::Xdr(XdrError::BadEnum {
                name: "auth_stat",
                ..
            }))
        ));
        let accepted = encode_reply(1, &ReplyBody::success(), &[]);
        assert!(matches!(
            decode_reply(&with_word(&accepted, 5, 6)),
            Err(ReplyError::Xdr(XdrError::BadEnum {
                name: "accept_stat",
                ..
            }))
        ));
        assert!(matches!(
            decode_reply(&accepted[..accepted.len() - 1]),
            Err(ReplyError::Xdr(XdrError::ShortInput { .. }))
        ));
    }

    #[test]
    fn authenticators_are_bounded_on_construction() {
        assert!(OpaqueAuth::new(RPCSEC_GSS, vec![0; 400]).is_ok());
        assert!(OpaqueAuth::new(RPCSEC_GSS, vec![0; 401]).is_err());
        let too_many_gids = Credential::Sys(AuthSys {
            stamp: 0,
            machinename: Vec::new(),
            uid: 0,
            gid: 0,
            gids: vec![0; 17],
        });
        assert!(
            too_many_gids
                .encode(&mut Encoder::new(&mut Vec::new()))
                .is_err()
        );
    }
}
