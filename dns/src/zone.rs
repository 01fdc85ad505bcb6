//! The zone a node answers for, and the answer to one question (pure, no I/O).
//!
//! A [`Zone`] is built once from the cluster file: the apex, the service names of `dns.names`
//! with the VIPs each may list, and one name per node (`<node>.<zone>`, the node's fixed
//! `public_address`) that also serves as the zone's NS host names. A [`View`] is the zone at
//! one moment of the replicated state: every service name reduced to the VIPs that are live
//! now, and the SOA serial taken from the replicated live-set serial, so every node that applied
//! the same log answers byte for byte the same (apart from the rotation). [`View::lookup`] turns
//! a question into an [`Answer`]; `wire` writes it.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use cluster_config::{Dns, Node};

/// Record and query types this server knows.
pub mod rtype {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const SOA: u16 = 6;
    pub const AAAA: u16 = 28;
    pub const OPT: u16 = 41;
    pub const IXFR: u16 = 251;
    pub const AXFR: u16 = 252;
    pub const ANY: u16 = 255;
}

/// The Internet class.
pub const CLASS_IN: u16 = 1;
/// The "any class" query class, answered as IN.
pub const CLASS_ANY: u16 = 255;

/// The local part of the SOA's responsible-person mailbox: `hostmaster.<zone>`.
pub const HOSTMASTER: &str = "hostmaster";

/// Where a name's addresses come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// No addresses: an empty non-terminal, or the apex when `@` is not a service name.
    Nothing,
    /// A service name: these VIPs, in file order, of which the live ones are listed.
    Live(Vec<IpAddr>),
    /// A node's own name: its fixed public address (or none).
    Fixed(Vec<IpAddr>),
}

#[derive(Debug, Clone)]
struct Entry {
    /// Lower-case, without the trailing dot.
    fqdn: String,
    source: Source,
}

/// The static part of the zone, from the cluster file.
#[derive(Debug, Clone)]
pub struct Zone {
    apex: String,
    /// The apex in lower-case wire format (length-prefixed labels and the root's 0).
    apex_wire: Vec<u8>,
    ttl: u32,
    /// `entries[0]` is the apex.
    entries: Vec<Entry>,
    /// Lower-case wire-format name → index into `entries`.
    index: HashMap<Box<[u8]>, usize>,
    /// The NS host names: `(node name label, entries index)`, in file order.
    ns_hosts: Vec<(String, usize)>,
}

/// The addresses one name lists at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
}

impl Addresses {
    fn of(addresses: impl IntoIterator<Item = IpAddr>) -> Addresses {
        let mut out = Addresses::default();
        for address in addresses {
            match address {
                IpAddr::V4(v4) => out.v4.push(v4),
                IpAddr::V6(v6) => out.v6.push(v6),
            }
        }
        out
    }

    /// Every address, IPv4 first.
    pub fn all(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.v4
            .iter()
            .copied()
            .map(IpAddr::V4)
            .chain(self.v6.iter().copied().map(IpAddr::V6))
    }
}

impl Zone {
    /// The zone of `dns` for a cluster of `nodes`. Service names come first; a node name that is
    /// also a service name (which the cluster file rejects) stays a service name.
    ///
    /// The NS hosts are the nodes that have a `public_address` (every node when none has one):
    /// those are the addresses a parent zone delegates to.
    pub fn new(dns: &Dns, nodes: &[Node]) -> Zone {
        let apex = dns.zone.trim_end_matches('.').to_ascii_lowercase();
        let mut zone = Zone {
            apex_wire: wire_name(&apex),
            apex: apex.clone(),
            ttl: dns.ttl,
            entries: Vec::new(),
            index: HashMap::new(),
            ns_hosts: Vec::new(),
        };
        zone.insert(&apex, Source::Nothing);
        for name in &dns.names {
            zone.insert(&name.fqdn, Source::Live(name.addresses.clone()));
        }
        let any_public = nodes.iter().any(|node| node.public_address.is_some());
        for node in nodes {
            let fqdn = format!("{}.{apex}", node.name.to_ascii_lowercase());
            let index = zone.insert(
                &fqdn,
                Source::Fixed(node.public_address.into_iter().collect()),
            );
            if !any_public || node.public_address.is_some() {
                zone.ns_hosts.push((node.name.to_ascii_lowercase(), index));
            }
        }
        zone
    }

