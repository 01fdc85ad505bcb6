//! The DNS wire format of a query and its response (pure, no I/O): [`respond`] parses one
//! datagram or TCP message, asks the [`View`] and writes the response into a reused buffer.
//!
//! Only what an authoritative server for one small zone needs: one question, an optional OPT
//! record (EDNS0, RFC 6891), standard queries. The parser reads within the packet's bounds and
//! allocates nothing; the writer never exceeds the size the client can take (512 bytes without
//! EDNS, the client's EDNS size capped at [`MAX_UDP_PAYLOAD`] over UDP, 65535 over TCP) and sets
//! TC with an empty answer when the records do not fit, so the client asks again over TCP.
//!
//! What gets no response at all: anything shorter than a header, and responses (QR set), so two
//! servers can never be made to bounce packets at each other. Everything else malformed gets
//! FORMERR; unknown opcodes get NOTIMP; EDNS versions above 0 get BADVERS.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::zone::{Answer, Found, HOSTMASTER, View, rotated, rtype};

/// The largest UDP response we send, whatever the client offers: the DNS Flag Day 2020 size,
/// which fits an IPv6 packet in a 1280-byte MTU without fragmentation.
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// The UDP size every client takes (RFC 1035), and the floor of an EDNS size (RFC 6891).
pub const MIN_UDP_PAYLOAD: u16 = 512;
/// The largest TCP message (its length prefix is 16 bits).
pub const MAX_TCP_MESSAGE: usize = 65535;

/// SOA timers. Nothing transfers this zone, so refresh, retry and expire only have to be
/// plausible; the minimum (negative-caching time) is the zone's TTL.
const SOA_REFRESH: u32 = 300;
const SOA_RETRY: u32 = 60;
const SOA_EXPIRE: u32 = 86400;

/// Response codes.
pub mod rcode {
    pub const NOERROR: u16 = 0;
    pub const FORMERR: u16 = 1;
    pub const NXDOMAIN: u16 = 3;
    pub const NOTIMP: u16 = 4;
    pub const REFUSED: u16 = 5;
    /// Extended (EDNS) code 16: the upper 8 bits go in the OPT record.
    pub const BADVERS: u16 = 16;
}

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_CD: u16 = 0x0010;
const HEADER_LEN: usize = 12;
/// The DO bit in the OPT record's TTL field.
const EDNS_DO: u32 = 0x8000;

/// How the query arrived, which bounds the response size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The EDNS part of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Edns {
    udp_size: u16,
    version: u8,
    dnssec_ok: bool,
}

/// A parsed question: the lower-cased name (wire format) in a fixed buffer.
struct Question<'p> {
    /// The question as received (name with its original case, type, class), echoed back.
    raw: &'p [u8],
    lower: [u8; 255],
    name_len: usize,
    qtype: u16,
    qclass: u16,
}

/// What the header and the rest of the parse decided.
struct Parsed<'p> {
    id: u16,
    flags: u16,
    question: Option<Question<'p>>,
    edns: Option<Edns>,
    /// An error to answer with instead of looking the question up.
    error: Option<u16>,
}

/// A parse failure that is answered with FORMERR.
struct Malformed;

/// Writes the response to `packet` into `out` (cleared first), rotating address lists by
/// `rotation`. Returns false when the packet gets no response (then `out` is empty).
pub fn respond(
    view: &View,
    packet: &[u8],
    transport: Transport,
    rotation: usize,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    let Some(parsed) = parse(packet) else {
        return false;
    };
    let limit = match transport {
        Transport::Tcp => MAX_TCP_MESSAGE,
        Transport::Udp => usize::from(parsed.edns.map_or(MIN_UDP_PAYLOAD, |edns| {
            edns.udp_size.clamp(MIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD)
        })),
    };
    let answer = match (&parsed.question, parsed.error) {
        (Some(question), None) => view.lookup(
            &question.lower[..question.name_len],
            question.qtype,
            question.qclass,
        ),
        _ => Answer::Refused,
    };
    let mut writer = Writer {
        view,
        parsed: &parsed,
        rotation,
        out,
    };
    writer.write(answer, Sections::All);
    if writer.out.len() > limit {
        // Glue is optional: without it the NS names are still answered (RFC 2181 9).
        writer.write(answer, Sections::NoGlue);
    }
    if writer.out.len() > limit {
        writer.write(answer, Sections::Truncated);
    }
    true
}

