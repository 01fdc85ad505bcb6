//! Is smbd answering? An SMB2 NEGOTIATE over direct TCP (port 445): the request encoder and the
//! response check are pure; [`NegotiateProbe`] sends one request with timeouts. A server that
//! accepts connections but whose request loop is stuck fails this, as an RPC NULL call would.
//!
//! Wire format ([MS-SMB2] 2.2.1 and 2.2.3/2.2.4): each message follows a 4-byte direct-TCP
//! header (a zero byte, then the length in 24 bits, big-endian); the 64-byte SMB2 header starts
//! with `0xFE 'S' 'M' 'B'` and is little-endian. The request offers the dialects 2.0.2, 2.1,
//! 3.0 and 3.0.2 — not 3.1.1, which would need negotiate contexts.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The protocol id every SMB2 header starts with.
pub const SMB2_MAGIC: [u8; 4] = [0xFE, b'S', b'M', b'B'];
/// The dialects the probe offers, oldest first.
pub const DIALECTS: [u16; 4] = [0x0202, 0x0210, 0x0300, 0x0302];

const HEADER_LEN: usize = 64;
const NEGOTIATE: u16 = 0;
const FLAG_SERVER_TO_REDIR: u32 = 1;
/// The StructureSize of a NEGOTIATE response body.
const RESPONSE_STRUCTURE_SIZE: u16 = 65;
/// What the check reads of a response: the header and the first 8 bytes of the body
/// (StructureSize, SecurityMode, DialectRevision, NegotiateContextCount).
const RESPONSE_PREFIX: usize = HEADER_LEN + 8;

/// A NEGOTIATE request with its direct-TCP header.
pub fn negotiate_request(message_id: u64, client_guid: [u8; 16]) -> Vec<u8> {
    let mut message = Vec::with_capacity(4 + HEADER_LEN + 36 + 2 * DIALECTS.len());
    message.extend_from_slice(&[0; 4]); // direct-TCP header, filled in below
    message.extend_from_slice(&SMB2_MAGIC);
    message.extend_from_slice(&(HEADER_LEN as u16).to_le_bytes()); // StructureSize
    message.extend_from_slice(&0u16.to_le_bytes()); // CreditCharge
    message.extend_from_slice(&0u32.to_le_bytes()); // Status
    message.extend_from_slice(&NEGOTIATE.to_le_bytes()); // Command
    message.extend_from_slice(&1u16.to_le_bytes()); // CreditRequest
    message.extend_from_slice(&0u32.to_le_bytes()); // Flags
    message.extend_from_slice(&0u32.to_le_bytes()); // NextCommand
    message.extend_from_slice(&message_id.to_le_bytes()); // MessageId
    message.extend_from_slice(&0u32.to_le_bytes()); // Reserved (ProcessId)
    message.extend_from_slice(&0u32.to_le_bytes()); // TreeId
    message.extend_from_slice(&0u64.to_le_bytes()); // SessionId
    message.extend_from_slice(&[0; 16]); // Signature
    message.extend_from_slice(&36u16.to_le_bytes()); // StructureSize
    message.extend_from_slice(&(DIALECTS.len() as u16).to_le_bytes()); // DialectCount
    message.extend_from_slice(&1u16.to_le_bytes()); // SecurityMode: signing enabled
    message.extend_from_slice(&0u16.to_le_bytes()); // Reserved
    message.extend_from_slice(&0u32.to_le_bytes()); // Capabilities
    message.extend_from_slice(&client_guid); // ClientGuid
    message.extend_from_slice(&0u64.to_le_bytes()); // ClientStartTime
    for dialect in DIALECTS {
        message.extend_from_slice(&dialect.to_le_bytes());
    }
    let length = (message.len() - 4) as u32;
    message[1..4].copy_from_slice(&length.to_be_bytes()[1..]);
    message
}

/// Why a response is not a successful NEGOTIATE answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiateError {
    #[error("the direct-TCP header has type {0:#04x}, not a session message")]
    NotSessionMessage(u8),
    #[error("the response is {0} bytes, too short for an SMB2 NEGOTIATE response")]
    Short(usize),
    #[error("the response does not start with the SMB2 protocol id (got {0:02x?})")]
    NotSmb2([u8; 4]),
    #[error("the response answers command {0}, not NEGOTIATE")]
    WrongCommand(u16),
    #[error("the response answers message {got}, not {expected}")]
    WrongMessage { expected: u64, got: u64 },
    #[error("the message is not marked as a server response")]
    NotResponse,
    #[error("the server answered with status {0:#010x}")]
    Status(u32),
    #[error("the response body has structure size {0}, not 65")]
    WrongStructure(u16),
    #[error("the server chose dialect {0:#06x}, which was not offered")]
    UnofferedDialect(u16),
}