    /// Adds `fqdn` (or gives it addresses, if it exists as an empty non-terminal) and the empty
    /// non-terminals between it and the apex; returns its index. An existing name with addresses
    /// keeps them.
    fn insert(&mut self, fqdn: &str, source: Source) -> usize {
        let fqdn = fqdn.trim_end_matches('.').to_ascii_lowercase();
        let key = wire_name(&fqdn).into_boxed_slice();
        let index = match self.index.get(&key) {
            Some(&index) => {
                if self.entries[index].source == Source::Nothing {
                    self.entries[index].source = source;
                }
                index
            }
            None => {
                self.entries.push(Entry {
                    fqdn: fqdn.clone(),
                    source,
                });
                self.index.insert(key, self.entries.len() - 1);
                self.entries.len() - 1
            }
        };
        // Ancestors up to the apex exist too (RFC 8020: NXDOMAIN means nothing beneath).
        let mut rest = fqdn.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if parent.len() < self.apex.len() || !is_within(parent, &self.apex) {
                break;
            }
            let parent_key = wire_name(parent).into_boxed_slice();
            if !self.index.contains_key(&parent_key) {
                self.entries.push(Entry {
                    fqdn: parent.to_owned(),
                    source: Source::Nothing,
                });
                self.index.insert(parent_key, self.entries.len() - 1);
            }
            rest = parent;
        }
        index
    }

    /// The zone's apex, lower-case, without the trailing dot.
    pub fn apex(&self) -> &str {
        &self.apex
    }

    /// The apex in lower-case wire format.
    pub fn apex_wire(&self) -> &[u8] {
        &self.apex_wire
    }

    /// The TTL of every record, and the negative-caching time of the SOA.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The NS host names' first labels (node names), in file order.
    pub fn ns_labels(&self) -> impl Iterator<Item = &str> {
        self.ns_hosts.iter().map(|(label, _)| label.as_str())
    }
}

fn is_within(name: &str, apex: &str) -> bool {
    name == apex
        || name
            .strip_suffix(apex)
            .is_some_and(|prefix| prefix.ends_with('.'))
}

/// `name` (dotted, no trailing dot, already checked by the cluster file) in wire format. Labels
/// longer than 63 bytes are cut, which only makes such a name unreachable.
fn wire_name(name: &str) -> Vec<u8> {
    let mut wire = Vec::with_capacity(name.len() + 2);
    for label in name.split('.').filter(|label| !label.is_empty()) {
        let label = &label.as_bytes()[..label.len().min(63)];
        // At most 63, so the cast is exact.
        wire.push(label.len() as u8);
        wire.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    wire.push(0);
    wire
}

/// What a question gets, before it is written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer<'v> {
    /// Outside the zone, another class, or a zone transfer: REFUSED, not authoritative.
    Refused,
    /// The name does not exist in the zone: NXDOMAIN with the SOA in the authority section.
    NxDomain,
    /// The name exists without records of that type: NOERROR, no answers, SOA in authority.
    NoData,
    /// Records: authoritative NOERROR.
    Found(Found<'v>),
}

/// The records of a positive answer. Address lists are in file order; the writer rotates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found<'v> {
    pub v4: &'v [Ipv4Addr],
    pub v6: &'v [Ipv6Addr],
    /// The zone's SOA record.
    pub soa: bool,
    /// The zone's NS records (with the NS hosts' addresses as glue).
    pub ns: bool,
}

/// The zone at one moment of the replicated state: what every name answers now.
#[derive(Debug, Clone)]
pub struct View {
    zone: Arc<Zone>,
    serial: u32,
    /// Parallel to `zone.entries`.
    records: Vec<Addresses>,
}

impl View {
    /// The zone with `live` VIPs (the replicated live set) at live-set serial `serial`. The SOA
    /// serial is `serial` modulo 2³² (RFC 1982 arithmetic makes the wrap harmless).
    pub fn new(zone: Arc<Zone>, live: &BTreeSet<IpAddr>, serial: u64) -> View {
        let records = zone
            .entries
            .iter()
            .map(|entry| match &entry.source {
                Source::Nothing => Addresses::default(),
                Source::Live(candidates) => Addresses::of(
                    candidates
                        .iter()
                        .copied()
                        .filter(|address| live.contains(address)),
                ),
                Source::Fixed(addresses) => Addresses::of(addresses.iter().copied()),
            })
            .collect();
        View {
            zone,
            // The serial is defined modulo 2^32.
            serial: serial as u32,
            records,
        }
    }