fn parse(packet: &[u8]) -> Option<Parsed<'_>> {
    let header = packet.get(..HEADER_LEN)?;
    let id = u16::from_be_bytes([header[0], header[1]]);
    let flags = u16::from_be_bytes([header[2], header[3]]);
    if flags & FLAG_QR != 0 {
        return None;
    }
    let count = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
    let (questions, answers, authorities, additionals) = (count(4), count(6), count(8), count(10));
    let mut parsed = Parsed {
        id,
        flags,
        question: None,
        edns: None,
        error: None,
    };
    if (flags >> 11) & 0xf != 0 {
        parsed.error = Some(rcode::NOTIMP);
        return Some(parsed);
    }
    if questions != 1 {
        parsed.error = Some(rcode::FORMERR);
        return Some(parsed);
    }
    let mut reader = Reader {
        packet,
        offset: HEADER_LEN,
    };
    let question = match reader.question() {
        Ok(question) => question,
        Err(Malformed) => {
            parsed.error = Some(rcode::FORMERR);
            return Some(parsed);
        }
    };
    let meta_type = question.qtype == rtype::OPT || question.qtype == 0;
    parsed.question = Some(question);
    if meta_type || answers != 0 || authorities != 0 {
        parsed.error = Some(rcode::FORMERR);
        return Some(parsed);
    }
    match reader.additionals(additionals) {
        Ok(edns) => parsed.edns = edns,
        Err(Malformed) => {
            parsed.error = Some(rcode::FORMERR);
            return Some(parsed);
        }
    }
    if parsed.edns.is_some_and(|edns| edns.version != 0) {
        parsed.error = Some(rcode::BADVERS);
    }
    Some(parsed)
}

struct Reader<'p> {
    packet: &'p [u8],
    offset: usize,
}

impl<'p> Reader<'p> {
    fn bytes(&mut self, length: usize) -> Result<&'p [u8], Malformed> {
        let end = self.offset.checked_add(length).ok_or(Malformed)?;
        let bytes = self.packet.get(self.offset..end).ok_or(Malformed)?;
        self.offset = end;
        Ok(bytes)
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let bytes = self.bytes(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        let bytes = self.bytes(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// The question: an uncompressed name (nothing precedes it to point at), type, class.
    fn question(&mut self) -> Result<Question<'p>, Malformed> {
        let start = self.offset;
        let mut lower = [0u8; 255];
        let mut name_len = 0;
        loop {
            let length = usize::from(*self.bytes(1)?.first().ok_or(Malformed)?);
            if length > 63 || name_len + 1 + length > lower.len() {
                return Err(Malformed);
            }
            lower[name_len] = length as u8;
            name_len += 1;
            let label = self.bytes(length)?;
            for (slot, byte) in lower[name_len..name_len + length].iter_mut().zip(label) {
                *slot = byte.to_ascii_lowercase();
            }
            name_len += length;
            if length == 0 {
                break;
            }
        }
        let qtype = self.u16()?;
        let qclass = self.u16()?;
        Ok(Question {
            raw: &self.packet[start..self.offset],
            lower,
            name_len,
            qtype,
            qclass,
        })
    }

    /// Skips a possibly compressed name: labels until the root or a pointer.
    fn skip_name(&mut self) -> Result<bool, Malformed> {
        let mut root = true;
        loop {
            let length = *self.bytes(1)?.first().ok_or(Malformed)?;
            match length {
                0 => return Ok(root),
                1..=63 => {
                    root = false;
                    self.bytes(usize::from(length))?;
                }
                0xc0..=0xff => {
                    self.bytes(1)?;
                    return Ok(false);
                }
                _ => return Err(Malformed),
            }
        }
    }

    /// The additional section: at most one OPT record, owned by the root; others are skipped.
    fn additionals(&mut self, count: u16) -> Result<Option<Edns>, Malformed> {
        let mut edns = None;
        for _ in 0..count {
            let root = self.skip_name()?;
            let record_type = self.u16()?;
            let class = self.u16()?;
            let ttl = self.u32()?;
            let length = self.u16()?;
            let mut rdata = Reader {
                packet: self.bytes(usize::from(length))?,
                offset: 0,
            };
            if record_type != rtype::OPT {
                continue;
            }
            if !root || edns.is_some() {
                return Err(Malformed);
            }
            // Options must tile the RDATA exactly; none changes our answer.
            while rdata.offset < rdata.packet.len() {
                rdata.u16()?;
                let option_length = rdata.u16()?;
                rdata.bytes(usize::from(option_length))?;
            }
            edns = Some(Edns {
                udp_size: class,
                version: (ttl >> 16) as u8,
                dnssec_ok: ttl & EDNS_DO != 0,
            });
        }
        Ok(edns)
    }
}

/// Which sections a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sections {
    All,
    NoGlue,
    /// TC set: only the question and the OPT record.
    Truncated,
}

