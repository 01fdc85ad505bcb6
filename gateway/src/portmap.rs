//! portmap version 2 (RFC 1833 §3) and rpcbind versions 3 and 4 (RFC 1833 §2), answered from
//! the gateway's own fixed table, so that a stock `mount -t nfs -o vers=3 VIP:/export` and libnfs
//! find MOUNT and NFS without port options.
//!
//! The table is what this node serves: portmap itself, MOUNT v3 and NFS v3, over TCP (and UDP
//! when the serving loop has datagram sockets). Registrations from other programs (SET/UNSET)
//! are refused, and CALLIT/INDIRECT are not forwarded: an open forwarder is an amplification
//! tool, and nothing the gateway serves needs one.
//!
//! rpcbind answers GETADDR with a universal address. The address part is the one the query
//! arrived on when its family matches the requested netid, which is the VIP the client used,
//! so the answer is right whichever VIP the node holds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::rpc::{Call, MOUNT_PROGRAM, NFS_PROGRAM, PORTMAP_PROGRAM};
use crate::service::{Connection, ProcError, Service};
use crate::xdr::{Decoder, Encoder};

/// IP protocol numbers portmap v2 uses.
pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_UDP: u32 = 17;

/// Longest netid, universal address or owner string we decode (rpcbind strings are `<>`).
const MAX_STRING: u32 = 256;

/// One (program, version, transport) this node serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub program: u32,
    pub version: u32,
    pub protocol: u32,
    pub port: u16,
}

/// The node's table for NFS on `nfs_port` and portmap on `portmap_port`, on TCP, and with
/// `udp` portmap and MOUNT over UDP too (NFS stays TCP-only).
pub fn mappings(nfs_port: u16, portmap_port: u16, udp: bool) -> Vec<Mapping> {
    let mut table = Vec::new();
    let protocols: &[u32] = if udp {
        &[IPPROTO_TCP, IPPROTO_UDP]
    } else {
        &[IPPROTO_TCP]
    };
    for &protocol in protocols {
        for version in 2..=4 {
            table.push(Mapping {
                program: PORTMAP_PROGRAM,
                version,
                protocol,
                port: portmap_port,
            });
        }
    }
    for program in [MOUNT_PROGRAM, NFS_PROGRAM] {
        for &protocol in protocols {
            if program == NFS_PROGRAM && protocol == IPPROTO_UDP {
                continue;
            }
            table.push(Mapping {
                program,
                version: 3,
                protocol,
                port: nfs_port,
            });
        }
    }
    table
}

/// portmap v2 GETPORT: the port, or 0 when not served.
pub fn getport(table: &[Mapping], program: u32, version: u32, protocol: u32) -> u16 {
    table
        .iter()
        .find(|mapping| {
            mapping.program == program && mapping.version == version && mapping.protocol == protocol
        })
        .map_or(0, |mapping| mapping.port)
}

/// A netid's protocol and whether it is IPv6: `tcp`, `tcp6`, `udp`, `udp6`.
fn parse_netid(netid: &[u8]) -> Option<(u32, bool)> {
    match netid {
        b"tcp" => Some((IPPROTO_TCP, false)),
        b"tcp6" => Some((IPPROTO_TCP, true)),
        b"udp" => Some((IPPROTO_UDP, false)),
        b"udp6" => Some((IPPROTO_UDP, true)),
        _ => None,
    }
}

fn netid(protocol: u32, v6: bool) -> &'static str {
    match (protocol, v6) {
        (IPPROTO_UDP, false) => "udp",
        (IPPROTO_UDP, true) => "udp6",
        (_, false) => "tcp",
        (_, true) => "tcp6",
    }
}

/// The universal address (RFC 5665 §5.2.3.3) of `address`: `h1.h2.h3.h4.p1.p2` for IPv4,
/// `x:x::x.p1.p2` for IPv6.
pub fn universal_address(address: SocketAddr) -> String {
    let port = address.port();
    format!(
        "{}.{}.{}",
        address.ip().to_canonical(),
        port >> 8,
        port & 0xff
    )
}