    /// An empty view of `zone`: nothing is live yet (a node that has not joined).
    pub fn empty(zone: Arc<Zone>) -> View {
        View::new(zone, &BTreeSet::new(), 0)
    }

    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// The SOA serial.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// Every name with addresses (service names, node names), in zone order, with what it lists
    /// now before rotation; service names list only live VIPs and may list none.
    pub fn names(&self) -> impl Iterator<Item = NameAnswer<'_>> {
        self.zone
            .entries
            .iter()
            .zip(&self.records)
            .filter(|(entry, _)| entry.source != Source::Nothing)
            .map(|(entry, addresses)| NameAnswer {
                fqdn: &entry.fqdn,
                node: matches!(entry.source, Source::Fixed(_)),
                addresses,
            })
    }

    /// The addresses of the NS hosts, in file order (the glue of an NS answer).
    pub fn ns_glue(&self) -> impl Iterator<Item = (&str, &Addresses)> {
        self.zone
            .ns_hosts
            .iter()
            .filter_map(|(label, index)| Some((label.as_str(), self.records.get(*index)?)))
    }

    /// The answer to a question for `qname` (lower-case wire format, as `wire` parses it).
    pub fn lookup(&self, qname: &[u8], qtype: u16, qclass: u16) -> Answer<'_> {
        if qclass != CLASS_IN && qclass != CLASS_ANY {
            return Answer::Refused;
        }
        let Some(&index) = self.zone.index.get(qname) else {
            return if wire_within(qname, &self.zone.apex_wire) {
                Answer::NxDomain
            } else {
                Answer::Refused
            };
        };
        if qtype == rtype::AXFR || qtype == rtype::IXFR {
            return Answer::Refused;
        }
        let apex = index == 0;
        let Some(addresses) = self.records.get(index) else {
            return Answer::NxDomain;
        };
        let none = Found {
            v4: &[],
            v6: &[],
            soa: false,
            ns: false,
        };
        let found = match qtype {
            rtype::A => Found {
                v4: &addresses.v4,
                ..none
            },
            rtype::AAAA => Found {
                v6: &addresses.v6,
                ..none
            },
            rtype::SOA => Found { soa: apex, ..none },
            rtype::NS => Found { ns: apex, ..none },
            rtype::ANY => Found {
                v4: &addresses.v4,
                v6: &addresses.v6,
                soa: apex,
                ns: apex,
            },
            _ => none,
        };
        if found == none {
            Answer::NoData
        } else {
            Answer::Found(found)
        }
    }
}

/// One name and what it lists now, for `vipgate dns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAnswer<'v> {
    /// Lower-case, without the trailing dot.
    pub fqdn: &'v str,
    /// A node's own name (its fixed address) rather than a service name (live VIPs).
    pub node: bool,
    pub addresses: &'v Addresses,
}

/// Whether wire-format `name` is `apex` or beneath it (both lower-case, both well formed).
fn wire_within(name: &[u8], apex: &[u8]) -> bool {
    let mut offset = 0;
    while offset < name.len() {
        if name[offset..] == *apex {
            return true;
        }
        let length = usize::from(name[offset]);
        if length == 0 {
            return false;
        }
        offset += 1 + length;
    }
    false
}