struct Writer<'a, 'p> {
    view: &'a View,
    parsed: &'a Parsed<'p>,
    rotation: usize,
    out: &'a mut Vec<u8>,
}

impl Writer<'_, '_> {
    fn write(&mut self, answer: Answer<'_>, sections: Sections) {
        self.out.clear();
        let parsed = self.parsed;
        let (code, authoritative) = match (parsed.error, answer) {
            (Some(code), _) => (code, false),
            (None, Answer::Refused) => (rcode::REFUSED, false),
            (None, Answer::NxDomain) => (rcode::NXDOMAIN, true),
            (None, Answer::NoData | Answer::Found(_)) => (rcode::NOERROR, true),
        };
        let mut flags = FLAG_QR | (parsed.flags & (0x7800 | FLAG_RD | FLAG_CD)) | (code & 0xf);
        if authoritative {
            flags |= FLAG_AA;
        }
        if sections == Sections::Truncated {
            flags |= FLAG_TC;
        }
        self.put_u16(parsed.id);
        self.put_u16(flags);
        self.out.extend_from_slice(&[0; 8]);
        let Some(question) = &parsed.question else {
            // Header-only answers (FORMERR, NOTIMP before a question was read).
            return;
        };
        self.out.extend_from_slice(question.raw);
        let mut counts = [1u16, 0, 0, 0];
        if sections != Sections::Truncated && parsed.error.is_none() {
            // The apex is the tail of the question's name whenever the name is in the zone.
            let apex_len = self.view.zone().apex_wire().len();
            let apex = (HEADER_LEN + question.name_len).saturating_sub(apex_len);
            match answer {
                Answer::Refused => {}
                Answer::NxDomain | Answer::NoData => {
                    self.soa(apex);
                    counts[2] = 1;
                }
                Answer::Found(found) => {
                    counts[1] = self.found(found, apex, &mut counts[3], sections);
                }
            }
        }
        if let Some(edns) = parsed.edns {
            self.opt(edns, code);
            counts[3] += 1;
        }
        for (index, count) in counts.into_iter().enumerate() {
            let at = 4 + 2 * index;
            self.out[at..at + 2].copy_from_slice(&count.to_be_bytes());
        }
    }

    /// The answer records (and NS glue in the additional section); returns the answer count.
    fn found(&mut self, found: Found<'_>, apex: usize, glue: &mut u16, sections: Sections) -> u16 {
        let ttl = self.view.zone().ttl();
        let owner = HEADER_LEN;
        let mut count = 0u16;
        for address in rotated(found.v4, self.rotation) {
            self.record_header(owner, rtype::A, ttl);
            self.rdata(&address.octets());
            count += 1;
        }
        for address in rotated(found.v6, self.rotation) {
            self.record_header(owner, rtype::AAAA, ttl);
            self.rdata(&address.octets());
            count += 1;
        }
        if found.soa {
            self.soa_record(owner, apex);
            count += 1;
        }
        if found.ns {
            // Where each NS host's name starts, so the glue records can point at it.
            let mut hosts: Vec<usize> = Vec::new();
            for label in self.view.zone().ns_labels() {
                self.record_header(owner, rtype::NS, ttl);
                let length_at = self.out.len();
                self.put_u16(0);
                hosts.push(self.out.len());
                self.label(label);
                self.pointer(apex);
                self.finish_rdata(length_at);
                count += 1;
            }
            if sections == Sections::All {
                let view = self.view;
                for ((_, addresses), name_at) in view.ns_glue().zip(hosts) {
                    for address in &addresses.v4 {
                        self.address_record(name_at, Address::V4(*address), ttl);
                        *glue += 1;
                    }
                    for address in &addresses.v6 {
                        self.address_record(name_at, Address::V6(*address), ttl);
                        *glue += 1;
                    }
                }
            }
        }
        count
    }

    fn address_record(&mut self, owner: usize, address: Address, ttl: u32) {
        match address {
            Address::V4(v4) => {
                self.record_header(owner, rtype::A, ttl);
                self.rdata(&v4.octets());
            }
            Address::V6(v6) => {
                self.record_header(owner, rtype::AAAA, ttl);
                self.rdata(&v6.octets());
            }
        }
    }

    /// The SOA record in the authority section of a negative answer.
    fn soa(&mut self, apex: usize) {
        self.soa_record(apex, apex);
    }

