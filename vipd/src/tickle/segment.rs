//! Pure builders of the TCP segments a node sends on behalf of a VIP: the tickle ACK and the
//! RST, as whole IPv4 or IPv6 packets with correct checksums, ready for a raw socket that
//! includes its own IP header.
//!
//! A tickle ACK has sequence and acknowledgement numbers 0 (as CTDB's `ctdb_sys_send_tcp` sends
//! them), so it is outside the client's window: the client answers with an ACK carrying its real
//! numbers, the new owner of the VIP has no socket for it and answers that with a RST whose
//! sequence number is the client's acknowledgement number, which the client accepts. The
//! connection is reset at once instead of timing out minutes later.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::Connection;

const PROTOCOL_TCP: u8 = 6;
const TCP_HEADER_LEN: usize = 20;
const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const FLAG_RST: u8 = 0x04;
const FLAG_ACK: u8 = 0x10;
/// The window a tickle advertises; any value works, CTDB uses 1234.
const TICKLE_WINDOW: u16 = 1234;
const HOP_LIMIT: u8 = 64;

/// Which segment to send from the VIP to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    /// ACK with sequence 0 and acknowledgement 0: makes the client answer and so meet a RST.
    TickleAck,
    /// RST with this sequence number; the client accepts it only when it is the next sequence
    /// number it expects.
    Reset { sequence: u32 },
}

/// Why a segment cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connection {server} <- {client} mixes IPv4 and IPv6")]
pub struct MixedFamilies {
    pub server: IpAddr,
    pub client: IpAddr,
}

/// The two addresses of a connection in one family, IPv4-mapped IPv6 addresses taken as IPv4.
enum Addresses {
    V4 { server: Ipv4Addr, client: Ipv4Addr },
    V6 { server: Ipv6Addr, client: Ipv6Addr },
}

fn addresses(connection: &Connection) -> Result<Addresses, MixedFamilies> {
    let server = connection.server.ip().to_canonical();
    let client = connection.client.ip().to_canonical();
    match (server, client) {
        (IpAddr::V4(server), IpAddr::V4(client)) => Ok(Addresses::V4 { server, client }),
        (IpAddr::V6(server), IpAddr::V6(client)) => Ok(Addresses::V6 { server, client }),
        _ => Err(MixedFamilies { server, client }),
    }
}