/// `items` starting at `offset` modulo their number, wrapping around: the round-robin order.
pub fn rotated<T>(items: &[T], offset: usize) -> impl Iterator<Item = &T> {
    let start = if items.is_empty() {
        0
    } else {
        offset % items.len()
    };
    items[start..].iter().chain(&items[..start])
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
cluster: {name: t, secret: 0123456789abcdef0123, data_dir: /var/lib/vipgate}
nodes:
  - {name: node1, cluster_address: 198.51.100.11, public_interfaces: [eth0], public_address: 192.0.2.11}
  - {name: node2, cluster_address: 198.51.100.12, public_interfaces: [eth0], public_address: "2001:db8::12"}
  - {name: node3, cluster_address: 198.51.100.13, public_interfaces: [eth0]}
public_addresses:
  - address: 192.0.2.201/24
  - address: 192.0.2.202/24
  - address: 192.0.2.203/24
  - address: 2001:db8::201/64
volume: {path: /mnt/volume}
dns:
  zone: Vipgate.Test.
  ttl: 3
  names:
    - {name: nfs, addresses: all}
    - {name: smb.site1, addresses: [192.0.2.202, 192.0.2.203]}
    - {name: "@", addresses: [192.0.2.201]}
"#;

    fn zone() -> Arc<Zone> {
        let config = cluster_config::parse(FILE, "cluster.yaml").unwrap();
        Arc::new(Zone::new(config.dns.as_ref().unwrap(), &config.nodes))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn live(addresses: &[&str]) -> BTreeSet<IpAddr> {
        addresses.iter().map(|address| ip(address)).collect()
    }

    fn q(name: &str) -> Vec<u8> {
        wire_name(name)
    }

    #[test]
    fn names_answer_by_type_and_liveness() {
        let view = View::new(
            zone(),
            &live(&["192.0.2.203", "192.0.2.201", "2001:db8::201"]),
            7,
        );
        let v4 =
            |list: &[&str]| -> Vec<Ipv4Addr> { list.iter().map(|a| a.parse().unwrap()).collect() };
        let nfs_v4 = v4(&["192.0.2.201", "192.0.2.203"]);
        let nfs_v6: Vec<Ipv6Addr> = vec!["2001:db8::201".parse().unwrap()];
        let smb_v4 = v4(&["192.0.2.203"]);
        let apex_v4 = v4(&["192.0.2.201"]);
        let node1_v4 = v4(&["192.0.2.11"]);
        let node2_v6: Vec<Ipv6Addr> = vec!["2001:db8::12".parse().unwrap()];
        let found = |v4: &'static [Ipv4Addr], v6: &'static [Ipv6Addr]| (v4, v6);
        let _ = found;
        let cases: Vec<(&str, u16, u16, Answer<'_>)> = vec![
            (
                "nfs.vipgate.test",
                rtype::A,
                CLASS_IN,
                Answer::Found(Found {
                    v4: &nfs_v4,
                    v6: &[],
                    soa: false,
                    ns: false,
                }),
            ),
            (
                "nfs.vipgate.test",
                rtype::AAAA,
                CLASS_IN,
                Answer::Found(Found {
                    v4: &[],
                    v6: &nfs_v6,
                    soa: false,
                    ns: false,
                }),
            ),
            (
                "nfs.vipgate.test",
                rtype::ANY,
                CLASS_ANY,
                Answer::Found(Found {
                    v4: &nfs_v4,
                    v6: &nfs_v6,
                    soa: false,
                    ns: false,
                }),
            ),
            ("nfs.vipgate.test", 16, CLASS_IN, Answer::NoData),
            ("nfs.vipgate.test", rtype::SOA, CLASS_IN, Answer::NoData),
            (
                "smb.site1.vipgate.test",
                rtype::A,
                CLASS_IN,
                Answer::Found(Found {
                    v4: &smb_v4,
                    v6: &[],
                    soa: false,
                    ns: false,
                }),
            ),
            (
                "smb.site1.vipgate.test",
                rtype::AAAA,
                CLASS_IN,
                Answer::NoData,
            ),
            // An empty non-terminal exists: NODATA, not NXDOMAIN.
            ("site1.vipgate.test", rtype::A, CLASS_IN, Answer::NoData),
            (
                "vipgate.test",
                rtype::A,
                CLASS_IN,
                Answer::Found(Found {
                    v4: &apex_v4,
                    v6: &[],
                    soa: false,
                    ns: false,
                }),
            ),
            (
                "vipgate.test",
                rtype::SOA,
                CLASS_IN,
                Answer::Found(Found {
                    v4: &[],
                    v6: &[],
                    soa: true,
                    ns: false,
                }),
            ),
            (
                "vipgate.test",
                rtype::NS,
                CLASS_IN,
                Answer::Found(Found {
                    v4: &[],
                    v6: &[],
                    soa: false,
                    ns: true,
                }),
            ),
            ("vipgate.test", rtype::AAAA, CLASS_IN, Answer::NoData),
            (
                "node1.vipgate.test",
                rtype::A,
                CLASS_IN,
                Answer::Found(Found {
                    v4: &node1_v4,
                    v6: &[],
                    soa: false,
                    ns: false,
                }),
            ),
            (
                "node2.vipgate.test",
                rtype::AAAA,
                CLASS_IN,
                Answer::Found(Found {
                    v4: &[],
                    v6: &node2_v6,
                    soa: false,
                    ns: false,
                }),
            ),
            ("node3.vipgate.test", rtype::A, CLASS_IN, Answer::NoData),
            ("nope.vipgate.test", rtype::A, CLASS_IN, Answer::NxDomain),
            ("a.nfs.vipgate.test", rtype::A, CLASS_IN, Answer::NxDomain),
            ("example.com", rtype::A, CLASS_IN, Answer::Refused),
            ("test", rtype::A, CLASS_IN, Answer::Refused),
            ("xvipgate.test", rtype::A, CLASS_IN, Answer::Refused),
            ("", rtype::NS, CLASS_IN, Answer::Refused),
            ("nfs.vipgate.test", rtype::A, 3, Answer::Refused),
            ("vipgate.test", rtype::AXFR, CLASS_IN, Answer::Refused),
            ("vipgate.test", rtype::IXFR, CLASS_IN, Answer::Refused),
        ];
        for (name, qtype, qclass, expected) in cases {
            assert_eq!(
                view.lookup(&q(name), qtype, qclass),
                expected,
                "{name} {qtype} {qclass}"
            );
        }
        assert_eq!(view.serial(), 7);
    }

    #[test]
    fn a_service_name_without_live_vips_is_nodata() {
        let view = View::new(zone(), &BTreeSet::new(), 0);
        assert_eq!(
            view.lookup(&q("nfs.vipgate.test"), rtype::A, CLASS_IN),
            Answer::NoData
        );
        assert_eq!(
            view.lookup(&q("vipgate.test"), rtype::A, CLASS_IN),
            Answer::NoData
        );
        // Node names do not depend on the live set.
        assert!(matches!(
            view.lookup(&q("node1.vipgate.test"), rtype::A, CLASS_IN),
            Answer::Found(_)
        ));
    }

    #[test]
    fn ns_hosts_are_the_nodes_with_a_public_address() {
        let zone = zone();
        assert_eq!(zone.ns_labels().collect::<Vec<_>>(), ["node1", "node2"]);
        let view = View::empty(zone);
        let glue: Vec<(&str, Vec<IpAddr>)> = view
            .ns_glue()
            .map(|(label, a)| (label, a.all().collect()))
            .collect();
        assert_eq!(
            glue,
            [
                ("node1", vec![ip("192.0.2.11")]),
                ("node2", vec![ip("2001:db8::12")])
            ]
        );
    }

    #[test]
    fn names_lists_what_each_name_answers() {
        let view = View::new(zone(), &live(&["192.0.2.202"]), 1);
        let names: Vec<(&str, bool, Vec<IpAddr>)> = view
            .names()
            .map(|n| (n.fqdn, n.node, n.addresses.all().collect()))
            .collect();
        assert_eq!(
            names,
            [
                ("vipgate.test", false, vec![]),
                ("nfs.vipgate.test", false, vec![ip("192.0.2.202")]),
                ("smb.site1.vipgate.test", false, vec![ip("192.0.2.202")]),
                ("node1.vipgate.test", true, vec![ip("192.0.2.11")]),
                ("node2.vipgate.test", true, vec![ip("2001:db8::12")]),
                ("node3.vipgate.test", true, vec![]),
            ]
        );
    }

    #[test]
    fn serials_wrap_modulo_two_to_the_32() {
        let view = View::new(zone(), &BTreeSet::new(), (1 << 32) + 5);
        assert_eq!(view.serial(), 5);
    }

    #[test]
    fn rotation_starts_at_the_offset_and_wraps() {
        let items = [1, 2, 3];
        let cases = [
            (0, [1, 2, 3]),
            (1, [2, 3, 1]),
            (2, [3, 1, 2]),
            (3, [1, 2, 3]),
            (usize::MAX, [1, 2, 3]),
        ];
        for (offset, expected) in cases {
            assert_eq!(
                rotated(&items, offset).copied().collect::<Vec<_>>(),
                expected,
                "{offset}"
            );
        }
        assert_eq!(rotated::<u8>(&[], 5).count(), 0);
    }

    #[test]
    fn wire_names_are_lower_case_labels() {
        assert_eq!(wire_name("Nfs.Example"), b"\x03nfs\x07example\x00");
        assert!(wire_within(b"\x03nfs\x07example\x00", b"\x07example\x00"));
        assert!(wire_within(b"\x07example\x00", b"\x07example\x00"));
        assert!(!wire_within(b"\x08xexample\x00", b"\x07example\x00"));
        assert!(!wire_within(b"\x00", b"\x07example\x00"));
    }
}