/// rpcbind GETADDR: the universal address of (program, version, netid) for a query that
/// arrived on `local`; empty when not served. Any version of the program answers unless
/// `exact_version` (rpcbind v4 GETVERSADDR), as rpcbind does.
pub fn getaddr(
    table: &[Mapping],
    program: u32,
    version: u32,
    netid: &[u8],
    local: SocketAddr,
    exact_version: bool,
) -> String {
    let Some((protocol, v6)) = parse_netid(netid) else {
        return String::new();
    };
    let candidates = table
        .iter()
        .filter(|mapping| mapping.program == program && mapping.protocol == protocol);
    let mut chosen = None;
    for mapping in candidates {
        if mapping.version == version {
            chosen = Some(mapping);
            break;
        }
        if !exact_version && chosen.is_none() {
            chosen = Some(mapping);
        }
    }
    let Some(mapping) = chosen else {
        return String::new();
    };
    let local_ip = local.ip().to_canonical();
    let ip = match (v6, local_ip) {
        (false, IpAddr::V4(_)) | (true, IpAddr::V6(_)) => local_ip,
        (false, IpAddr::V6(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (true, IpAddr::V4(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    universal_address(SocketAddr::new(ip, mapping.port))
}

/// The decoded arguments of one portmap/rpcbind call, borrowing from the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Args<'a> {
    /// NULL, in every version.
    Null,
    /// SET or UNSET, in every version. Their arguments are not read: the answer is FALSE
    /// whatever they say.
    Register,
    /// portmap v2 GETPORT: a `mapping` whose port is ignored.
    GetPort {
        program: u32,
        version: u32,
        protocol: u32,
    },
    /// portmap v2 DUMP.
    Dump,
    /// rpcbind v3/v4 GETADDR, or v4 GETVERSADDR when `exact_version`: an `rpcb` whose address
    /// and owner are read (they must be present) but ignored.
    GetAddr {
        program: u32,
        version: u32,
        netid: &'a [u8],
        exact_version: bool,
    },
    /// rpcbind v3/v4 DUMP.
    RpcbDump,
    /// rpcbind v3/v4 GETTIME.
    GetTime,
}

/// Decodes the arguments of `procedure` of portmap/rpcbind `version`: PROC_UNAVAIL for a
/// procedure this table does not answer, GARBAGE_ARGS for arguments that do not decode.
/// Bytes after the arguments are ignored. Never panics, whatever the bytes; allocates nothing.
pub fn decode_args(version: u32, procedure: u32, args: &[u8]) -> Result<Args<'_>, ProcError> {
    let decoder = &mut Decoder::new(args);
    Ok(match (version, procedure) {
        (_, 0) => Args::Null,
        (_, 1 | 2) => Args::Register,
        (2, 3) => {
            let program = decoder.u32()?;
            let version = decoder.u32()?;
            let protocol = decoder.u32()?;
            let _port = decoder.u32()?;
            Args::GetPort {
                program,
                version,
                protocol,
            }
        }
        (2, 4) => Args::Dump,
        (3 | 4, 3) | (4, 9) => {
            let program = decoder.u32()?;
            let version = decoder.u32()?;
            let netid = decoder.opaque(MAX_STRING)?;
            let _address = decoder.opaque(MAX_STRING)?;
            let _owner = decoder.opaque(MAX_STRING)?;
            Args::GetAddr {
                program,
                version,
                netid,
                exact_version: procedure == 9,
            }
        }
        (3 | 4, 4) => Args::RpcbDump,
        (3 | 4, 6) => Args::GetTime,
        _ => return Err(ProcError::ProcUnavail),
    })
}

/// Runs one portmap/rpcbind call, writing its results after the reply header in `out`.
pub fn call(
    service: &Service,
    connection: &Connection,
    call: &Call,
    args: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), ProcError> {
    let args = decode_args(call.version, call.procedure, args)?;
    let table = mappings(service.ports.nfs, service.ports.portmap, service.ports.udp);
    let encoder = &mut Encoder::new(out);
    match args {
        Args::Null => {}
        // SET and UNSET: this table is not open for registration.
        Args::Register => encoder.bool(false),
        Args::GetPort {
            program,
            version,
            protocol,
        } => encoder.u32(u32::from(getport(&table, program, version, protocol))),
        Args::Dump => {
            for mapping in &table {
                encoder.bool(true);
                encoder.u32(mapping.program);
                encoder.u32(mapping.version);
                encoder.u32(mapping.protocol);
                encoder.u32(u32::from(mapping.port));
            }
            encoder.bool(false);
        }
        Args::GetAddr {
            program,
            version,
            netid,
            exact_version,
        } => {
            let address = getaddr(
                &table,
                program,
                version,
                netid,
                connection.local,
                exact_version,
            );
            let _ = encoder.string(&address, MAX_STRING);
        }
        Args::RpcbDump => {
            for mapping in &table {
                for v6 in [false, true] {
                    let wildcard = if v6 {
                        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                    } else {
                        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                    };
                    encoder.bool(true);
                    encoder.u32(mapping.program);
                    encoder.u32(mapping.version);
                    let _ = encoder.string(netid(mapping.protocol, v6), MAX_STRING);
                    let address = universal_address(SocketAddr::new(wildcard, mapping.port));
                    let _ = encoder.string(&address, MAX_STRING);
                    let _ = encoder.string("superuser", MAX_STRING);
                }
            }
            encoder.bool(false);
        }
        Args::GetTime => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs());
            encoder.u32(u32::try_from(now).unwrap_or(u32::MAX));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getport_table() {
        let table = mappings(2049, 111, false);
        let cases = [
            (MOUNT_PROGRAM, 3, IPPROTO_TCP, 2049),
            (NFS_PROGRAM, 3, IPPROTO_TCP, 2049),
            (NFS_PROGRAM, 4, IPPROTO_TCP, 0),
            (NFS_PROGRAM, 3, IPPROTO_UDP, 0),
            (MOUNT_PROGRAM, 1, IPPROTO_TCP, 0),
            (PORTMAP_PROGRAM, 2, IPPROTO_TCP, 111),
            (100_021, 4, IPPROTO_TCP, 0),
        ];
        for (program, version, protocol, port) in cases {
            assert_eq!(
                getport(&table, program, version, protocol),
                port,
                "{program} v{version} proto {protocol}"
            );
        }
    }

    #[test]
    fn getaddr_table() {
        let table = mappings(2049, 111, false);
        let v4: SocketAddr = "192.0.2.101:111".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::101]:111".parse().unwrap();
        let cases: Vec<(u32, u32, &str, SocketAddr, bool, &str)> = vec![
            (NFS_PROGRAM, 3, "tcp", v4, false, "192.0.2.101.8.1"),
            (NFS_PROGRAM, 3, "tcp6", v6, false, "2001:db8::101.8.1"),
            // Any version for GETADDR, only the exact one for GETVERSADDR.
            (NFS_PROGRAM, 4, "tcp", v4, false, "192.0.2.101.8.1"),
            (NFS_PROGRAM, 4, "tcp", v4, true, ""),
            (MOUNT_PROGRAM, 3, "tcp", v4, false, "192.0.2.101.8.1"),
            (NFS_PROGRAM, 3, "udp", v4, false, ""),
            (NFS_PROGRAM, 3, "rdma", v4, false, ""),
            // A family other than the query's gets the wildcard.
            (NFS_PROGRAM, 3, "tcp6", v4, false, "::.8.1"),
            (PORTMAP_PROGRAM, 4, "tcp", v4, true, "192.0.2.101.0.111"),
        ];
        for (program, version, netid, local, exact, expected) in cases {
            assert_eq!(
                getaddr(&table, program, version, netid.as_bytes(), local, exact),
                expected,
                "{program} v{version} {netid} exact={exact}"
            );
        }
    }

    fn words(values: &[u32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|value| value.to_be_bytes())
            .collect()
    }

    #[test]
    fn arguments_table() {
        let rpcb = [
            &words(&[NFS_PROGRAM, 3, 3])[..],
            b"tcp\0",
            &words(&[0, 0])[..], // empty address and owner
        ]
        .concat();
        let getaddr = |exact_version| {
            Ok(Args::GetAddr {
                program: NFS_PROGRAM,
                version: 3,
                netid: b"tcp",
                exact_version,
            })
        };
        let long_netid = words(&[NFS_PROGRAM, 3, MAX_STRING + 1]);
        type Expected<'a> = Result<Args<'a>, ProcError>;
        let cases: Vec<(u32, u32, Vec<u8>, Expected<'_>)> = vec![
            (2, 0, vec![], Ok(Args::Null)),
            (4, 0, vec![], Ok(Args::Null)),
            // SET and UNSET are refused whatever their arguments say.
            (2, 1, vec![], Ok(Args::Register)),
            (3, 2, vec![0xff], Ok(Args::Register)),
            (
                2,
                3,
                words(&[MOUNT_PROGRAM, 3, IPPROTO_TCP, 99]),
                Ok(Args::GetPort {
                    program: MOUNT_PROGRAM,
                    version: 3,
                    protocol: IPPROTO_TCP,
                }),
            ),
            (
                2,
                3,
                words(&[MOUNT_PROGRAM, 3, IPPROTO_TCP]),
                Err(ProcError::GarbageArgs),
            ),
            (2, 4, vec![], Ok(Args::Dump)),
            (2, 5, vec![], Err(ProcError::ProcUnavail)),
            (3, 3, rpcb.clone(), getaddr(false)),
            (4, 3, rpcb.clone(), getaddr(false)),
            (4, 9, rpcb.clone(), getaddr(true)),
            // GETVERSADDR is a version 4 procedure only.
            (3, 9, rpcb.clone(), Err(ProcError::ProcUnavail)),
            // The owner must be present even though it is ignored.
            (
                4,
                3,
                rpcb[..rpcb.len() - 4].to_vec(),
                Err(ProcError::GarbageArgs),
            ),
            (4, 3, long_netid, Err(ProcError::GarbageArgs)),
            (3, 4, vec![], Ok(Args::RpcbDump)),
            (4, 6, vec![], Ok(Args::GetTime)),
            (2, 6, vec![], Err(ProcError::ProcUnavail)),
            (4, 12, vec![], Err(ProcError::ProcUnavail)),
        ];
        for (version, procedure, bytes, expected) in cases {
            assert_eq!(
                decode_args(version, procedure, &bytes),
                expected,
                "v{version} procedure {procedure}"
            );
        }
    }
}
