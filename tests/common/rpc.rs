//! A minimal NFSv3 client for the lab tests that talk to a VIP directly: one call at a time on
//! one connection, AUTH_SYS root (squashed to the export's anonymous user), with the errors of
//! a lost connection or a timeout returned rather than panicking, for tests that cause them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use gateway::record::{RecordDecoder, encode_record};
use gateway::rpc::{AuthSys, Call, Credential, OpaqueAuth, decode_reply};
use gateway::xdr::Encoder;

/// The client.
pub struct Rpc {
    pub stream: TcpStream,
    pub xid: u32,
}

impl Rpc {
    pub fn connect(address: SocketAddr) -> Rpc {
        Rpc::try_connect(address, Duration::from_secs(5), Duration::from_secs(20)).unwrap()
    }

    /// A connection made within `connect` whose replies may take up to `reply` each.
    pub fn try_connect(
        address: SocketAddr,
        connect: Duration,
        reply: Duration,
    ) -> std::io::Result<Rpc> {
        let stream = TcpStream::connect_timeout(&address, connect)?;
        stream.set_read_timeout(Some(reply))?;
        Ok(Rpc { stream, xid: 1 })
    }

    /// Calls and returns the results of an accepted reply.
    pub fn call(&mut self, program: u32, procedure: u32, args: &[u8]) -> Vec<u8> {
        self.try_call(program, procedure, args).unwrap()
    }

    /// [`Rpc::call`], with a lost connection, a timeout or a bad reply as an error.
    pub fn try_call(
        &mut self,
        program: u32,
        procedure: u32,
        args: &[u8],
    ) -> Result<Vec<u8>, String> {
        self.xid += 1;
        let mut message = Vec::new();
        Call {
            xid: self.xid,
            program,
            version: 3,
            procedure,
            credential: Credential::Sys(AuthSys {
                stamp: 0,
                machinename: b"client1".to_vec(),
                uid: 0,
                gid: 0,
                gids: vec![],
            }),
            verifier: OpaqueAuth::none(),
        }
        .encode(&mut Encoder::new(&mut message))
        .map_err(|error| error.to_string())?;
        message.extend_from_slice(args);
        let mut framed = Vec::new();
        encode_record(&message, 1 << 20, &mut framed);
        self.stream
            .write_all(&framed)
            .map_err(|error| format!("send: {error}"))?;
        let mut decoder = RecordDecoder::new(2 << 20);
        let mut buffer = vec![0u8; 65536];
        loop {
            let length = self
                .stream
                .read(&mut buffer)
                .map_err(|error| format!("receive: {error}"))?;
            if length == 0 {
                return Err("connection closed".into());
            }
            let record = decoder
                .decode(&mut &buffer[..length])
                .map_err(|error| format!("record: {error}"))?;
            if let Some(record) = record {
                let (header, offset) =
                    decode_reply(&record).map_err(|error| format!("reply: {error:?}"))?;
                if header.xid != self.xid {
                    return Err(format!("reply to xid {}, not {}", header.xid, self.xid));
                }
                return Ok(record[offset..].to_vec());
            }
        }
    }
}

/// Appends XDR variable-length opaque data.
pub fn opaque(encoder: &mut Encoder<'_>, bytes: &[u8]) {
    encoder.opaque(bytes, u32::MAX).unwrap();
}
