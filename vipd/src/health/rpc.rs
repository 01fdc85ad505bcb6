//! A probe that a local ONC-RPC server answers: one NULL call (procedure 0) over TCP, as
//! `rpcinfo -t HOST nfs 3` does. Unlike a bare connect it proves that the server reads requests,
//! dispatches them and writes replies: a server whose workers are all stuck accepts connections
//! but fails this.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::Probe;

/// The NFS program number.
pub const NFS_PROGRAM: u32 = 100_003;

/// The largest reply to a NULL call this probe reads (a reply carries a verifier of at most 400
/// bytes and no results).
const MAX_REPLY: usize = 512;

/// Calls procedure 0 of `program` version `version` at `address` within `timeout`.
#[derive(Debug)]
pub struct RpcNullProbe {
    name: String,
    address: SocketAddr,
    program: u32,
    version: u32,
    timeout: Duration,
    xid: AtomicU32,
}

impl RpcNullProbe {
    /// A probe called `name` (for example `nfs`) of the server at `address`, usually loopback.
    /// A zero `timeout` counts as one millisecond.
    pub fn new(
        name: &str,
        address: SocketAddr,
        program: u32,
        version: u32,
        timeout: Duration,
    ) -> RpcNullProbe {
        RpcNullProbe {
            name: format!("{name} {address}"),
            address,
            program,
            version,
            timeout: timeout.max(Duration::from_millis(1)),
            xid: AtomicU32::new(0x7670_0000),
        }
    }

    fn call(&self) -> io::Result<()> {
        let xid = self.xid.fetch_add(1, Ordering::Relaxed);
        let mut stream = TcpStream::connect_timeout(&self.address, self.timeout)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        stream.set_nodelay(true)?;
        stream.write_all(&null_call(xid, self.program, self.version))?;
        let mut marker = [0u8; 4];
        stream.read_exact(&mut marker)?;
        let marker = u32::from_be_bytes(marker);
        let length = usize::try_from(marker & 0x7fff_ffff).unwrap_or(usize::MAX);
        if marker & 0x8000_0000 == 0 || length > MAX_REPLY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected record marker {marker:#010x}"),
            ));
        }
        let mut reply = vec![0u8; length];
        stream.read_exact(&mut reply)?;
        check_reply(&reply, xid)
            .map_err(|reason| io::Error::new(io::ErrorKind::InvalidData, reason))
    }
}

impl Probe for RpcNullProbe {
    fn name(&self) -> &str {
        &self.name
    }

    fn check(&self) -> Result<(), String> {
        self.call().map_err(|error| {
            let reason = match error.kind() {
                // A read timeout shows as EAGAIN on Linux.
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    format!("no reply within {:?}", self.timeout)
                }
                _ => error.to_string(),
            };
            format!(
                "no answer to an RPC NULL call (program {} version {}) at {}: {reason}",
                self.program, self.version, self.address
            )
        })
    }
}

/// A NULL call with AUTH_NONE, in one record (RFC 5531).
pub fn null_call(xid: u32, program: u32, version: u32) -> Vec<u8> {
    // xid, CALL, rpcvers 2, prog, vers, proc 0, cred AUTH_NONE (flavor, length), verf likewise
    let words = [xid, 0, 2, program, version, 0, 0, 0, 0, 0];
    let mut call = Vec::with_capacity(4 + words.len() * 4);
    call.extend_from_slice(&(0x8000_0000u32 | (words.len() as u32 * 4)).to_be_bytes());
    for word in words {
        call.extend_from_slice(&word.to_be_bytes());
    }
    call
}

/// Checks that `reply` (one record, without its marker) accepts call `xid` with SUCCESS.
pub fn check_reply(reply: &[u8], xid: u32) -> Result<(), String> {
    let word = |index: usize| -> Result<u32, String> {
        reply
            .get(index * 4..index * 4 + 4)
            .map(|bytes| u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
            .ok_or_else(|| format!("the reply is cut short at {} bytes", reply.len()))
    };
    if word(0)? != xid {
        return Err(format!(
            "the reply answers xid {:#x}, not {xid:#x}",
            word(0)?
        ));
    }
    if word(1)? != 1 {
        return Err("the answer is not a reply".to_owned());
    }
    if word(2)? != 0 {
        return Err("the call was denied".to_owned());
    }
    // verifier: flavor, then opaque body padded to 4 bytes
    let verifier_len = usize::try_from(word(4)?).unwrap_or(usize::MAX);
    if verifier_len > 400 {
        return Err(format!("the reply's verifier is {verifier_len} bytes long"));
    }
    let status = word(5 + verifier_len.div_ceil(4))?;
    match status {
        0 => Ok(()),
        1 => Err("PROG_UNAVAIL: the server does not serve this program".to_owned()),
        2 => Err("PROG_MISMATCH: the server does not serve this version".to_owned()),
        3 => Err("PROC_UNAVAIL".to_owned()),
        4 => Err("GARBAGE_ARGS".to_owned()),
        other => Err(format!("accept status {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|word| word.to_be_bytes()).collect()
    }

    #[test]
    fn the_call_is_one_record_of_ten_words() {
        let call = null_call(7, NFS_PROGRAM, 3);
        assert_eq!(call.len(), 44);
        assert_eq!(call[..4], (0x8000_0000u32 | 40).to_be_bytes());
        assert_eq!(call[4..8], 7u32.to_be_bytes());
        assert_eq!(call[16..20], NFS_PROGRAM.to_be_bytes());
    }

    #[test]
    fn replies_are_judged_by_xid_kind_and_status() {
        let cases: &[(&[u32], Result<(), &str>)] = &[
            (&[9, 1, 0, 0, 0, 0], Ok(())),
            // a verifier with 5 bytes of body takes 2 words
            (&[9, 1, 0, 1, 5, 0, 0, 0], Ok(())),
            (&[8, 1, 0, 0, 0, 0], Err("xid")),
            (&[9, 0, 0, 0, 0, 0], Err("not a reply")),
            (&[9, 1, 1, 0, 0, 0], Err("denied")),
            (&[9, 1, 0, 0, 0, 1], Err("PROG_UNAVAIL")),
            (&[9, 1, 0, 0, 0, 2], Err("PROG_MISMATCH")),
            (&[9, 1, 0, 0, 0], Err("cut short")),
            (&[9, 1, 0, 0, 0xffff_ffff, 0], Err("verifier")),
        ];
        for (reply, expected) in cases {
            let result = check_reply(&words(reply), 9);
            match expected {
                Ok(()) => assert_eq!(result, Ok(()), "{reply:?}"),
                Err(part) => {
                    let error = result.expect_err("should fail");
                    assert!(error.contains(part), "{reply:?}: {error}");
                }
            }
        }
    }
}