    fn soa_record(&mut self, owner: usize, apex: usize) {
        let zone = self.view.zone();
        self.record_header(owner, rtype::SOA, zone.ttl());
        let length_at = self.out.len();
        self.put_u16(0);
        // MNAME: the first NS host; RNAME: hostmaster.<zone>.
        let primary = zone.ns_labels().next().unwrap_or(HOSTMASTER);
        self.label(primary);
        self.pointer(apex);
        self.label(HOSTMASTER);
        self.pointer(apex);
        for value in [
            self.view.serial(),
            SOA_REFRESH,
            SOA_RETRY,
            SOA_EXPIRE,
            zone.ttl(),
        ] {
            self.out.extend_from_slice(&value.to_be_bytes());
        }
        self.finish_rdata(length_at);
    }

    /// The OPT record: our UDP size, the upper bits of the response code, version 0, DO copied
    /// (RFC 3225), no options.
    fn opt(&mut self, edns: Edns, code: u16) {
        self.out.push(0);
        self.put_u16(rtype::OPT);
        self.put_u16(MAX_UDP_PAYLOAD);
        let mut ttl = u32::from(code >> 4) << 24;
        if edns.dnssec_ok {
            ttl |= EDNS_DO;
        }
        self.out.extend_from_slice(&ttl.to_be_bytes());
        self.put_u16(0);
    }

    /// Owner (a pointer), type, class IN, TTL; the caller writes RDLENGTH and RDATA.
    fn record_header(&mut self, owner: usize, record_type: u16, ttl: u32) {
        self.pointer(owner);
        self.put_u16(record_type);
        self.put_u16(crate::zone::CLASS_IN);
        self.out.extend_from_slice(&ttl.to_be_bytes());
    }

    fn rdata(&mut self, data: &[u8]) {
        // Addresses only: 4 or 16 bytes.
        self.put_u16(data.len() as u16);
        self.out.extend_from_slice(data);
    }

    fn finish_rdata(&mut self, length_at: usize) {
        let length = (self.out.len() - length_at - 2) as u16;
        self.out[length_at..length_at + 2].copy_from_slice(&length.to_be_bytes());
    }

    fn label(&mut self, label: &str) {
        let label = &label.as_bytes()[..label.len().min(63)];
        self.out.push(label.len() as u8);
        self.out.extend_from_slice(label);
    }

    /// A compression pointer; every target lies in the first 300 bytes, far below 2^14.
    fn pointer(&mut self, offset: usize) {
        self.put_u16(0xc000 | (offset as u16 & 0x3fff));
    }

    fn put_u16(&mut self, value: u16) {
        self.out.extend_from_slice(&value.to_be_bytes());
    }
}

#[derive(Debug, Clone, Copy)]
enum Address {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::IpAddr;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::zone::{CLASS_IN, Zone};

    /// A cluster with 40 IPv6 VIPs besides the IPv4 ones, so answers can overflow 512 bytes.
    fn view() -> View {
        let mut file = String::from(
            "cluster: {name: t, secret: 0123456789abcdef0123, data_dir: /var/lib/vipgate}\n\
             nodes:\n\
             \x20 - {name: node1, cluster_address: 198.51.100.11, public_interfaces: [eth0], public_address: 192.0.2.11}\n\
             \x20 - {name: node2, cluster_address: 198.51.100.12, public_interfaces: [eth0], public_address: 192.0.2.12}\n\
             public_addresses:\n\
             \x20 - address: 192.0.2.201/24\n\
             \x20 - address: 192.0.2.202/24\n\
             \x20 - address: 192.0.2.203/24\n",
        );
        for index in 0..40 {
            file.push_str(&format!("  - address: 2001:db8::{:x}/64\n", 0x300 + index));
        }
        file.push_str(
            "volume: {path: /mnt/volume}\n\
             dns:\n  zone: vipgate.test\n  ttl: 5\n  names:\n\
             \x20   - {name: nfs, addresses: [192.0.2.201, 192.0.2.202, 192.0.2.203]}\n\
             \x20   - {name: many, addresses: all}\n",
        );
        let config = cluster_config::parse(&file, "cluster.yaml").unwrap();
        let zone = Arc::new(Zone::new(config.dns.as_ref().unwrap(), &config.nodes));
        let live: BTreeSet<IpAddr> = config
            .public_addresses
            .iter()
            .map(|vip| vip.address.addr())
            .filter(|address| *address != "192.0.2.202".parse::<IpAddr>().unwrap())
            .collect();
        View::new(zone, &live, 42)
    }

    struct QueryBuilder {
        id: u16,
        flags: u16,
        name: String,
        qtype: u16,
        qclass: u16,
        edns: Option<(u16, u32)>,
    }