/// The length of a direct-TCP message from its 4-byte header.
pub fn message_length(header: [u8; 4]) -> Result<usize, NegotiateError> {
    if header[0] != 0 {
        return Err(NegotiateError::NotSessionMessage(header[0]));
    }
    Ok(usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]))
}

/// Checks the start of a NEGOTIATE response (the message without its direct-TCP header, at
/// least [`RESPONSE_PREFIX`] bytes of it) to request `message_id`; returns the chosen dialect.
pub fn check_negotiate_response(response: &[u8], message_id: u64) -> Result<u16, NegotiateError> {
    if response.len() < RESPONSE_PREFIX {
        return Err(NegotiateError::Short(response.len()));
    }
    let u16_at = |at: usize| u16::from_le_bytes([response[at], response[at + 1]]);
    let u32_at = |at: usize| {
        u32::from_le_bytes([
            response[at],
            response[at + 1],
            response[at + 2],
            response[at + 3],
        ])
    };
    let magic = [response[0], response[1], response[2], response[3]];
    if magic != SMB2_MAGIC {
        return Err(NegotiateError::NotSmb2(magic));
    }
    let command = u16_at(12);
    if command != NEGOTIATE {
        return Err(NegotiateError::WrongCommand(command));
    }
    if u32_at(16) & FLAG_SERVER_TO_REDIR == 0 {
        return Err(NegotiateError::NotResponse);
    }
    let got = u64::from(u32_at(24)) | u64::from(u32_at(28)) << 32;
    if got != message_id {
        return Err(NegotiateError::WrongMessage {
            expected: message_id,
            got,
        });
    }
    let status = u32_at(8);
    if status != 0 {
        return Err(NegotiateError::Status(status));
    }
    let structure = u16_at(HEADER_LEN);
    if structure != RESPONSE_STRUCTURE_SIZE {
        return Err(NegotiateError::WrongStructure(structure));
    }
    let dialect = u16_at(HEADER_LEN + 4);
    if !DIALECTS.contains(&dialect) {
        return Err(NegotiateError::UnofferedDialect(dialect));
    }
    Ok(dialect)
}

/// Negotiates with the SMB server at `address` (usually 127.0.0.1:445) within `timeout` per
/// step. Blocking: run it on a thread of its own, as the node's health monitor does.
#[derive(Debug, Clone)]
pub struct NegotiateProbe {
    pub address: SocketAddr,
    pub timeout: Duration,
}

impl NegotiateProbe {
    /// Returns the dialect the server chose, or why it did not answer properly.
    pub fn negotiate(&self) -> Result<u16, String> {
        self.exchange()
            .map_err(|error| format!("no SMB2 NEGOTIATE answer at {}: {error}", self.address))
    }

    fn exchange(&self) -> io::Result<u16> {
        let timeout = self.timeout.max(Duration::from_millis(1));
        let mut stream = TcpStream::connect_timeout(&self.address, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let message_id = 0;
        stream.write_all(&negotiate_request(message_id, *b"vipgate-probe-00"))?;
        let mut header = [0u8; 4];
        stream.read_exact(&mut header)?;
        let length = message_length(header).map_err(invalid)?;
        if length < RESPONSE_PREFIX {
            return Err(invalid(NegotiateError::Short(length)));
        }
        // Only the fixed start is read; the security blob after it does not matter here.
        let mut response = [0u8; RESPONSE_PREFIX];
        stream.read_exact(&mut response)?;
        check_negotiate_response(&response, message_id).map_err(invalid)
    }
}

fn invalid(error: NegotiateError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response header and body start as Samba sends them, with `edit` applied.
    fn response(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&SMB2_MAGIC);
        bytes.extend_from_slice(&64u16.to_le_bytes());
        bytes.extend_from_slice(&1u16.to_le_bytes()); // CreditCharge
        bytes.extend_from_slice(&0u32.to_le_bytes()); // Status
        bytes.extend_from_slice(&0u16.to_le_bytes()); // Command
        bytes.extend_from_slice(&1u16.to_le_bytes()); // CreditResponse
        bytes.extend_from_slice(&1u32.to_le_bytes()); // Flags: SERVER_TO_REDIR
        bytes.extend_from_slice(&0u32.to_le_bytes()); // NextCommand
        bytes.extend_from_slice(&7u64.to_le_bytes()); // MessageId
        bytes.extend_from_slice(&[0; 28]); // Reserved, TreeId, SessionId, Signature... to 64
        bytes.truncate(64);
        bytes.resize(64, 0);
        bytes.extend_from_slice(&65u16.to_le_bytes()); // StructureSize
        bytes.extend_from_slice(&1u16.to_le_bytes()); // SecurityMode
        bytes.extend_from_slice(&0x0302u16.to_le_bytes()); // DialectRevision
        bytes.extend_from_slice(&0u16.to_le_bytes()); // NegotiateContextCount
        edit(&mut bytes);
        bytes
    }

