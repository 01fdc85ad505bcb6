//! The NFS side of a vipgate node: an ONC-RPC core, portmap, MOUNT, NFSv3 and NFSv4 serving the
//! node's local mount of the replicated volume (see `ARCHITECTURE.md`).
//!
//! Nothing is served from here yet (the NFSv3 gateway is issue #4). What exists is the pure,
//! I/O-free wire layer of the ONC-RPC core, on which every program will be served:
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
//! A connection task will drive them in this order for every chunk read from the socket:
//!
//! 1. feed the bytes to [`record::RecordDecoder::decode`] until it yields no more records
//!    (an error closes the connection);
//! 2. [`rpc::classify`] each record: drop it, send the error reply, or go on with the call;
//! 3. [`dispatch::dispatch`] the call against the registered programs: send the rejection, or
//!    run the procedure on the arguments at `args_offset`, answering GARBAGE_ARGS if they do
//!    not decode;
//! 4. build the reply with [`rpc::ReplyHeader::encode`] followed by the results, and frame it
//!    with [`record::encode_record`].

pub mod dispatch;
pub mod record;
pub mod rpc;
pub mod xdr;