    fn query(name: &str, qtype: u16) -> QueryBuilder {
        QueryBuilder {
            id: 0xbeef,
            flags: FLAG_RD,
            name: name.to_owned(),
            qtype,
            qclass: CLASS_IN,
            edns: None,
        }
    }

    impl QueryBuilder {
        fn edns(mut self, size: u16, ttl: u32) -> Self {
            self.edns = Some((size, ttl));
            self
        }

        fn bytes(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&self.id.to_be_bytes());
            out.extend_from_slice(&self.flags.to_be_bytes());
            let additional = u16::from(self.edns.is_some());
            for count in [1, 0, 0, additional] {
                out.extend_from_slice(&u16::to_be_bytes(count));
            }
            for label in self.name.split('.').filter(|label| !label.is_empty()) {
                out.push(label.len() as u8);
                out.extend_from_slice(label.as_bytes());
            }
            out.push(0);
            out.extend_from_slice(&self.qtype.to_be_bytes());
            out.extend_from_slice(&self.qclass.to_be_bytes());
            if let Some((size, ttl)) = self.edns {
                out.push(0);
                out.extend_from_slice(&rtype::OPT.to_be_bytes());
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(&ttl.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
            out
        }
    }

    /// A decoded response, with names expanded (a small independent decoder for the tests).
    #[derive(Debug, Default)]
    struct Decoded {
        id: u16,
        flags: u16,
        question: Option<(String, u16)>,
        answers: Vec<(String, u16, u32, String)>,
        authority: Vec<(String, u16, u32, String)>,
        additional: Vec<(String, u16, u32, String)>,
    }

    impl Decoded {
        fn rcode(&self) -> u16 {
            let extended = self
                .additional
                .iter()
                .find(|record| record.1 == rtype::OPT)
                .map_or(0, |record| (record.2 >> 24) as u16);
            (extended << 4) | (self.flags & 0xf)
        }

        fn flag(&self, flag: u16) -> bool {
            self.flags & flag != 0
        }

        fn opt(&self) -> Option<(u16, u32)> {
            self.additional
                .iter()
                .find(|record| record.1 == rtype::OPT)
                .map(|record| (record.3.parse().unwrap(), record.2))
        }
    }

    fn name_at(packet: &[u8], mut at: usize) -> (String, usize) {
        let mut labels = Vec::new();
        let mut end = None;
        for _ in 0..128 {
            let length = packet[at];
            if length >= 0xc0 {
                end.get_or_insert(at + 2);
                at = usize::from(u16::from_be_bytes([length & 0x3f, packet[at + 1]]));
                continue;
            }
            if length == 0 {
                return (labels.join("."), end.unwrap_or(at + 1));
            }
            let label = &packet[at + 1..at + 1 + usize::from(length)];
            labels.push(String::from_utf8_lossy(label).into_owned());
            at += 1 + usize::from(length);
        }
        panic!("a compression loop");
    }

    fn decode(packet: &[u8]) -> Decoded {
        let u16_at = |at: usize| u16::from_be_bytes([packet[at], packet[at + 1]]);
        let u32_at = |at: usize| u32::from_be_bytes(packet[at..at + 4].try_into().unwrap());
        let mut decoded = Decoded {
            id: u16_at(0),
            flags: u16_at(2),
            ..Decoded::default()
        };
        let mut at = HEADER_LEN;
        if u16_at(4) == 1 {
            let (name, end) = name_at(packet, at);
            decoded.question = Some((name, u16_at(end)));
            at = end + 4;
        }
        for (section, count) in [u16_at(6), u16_at(8), u16_at(10)].into_iter().enumerate() {
            for _ in 0..count {
                let (name, end) = name_at(packet, at);
                let (kind, class, ttl, length) = (
                    u16_at(end),
                    u16_at(end + 2),
                    u32_at(end + 4),
                    usize::from(u16_at(end + 8)),
                );
                let rdata_at = end + 10;
                let rdata = &packet[rdata_at..rdata_at + length];
                let text = match kind {
                    rtype::A => Ipv4Addr::from(<[u8; 4]>::try_from(rdata).unwrap()).to_string(),
                    rtype::AAAA => Ipv6Addr::from(<[u8; 16]>::try_from(rdata).unwrap()).to_string(),
                    rtype::NS => name_at(packet, rdata_at).0,
                    rtype::SOA => {
                        let (mname, next) = name_at(packet, rdata_at);
                        let (rname, next) = name_at(packet, next);
                        let numbers: Vec<String> =
                            (0..5).map(|i| u32_at(next + 4 * i).to_string()).collect();
                        assert_eq!(next + 20, rdata_at + length, "SOA rdata length");
                        format!("{mname} {rname} {}", numbers.join(" "))
                    }
                    rtype::OPT => class.to_string(),
                    _ => format!("{rdata:?}"),
                };
                if kind != rtype::OPT {
                    assert_eq!(class, CLASS_IN);
                }
                let record = (name, kind, ttl, text);
                match section {
                    0 => decoded.answers.push(record),
                    1 => decoded.authority.push(record),
                    _ => decoded.additional.push(record),
                }
                at = rdata_at + length;
            }
        }
        assert_eq!(at, packet.len(), "trailing bytes in {packet:?}");
        decoded
    }