/// The Internet checksum (RFC 1071) of the concatenation of `parts`: the one's complement of
/// the one's complement sum of 16-bit big-endian words, an odd last byte padded with zero.
pub fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    let mut odd_byte: Option<u8> = None;
    for byte in parts.iter().flat_map(|part| part.iter().copied()) {
        match odd_byte.take() {
            Some(high) => sum += u64::from(u16::from_be_bytes([high, byte])),
            None => odd_byte = Some(byte),
        }
    }
    if let Some(high) = odd_byte {
        sum += u64::from(u16::from_be_bytes([high, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 16 bits.
    !(sum as u16)
}

/// The TCP segment (header only, no payload) from the VIP side of `connection` to its client,
/// with its checksum over the IPv4 or IPv6 pseudo-header.
pub fn tcp_segment(connection: &Connection, kind: SegmentKind) -> Result<Vec<u8>, MixedFamilies> {
    let addresses = addresses(connection)?;
    let (flags, sequence, acknowledgement, window): (u8, u32, u32, u16) = match kind {
        SegmentKind::TickleAck => (FLAG_ACK, 0, 0, TICKLE_WINDOW),
        SegmentKind::Reset { sequence } => (FLAG_RST, sequence, 0, 0),
    };
    let mut segment = Vec::with_capacity(TCP_HEADER_LEN);
    segment.extend_from_slice(&connection.server.port().to_be_bytes());
    segment.extend_from_slice(&connection.client.port().to_be_bytes());
    segment.extend_from_slice(&sequence.to_be_bytes());
    segment.extend_from_slice(&acknowledgement.to_be_bytes());
    segment.push((TCP_HEADER_LEN as u8 / 4) << 4); // data offset in 32-bit words
    segment.push(flags);
    segment.extend_from_slice(&window.to_be_bytes());
    segment.extend_from_slice(&[0, 0]); // checksum, filled in below
    segment.extend_from_slice(&[0, 0]); // urgent pointer
    let length = TCP_HEADER_LEN as u16;
    let checksum = match addresses {
        Addresses::V4 { server, client } => {
            let mut pseudo = Vec::with_capacity(12);
            pseudo.extend_from_slice(&server.octets());
            pseudo.extend_from_slice(&client.octets());
            pseudo.extend_from_slice(&[0, PROTOCOL_TCP]);
            pseudo.extend_from_slice(&length.to_be_bytes());
            internet_checksum(&[&pseudo, &segment])
        }
        Addresses::V6 { server, client } => {
            let mut pseudo = Vec::with_capacity(40);
            pseudo.extend_from_slice(&server.octets());
            pseudo.extend_from_slice(&client.octets());
            pseudo.extend_from_slice(&u32::from(length).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, PROTOCOL_TCP]);
            internet_checksum(&[&pseudo, &segment])
        }
    };
    segment[16..18].copy_from_slice(&checksum.to_be_bytes());
    Ok(segment)
}

/// The whole IP packet carrying [`tcp_segment`]: an IPv4 header (don't fragment, TTL 64, with
/// its header checksum) or an IPv6 header (hop limit 64) from the VIP to the client.
pub fn ip_packet(connection: &Connection, kind: SegmentKind) -> Result<Vec<u8>, MixedFamilies> {
    let segment = tcp_segment(connection, kind)?;
    let mut packet = match addresses(connection)? {
        Addresses::V4 { server, client } => {
            let total = (IPV4_HEADER_LEN + segment.len()) as u16;
            let mut header = Vec::with_capacity(IPV4_HEADER_LEN + segment.len());
            header.push(0x45); // version 4, header of 5 words
            header.push(0); // DSCP/ECN
            header.extend_from_slice(&total.to_be_bytes());
            header.extend_from_slice(&[0, 0]); // identification: the kernel picks one
            header.extend_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
            header.push(HOP_LIMIT);
            header.push(PROTOCOL_TCP);
            header.extend_from_slice(&[0, 0]); // header checksum, filled in below
            header.extend_from_slice(&server.octets());
            header.extend_from_slice(&client.octets());
            let checksum = internet_checksum(&[&header]);
            header[10..12].copy_from_slice(&checksum.to_be_bytes());
            header
        }
        Addresses::V6 { server, client } => {
            let mut header = Vec::with_capacity(IPV6_HEADER_LEN + segment.len());
            header.extend_from_slice(&0x6000_0000u32.to_be_bytes()); // version 6, no class/flow
            header.extend_from_slice(&(segment.len() as u16).to_be_bytes());
            header.push(PROTOCOL_TCP);
            header.push(HOP_LIMIT);
            header.extend_from_slice(&server.octets());
            header.extend_from_slice(&client.octets());
            header
        }
    };
    packet.extend_from_slice(&segment);
    Ok(packet)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(server: &str, client: &str) -> Connection {
        Connection {
            server: server.parse().unwrap(),
            client: client.parse().unwrap(),
        }
    }

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    #[test]
    fn checksum_known_answers() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2, whose complement is 220d.
        assert_eq!(internet_checksum(&[&hex("0001 f203 f4f5 f6f7")]), 0x220d);
        // Split anywhere, even inside a word, the sum is the same.
        assert_eq!(
            internet_checksum(&[&hex("0001 f2"), &hex("03 f4f5"), &hex("f6f7")]),
            0x220d
        );
        // An odd length is padded with a zero byte: 0001 + f203 + f400 = 1e604, folded e605.
        assert_eq!(internet_checksum(&[&hex("0001 f203 f4")]), !0xe605);
        // A classic IPv4 header (Wikipedia, "IPv4 header checksum"): its checksum is b861, and
        // a header with its checksum in place sums to zero.
        let header = hex("4500 0073 0000 4000 4011 0000 c0a8 0001 c0a8 00c7");
        assert_eq!(internet_checksum(&[&header]), 0xb861);
        let checked = hex("4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7");
        assert_eq!(internet_checksum(&[&checked]), 0);
        assert_eq!(internet_checksum(&[]), 0xffff);
    }

    // The expected packets below were computed independently of this module, by this separate
    // Python implementation of RFC 791/793/8200 (python3, standard library only):
    //
    //   import ipaddress, struct
    //   def csum(b):
    //       b += b'\0' * (len(b) % 2)
    //       s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    //       while s >> 16: s = (s & 0xffff) + (s >> 16)
    //       return ~s & 0xffff
    //   def pkt(src, dst, sport, dport, seq, ack, flags, win):
    //       s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    //       h = struct.pack('!HHIIBBHHH', sport, dport, seq, ack, 5 << 4, flags, win, 0, 0)
    //       if s.version == 6: ph = s.packed + d.packed + struct.pack('!I3xB', len(h), 6)
    //       else: ph = s.packed + d.packed + struct.pack('!xBH', 6, len(h))
    //       t = h[:16] + struct.pack('!H', csum(ph + h)) + h[18:]
    //       if s.version == 6:
    //           ip = struct.pack('!IHBB', 6 << 28, len(t), 6, 64) + s.packed + d.packed
    //           return (ip + t).hex()
    //       ip = struct.pack('!BBHHHBBH', 0x45, 0, 20 + len(t), 0, 0x4000, 64, 6, 0)
    //       ip += s.packed + d.packed
    //       return (ip[:10] + struct.pack('!H', csum(ip)) + ip[12:] + t).hex()
    //   print(pkt('192.0.2.211', '192.0.2.101', 2049, 51234, 0, 0, 0x10, 1234))
    //   print(pkt('192.0.2.211', '192.0.2.101', 445, 40000, 0x12345678, 0, 0x04, 0))
    //   print(pkt('2001:db8:0:1::211', '2001:db8:0:1::101', 2049, 51234, 0, 0, 0x10, 1234))
    //
    // The lab test `tests/tickle.rs` adds the kernel's verdict: the client's TCP stack counts a
    // deliberately corrupted tickle as a checksum error and resets on the real one.

    #[test]
    fn ipv4_tickle_ack_byte_for_byte() {
        let packet = ip_packet(
            &connection("192.0.2.211:2049", "192.0.2.101:51234"),
            SegmentKind::TickleAck,
        )
        .unwrap();
        let expected = hex("4500 0028 0000 4000 4006 b597 c000 02d3 c000 0265
             0801 c822 0000 0000 0000 0000 5010 04d2 55a6 0000");
        assert_eq!(packet, expected, "{packet:02x?}");
    }

    #[test]
    fn ipv4_reset_byte_for_byte() {
        let packet = ip_packet(
            &connection("192.0.2.211:445", "192.0.2.101:40000"),
            SegmentKind::Reset {
                sequence: 0x1234_5678,
            },
        )
        .unwrap();
        let expected = hex("4500 0028 0000 4000 4006 b597 c000 02d3 c000 0265
             01bd 9c40 1234 5678 0000 0000 5004 0000 23fe 0000");
        assert_eq!(packet, expected, "{packet:02x?}");
    }

    #[test]
    fn ipv6_tickle_ack_byte_for_byte() {
        let packet = ip_packet(
            &connection("[2001:db8:0:1::211]:2049", "[2001:db8:0:1::101]:51234"),
            SegmentKind::TickleAck,
        )
        .unwrap();
        let expected = hex("6000 0000 0014 0640
             2001 0db8 0000 0001 0000 0000 0000 0211
             2001 0db8 0000 0001 0000 0000 0000 0101
             0801 c822 0000 0000 0000 0000 5010 04d2 7c59 0000");
        assert_eq!(packet, expected, "{packet:02x?}");
    }

    #[test]
    fn ipv4_mapped_addresses_make_ipv4_packets() {
        let mapped = connection("[::ffff:192.0.2.211]:2049", "[::ffff:192.0.2.101]:51234");
        let plain = connection("192.0.2.211:2049", "192.0.2.101:51234");
        assert_eq!(
            ip_packet(&mapped, SegmentKind::TickleAck),
            ip_packet(&plain, SegmentKind::TickleAck)
        );
    }

    #[test]
    fn mixed_families_are_refused() {
        let mixed = connection("192.0.2.211:2049", "[2001:db8:0:1::101]:51234");
        assert_eq!(
            ip_packet(&mixed, SegmentKind::TickleAck)
                .unwrap_err()
                .to_string(),
            "connection 192.0.2.211 <- 2001:db8:0:1::101 mixes IPv4 and IPv6"
        );
    }

    #[test]
    fn segments_verify_against_their_pseudo_header() {
        // Whatever the ports and numbers, the receiver's check (sum over pseudo-header and
        // segment) comes out zero.
        for (server, client) in [
            ("192.0.2.211:1", "192.0.2.101:65535"),
            ("10.255.255.255:65535", "10.0.0.1:1"),
        ] {
            let conn = connection(server, client);
            for kind in [
                SegmentKind::TickleAck,
                SegmentKind::Reset { sequence: 0 },
                SegmentKind::Reset { sequence: u32::MAX },
            ] {
                let segment = tcp_segment(&conn, kind).unwrap();
                let (IpAddr::V4(s), IpAddr::V4(c)) = (conn.server.ip(), conn.client.ip()) else {
                    unreachable!()
                };
                let pseudo = [&s.octets()[..], &c.octets(), &[0, 6, 0, 20]].concat();
                assert_eq!(
                    internet_checksum(&[&pseudo, &segment]),
                    0,
                    "{conn:?} {kind:?}"
                );
            }
        }
    }
}