    #[test]
    fn the_request_is_a_well_formed_negotiate() {
        let request = negotiate_request(7, [0xAB; 16]);
        let length = message_length([request[0], request[1], request[2], request[3]]).unwrap();
        assert_eq!(length, request.len() - 4);
        assert_eq!(length, 64 + 36 + 8);
        let body = &request[4..];
        assert_eq!(body[..4], SMB2_MAGIC);
        assert_eq!(body[4..6], 64u16.to_le_bytes());
        assert_eq!(body[12..14], 0u16.to_le_bytes(), "command NEGOTIATE");
        assert_eq!(body[24..32], 7u64.to_le_bytes(), "message id");
        assert_eq!(body[64..66], 36u16.to_le_bytes(), "structure size");
        assert_eq!(body[66..68], 4u16.to_le_bytes(), "dialect count");
        assert_eq!(body[76..92], [0xAB; 16], "client guid");
        assert_eq!(
            body[100..],
            [0x02, 0x02, 0x10, 0x02, 0x00, 0x03, 0x02, 0x03]
        );
    }

    #[test]
    fn responses() {
        let cases: Vec<(Vec<u8>, Result<u16, NegotiateError>)> = vec![
            (response(|_| {}), Ok(0x0302)),
            (
                response(|r| r[64 + 4..64 + 6].copy_from_slice(&0x0202u16.to_le_bytes())),
                Ok(0x0202),
            ),
            (response(|r| r.truncate(71)), Err(NegotiateError::Short(71))),
            (
                response(|r| r[..4].copy_from_slice(&[0xFF, b'S', b'M', b'B'])),
                Err(NegotiateError::NotSmb2([0xFF, b'S', b'M', b'B'])),
            ),
            (
                response(|r| r[12] = 1),
                Err(NegotiateError::WrongCommand(1)),
            ),
            (response(|r| r[16] = 0), Err(NegotiateError::NotResponse)),
            (
                response(|r| r[24] = 8),
                Err(NegotiateError::WrongMessage {
                    expected: 7,
                    got: 8,
                }),
            ),
            (
                response(|r| r[8..12].copy_from_slice(&0xC000_0022u32.to_le_bytes())),
                Err(NegotiateError::Status(0xC000_0022)),
            ),
            (
                response(|r| r[64] = 9),
                Err(NegotiateError::WrongStructure(9)),
            ),
            (
                response(|r| r[64 + 4..64 + 6].copy_from_slice(&0x0311u16.to_le_bytes())),
                Err(NegotiateError::UnofferedDialect(0x0311)),
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(check_negotiate_response(&bytes, 7), expected);
        }
    }

    #[test]
    fn direct_tcp_headers() {
        assert_eq!(message_length([0, 0, 0, 72]), Ok(72));
        assert_eq!(message_length([0, 0xFF, 0xFF, 0xFF]), Ok(0xFF_FFFF));
        assert_eq!(
            message_length([0x85, 0, 0, 0]),
            Err(NegotiateError::NotSessionMessage(0x85))
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_checked_without_panicking(bytes in proptest::collection::vec(0u8.., 0..200)) {
            let _ = check_negotiate_response(&bytes, 0);
        }
    }

    /// Against a fake server on loopback: a correct answer passes, a closed connection fails.
    #[test]
    fn probe_against_a_fake_server() {
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for answer in [true, false] {
                let (mut stream, _) = listener.accept().unwrap();
                let mut request = [0u8; 4 + 108];
                stream.read_exact(&mut request).unwrap();
                if answer {
                    let body = response(|r| {
                        r[24..32].copy_from_slice(&0u64.to_le_bytes());
                        r.extend_from_slice(&[0; 100]);
                    });
                    let mut framed = vec![0, 0, 0, body.len() as u8];
                    framed.extend_from_slice(&body);
                    stream.write_all(&framed).unwrap();
                }
            }
        });
        let probe = NegotiateProbe {
            address,
            timeout: Duration::from_secs(5),
        };
        assert_eq!(probe.negotiate(), Ok(0x0302));
        let error = probe.negotiate().unwrap_err();
        assert!(error.contains(&address.to_string()), "{error}");
        server.join().unwrap();
    }
}