    fn ask(view: &View, packet: &[u8], transport: Transport, rotation: usize) -> Decoded {
        let mut out = Vec::new();
        assert!(
            respond(view, packet, transport, rotation, &mut out),
            "no response"
        );
        decode(&out)
    }

    fn addresses(records: &[(String, u16, u32, String)]) -> Vec<&str> {
        records.iter().map(|record| record.3.as_str()).collect()
    }

    #[test]
    fn positive_answers_are_authoritative_and_rotate() {
        let view = view();
        let packet = query("NFS.Vipgate.Test", rtype::A).bytes();
        let first = ask(&view, &packet, Transport::Udp, 0);
        assert_eq!(first.id, 0xbeef);
        assert_eq!(first.rcode(), rcode::NOERROR);
        assert!(first.flag(FLAG_QR) && first.flag(FLAG_AA) && first.flag(FLAG_RD));
        assert!(
            !first.flag(FLAG_TC) && !first.flag(0x0080),
            "no RA: never recursive"
        );
        // The question is echoed with its case (0x20 randomisation), answers point at it.
        assert_eq!(
            first.question,
            Some(("NFS.Vipgate.Test".to_owned(), rtype::A))
        );
        assert_eq!(addresses(&first.answers), ["192.0.2.201", "192.0.2.203"]);
        assert!(
            first
                .answers
                .iter()
                .all(|r| r.0 == "NFS.Vipgate.Test" && r.2 == 5)
        );
        let second = ask(&view, &packet, Transport::Udp, 1);
        assert_eq!(addresses(&second.answers), ["192.0.2.203", "192.0.2.201"]);
        assert!(first.authority.is_empty() && first.additional.is_empty());
    }

    #[test]
    fn negative_answers_carry_the_soa() {
        let view = view();
        let soa = "node1.vipgate.test hostmaster.vipgate.test 42 300 60 86400 5";
        for (name, qtype, code) in [
            ("nope.vipgate.test", rtype::A, rcode::NXDOMAIN),
            ("nfs.vipgate.test", rtype::AAAA, rcode::NOERROR),
            ("nfs.vipgate.test", 15, rcode::NOERROR),
            ("node1.vipgate.test", rtype::AAAA, rcode::NOERROR),
        ] {
            let response = ask(&view, &query(name, qtype).bytes(), Transport::Udp, 0);
            assert_eq!(response.rcode(), code, "{name}");
            assert!(response.flag(FLAG_AA), "{name}");
            assert!(response.answers.is_empty(), "{name}");
            assert_eq!(
                response.authority,
                [("vipgate.test".to_owned(), rtype::SOA, 5, soa.to_owned())],
                "{name}"
            );
        }
    }

    #[test]
    fn outside_the_zone_is_refused_without_aa() {
        let view = view();
        for (name, qtype, qclass) in [
            ("example.com", rtype::A, CLASS_IN),
            ("", rtype::NS, CLASS_IN),
            ("test", rtype::SOA, CLASS_IN),
            ("vipgate.test", rtype::AXFR, CLASS_IN),
            ("version.bind", 16, 3),
        ] {
            let mut builder = query(name, qtype);
            builder.qclass = qclass;
            let response = ask(&view, &builder.bytes(), Transport::Udp, 0);
            assert_eq!(response.rcode(), rcode::REFUSED, "{name}");
            assert!(!response.flag(FLAG_AA), "{name}");
            assert!(
                response.answers.is_empty() && response.authority.is_empty(),
                "{name}"
            );
        }
    }

    #[test]
    fn apex_answers_soa_and_ns_with_glue() {
        let view = view();
        let response = ask(
            &view,
            &query("vipgate.test", rtype::SOA).bytes(),
            Transport::Udp,
            0,
        );
        assert_eq!(
            response.answers,
            [(
                "vipgate.test".to_owned(),
                rtype::SOA,
                5,
                "node1.vipgate.test hostmaster.vipgate.test 42 300 60 86400 5".to_owned()
            )]
        );
        let response = ask(
            &view,
            &query("vipgate.test", rtype::NS).bytes(),
            Transport::Udp,
            0,
        );
        assert_eq!(
            addresses(&response.answers),
            ["node1.vipgate.test", "node2.vipgate.test"]
        );
        let glue: Vec<(&str, &str)> = response
            .additional
            .iter()
            .map(|record| (record.0.as_str(), record.3.as_str()))
            .collect();
        assert_eq!(
            glue,
            [
                ("node1.vipgate.test", "192.0.2.11"),
                ("node2.vipgate.test", "192.0.2.12")
            ]
        );
    }

    #[test]
    fn edns_is_echoed_and_bounds_the_udp_size() {
        let view = view();
        let packet = query("nfs.vipgate.test", rtype::A)
            .edns(4096, EDNS_DO)
            .bytes();
        let response = ask(&view, &packet, Transport::Udp, 0);
        assert_eq!(response.opt(), Some((MAX_UDP_PAYLOAD, EDNS_DO)));
        assert_eq!(response.answers.len(), 2);
        // Without EDNS there is no OPT in the response.
        let response = ask(
            &view,
            &query("nfs.vipgate.test", rtype::A).bytes(),
            Transport::Udp,
            0,
        );
        assert_eq!(response.opt(), None);
        // Version 1 gets BADVERS, with an OPT of version 0.
        let packet = query("nfs.vipgate.test", rtype::A)
            .edns(1232, 1 << 16)
            .bytes();
        let response = ask(&view, &packet, Transport::Udp, 0);
        assert_eq!(response.rcode(), rcode::BADVERS);
        assert_eq!(response.opt(), Some((MAX_UDP_PAYLOAD, 1 << 24)));
        assert!(response.answers.is_empty());
    }

    #[test]
    fn answers_that_do_not_fit_are_truncated_and_served_over_tcp() {
        let view = view();
        // 40 AAAA records: 34 + 40 × 28 = 1154 bytes.
        let cases = [
            (
                query("many.vipgate.test", rtype::AAAA).bytes(),
                Transport::Udp,
                true,
            ),
            (
                query("many.vipgate.test", rtype::AAAA).edns(512, 0).bytes(),
                Transport::Udp,
                true,
            ),
            (
                query("many.vipgate.test", rtype::AAAA).edns(100, 0).bytes(),
                Transport::Udp,
                true,
            ),
            (
                query("many.vipgate.test", rtype::AAAA)
                    .edns(1232, 0)
                    .bytes(),
                Transport::Udp,
                false,
            ),
            (
                query("many.vipgate.test", rtype::AAAA)
                    .edns(65000, 0)
                    .bytes(),
                Transport::Udp,
                false,
            ),
            (
                query("many.vipgate.test", rtype::ANY).edns(1232, 0).bytes(),
                Transport::Udp,
                false,
            ),
            (
                query("many.vipgate.test", rtype::ANY).edns(600, 0).bytes(),
                Transport::Udp,
                true,
            ),
            (
                query("many.vipgate.test", rtype::AAAA).bytes(),
                Transport::Tcp,
                false,
            ),
            (
                query("many.vipgate.test", rtype::ANY).bytes(),
                Transport::Tcp,
                false,
            ),
        ];
        for (packet, transport, truncated) in cases {
            let mut out = Vec::new();
            assert!(respond(&view, &packet, transport, 3, &mut out));
            let response = decode(&out);
            assert_eq!(
                response.flag(FLAG_TC),
                truncated,
                "{packet:?} {transport:?}"
            );
            let limit = match (transport, response.opt()) {
                (Transport::Tcp, _) => MAX_TCP_MESSAGE,
                (Transport::Udp, None) => 512,
                (Transport::Udp, Some(_)) => 1232,
            };
            assert!(out.len() <= limit, "{} > {limit}", out.len());
            if truncated {
                assert!(response.answers.is_empty());
                assert_eq!(response.question.as_ref().unwrap().0, "many.vipgate.test");
            } else {
                assert!(response.answers.len() >= 40, "{}", response.answers.len());
            }
        }
    }

    #[test]
    fn malformed_queries_get_formerr_and_responses_get_nothing() {
        let view = view();
        let good = query("nfs.vipgate.test", rtype::A).edns(1232, 0).bytes();
        let mut response_bit = good.clone();
        response_bit[2] |= 0x80;
        let mut two_questions = good.clone();
        two_questions[5] = 2;
        let mut an_answer = good.clone();
        an_answer[7] = 1;
        let mut pointer = good.clone();
        pointer[12] = 0xc0;
        let mut long_label = good.clone();
        long_label[12] = 64;
        let mut cut = good.clone();
        cut.truncate(good.len() - 3);
        let mut two_opts = query("nfs.vipgate.test", rtype::A).edns(1232, 0).bytes();
        two_opts[11] = 2;
        two_opts.extend_from_slice(&good[good.len() - 11..]);
        let mut opt_not_root = good.clone();
        let opt_at = good.len() - 11;
        opt_not_root.splice(opt_at..opt_at + 1, [1, b'x', 0]);
        let mut bad_option = good.clone();
        let rdlength_at = good.len() - 2;
        bad_option[rdlength_at + 1] = 3;
        bad_option.extend_from_slice(&[0, 10, 0]);
        let qtype_opt = query("nfs.vipgate.test", rtype::OPT).bytes();
        let mut too_long_name = query(&vec!["a".repeat(63); 4].join("."), rtype::A).bytes();
        too_long_name[11] = 0;
        let mut notify = good.clone();
        notify[2] = 4 << 3;

        assert!(!respond(
            &view,
            &good[..11],
            Transport::Udp,
            0,
            &mut Vec::new()
        ));
        assert!(!respond(
            &view,
            &response_bit,
            Transport::Udp,
            0,
            &mut Vec::new()
        ));
        for (what, packet, code) in [
            ("two questions", two_questions, rcode::FORMERR),
            ("an answer record", an_answer, rcode::FORMERR),
            ("a pointer in the question", pointer, rcode::FORMERR),
            ("a 64-byte label", long_label, rcode::FORMERR),
            ("a cut packet", cut, rcode::FORMERR),
            ("two OPT records", two_opts, rcode::FORMERR),
            ("an OPT not owned by the root", opt_not_root, rcode::FORMERR),
            (
                "an option longer than its RDATA",
                bad_option,
                rcode::FORMERR,
            ),
            ("qtype OPT", qtype_opt, rcode::FORMERR),
            ("a name over 255 bytes", too_long_name, rcode::FORMERR),
            ("opcode NOTIFY", notify, rcode::NOTIMP),
        ] {
            let response = ask(&view, &packet, Transport::Udp, 0);
            assert_eq!(response.rcode(), code, "{what}");
            assert!(
                !response.flag(FLAG_AA) && response.answers.is_empty(),
                "{what}"
            );
            assert_eq!(response.id, 0xbeef, "{what}");
        }
    }

    #[test]
    fn other_additional_records_are_skipped() {
        let view = view();
        let mut packet = query("nfs.vipgate.test", rtype::A).edns(1232, 0).bytes();
        packet[11] = 2;
        // A TSIG-like record with a compressed owner before the OPT.
        let opt = packet.split_off(packet.len() - 11);
        packet.extend_from_slice(&[0xc0, 12, 0, 250, 0, 255, 0, 0, 0, 0, 0, 2, 9, 9]);
        packet.extend_from_slice(&opt);
        let response = ask(&view, &packet, Transport::Udp, 0);
        assert_eq!(response.rcode(), rcode::NOERROR);
        assert_eq!(response.answers.len(), 2);
    }

    proptest! {
        #[test]
        fn arbitrary_packets_never_panic_and_stay_in_bounds(
            packet in proptest::collection::vec(any::<u8>(), 0..600),
            tcp in any::<bool>(),
        ) {
            let view = view();
            let transport = if tcp { Transport::Tcp } else { Transport::Udp };
            let mut out = Vec::new();
            if respond(&view, &packet, transport, 0, &mut out) {
                let limit = if tcp { MAX_TCP_MESSAGE } else { 1232 };
                prop_assert!(out.len() <= limit);
                prop_assert!(out.len() >= HEADER_LEN);
                decode(&out);
            }
        }

        #[test]
        fn mutated_queries_never_panic_and_decode(
            name in "[a-zA-Z]{0,8}(\\.[a-z]{1,8}){0,2}",
            suffix in any::<bool>(),
            qtype in any::<u16>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        ) {
            let view = view();
            let name = if suffix { format!("{name}.vipgate.test") } else { name };
            let mut packet = query(&name, qtype).edns(700, 0).bytes();
            for (index, byte) in flips {
                let at = index.index(packet.len());
                packet[at] = byte;
            }
            let mut out = Vec::new();
            if respond(&view, &packet, Transport::Udp, 7, &mut out) {
                prop_assert!(out.len() <= 1232);
                decode(&out);
            }
        }
    }
}
