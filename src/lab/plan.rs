//! The pure address plan of a lab: which hosts exist, what their namespaces, interfaces and
//! addresses are called. No I/O happens here, so the plan is table-tested and the same for the
//! tests and the demo.
//!
//! Every lab uses the same documentation ranges (RFC 5737, RFC 3849): labs are isolated from each
//! other by their namespaces, not by their addresses.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Most nodes one lab holds; the cluster schema allows 32.
pub const MAX_NODES: usize = 32;
/// Most client hosts one lab holds.
pub const MAX_CLIENTS: usize = 16;
/// Longest lab name; namespace names are `<lab>-<host>`.
pub const MAX_NAME_LEN: usize = 16;

/// Name of the bridge carrying client (public) traffic, inside the switch namespace.
pub const PUBLIC_BRIDGE: &str = "br-public";
/// Name of the bridge carrying cluster (Raft, health) traffic, inside the switch namespace.
pub const CLUSTER_BRIDGE: &str = "br-cluster";
/// Name of every host's public interface, inside the host's namespace.
pub const PUBLIC_INTERFACE: &str = "pub0";
/// Name of every node's cluster interface, inside the node's namespace.
pub const CLUSTER_INTERFACE: &str = "clu0";

/// Public IPv4 network shared by nodes, clients and VIPs (RFC 5737 TEST-NET-1).
pub const PUBLIC_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 0);
/// Cluster IPv4 network shared by the nodes only (RFC 5737 TEST-NET-2).
pub const CLUSTER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 0);
/// Public IPv6 network (RFC 3849 documentation prefix).
pub const PUBLIC_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0);

/// The two networks of a lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Network {
    Public,
    Cluster,
}

/// What a lab host is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Node,
    Client,
}

/// One interface of a host: its name inside the host, the switch port it is plugged into, and
/// its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedInterface {
    pub network: Network,
    pub name: String,
    pub switch_port: String,
    pub addresses: Vec<IpNet>,
}

/// One host of a lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedHost {
    pub name: String,
    pub role: Role,
    pub netns: String,
    pub interfaces: Vec<PlannedInterface>,
}

impl PlannedHost {
    /// The host's first address of the given family on a network.
    pub fn address(&self, network: Network, v6: bool) -> Option<IpAddr> {
        self.interfaces
            .iter()
            .filter(|interface| interface.network == network)
            .flat_map(|interface| interface.addresses.iter())
            .map(IpNet::addr)
            .find(|address| address.is_ipv6() == v6)
    }

    /// The host's public IPv4 address; every host has one.
    pub fn public_v4(&self) -> IpAddr {
        self.address(Network::Public, false)
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }
}

/// The full plan of a lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    pub switch_netns: String,
    pub hosts: Vec<PlannedHost>,
}

/// Why a lab cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "lab name {0:?} is invalid: use 1 to {MAX_NAME_LEN} of a-z, 0-9 and '-', starting with a letter"
    )]
    BadName(String),
    #[error("a lab holds 1 to {MAX_NODES} nodes, not {0}")]
    Nodes(usize),
    #[error("a lab holds 0 to {MAX_CLIENTS} clients, not {0}")]
    Clients(usize),
}

/// Whether `name` may name a lab. Names become part of namespace names and file paths, so they
/// are restricted to a safe alphabet.
pub fn valid_lab_name(name: &str) -> bool {
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    starts_with_letter
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Host number `index` (1-based) of a role, as the last octet/group of its addresses: nodes are
/// .11, .12, …; clients .101, .102, ….
fn host_octet(role: Role, index: usize) -> u8 {
    let base = match role {
        Role::Node => 10,
        Role::Client => 100,
    };
    // The limits above keep this within a byte (10 + 32, 100 + 16).
    u8::try_from(base + index).unwrap_or(u8::MAX)
}

fn v4_in(network: Ipv4Addr, octet: u8) -> IpNet {
    let [a, b, c, _] = network.octets();
    IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::new(a, b, c, octet), 24).unwrap_or_default())
}

fn v6_in(network: Ipv6Addr, octet: u8) -> IpNet {
    let mut segments = network.segments();
    // Written the way the IPv4 octet reads: host .11 becomes ::11.
    segments[7] = u16::from_str_radix(&octet.to_string(), 16).unwrap_or(u16::from(octet));
    IpNet::V6(ipnet::Ipv6Net::new(Ipv6Addr::from(segments), 64).unwrap_or_default())
}

/// Computes the plan of a lab with `nodes` nodes and `clients` client hosts.
pub fn plan(name: &str, nodes: usize, clients: usize) -> Result<Plan, PlanError> {
    if !valid_lab_name(name) {
        return Err(PlanError::BadName(name.to_owned()));
    }
    if nodes == 0 || nodes > MAX_NODES {
        return Err(PlanError::Nodes(nodes));
    }
    if clients > MAX_CLIENTS {
        return Err(PlanError::Clients(clients));
    }
    let roles = (1..=nodes)
        .map(|index| (Role::Node, index))
        .chain((1..=clients).map(|index| (Role::Client, index)));
    let hosts = roles
        .map(|(role, index)| {
            let host_name = match role {
                Role::Node => format!("node{index}"),
                Role::Client => format!("client{index}"),
            };
            let octet = host_octet(role, index);
            let mut interfaces = vec![PlannedInterface {
                network: Network::Public,
                name: PUBLIC_INTERFACE.to_owned(),
                switch_port: format!("{host_name}-p"),
                addresses: vec![v4_in(PUBLIC_V4, octet), v6_in(PUBLIC_V6, octet)],
            }];
            if role == Role::Node {
                interfaces.push(PlannedInterface {
                    network: Network::Cluster,
                    name: CLUSTER_INTERFACE.to_owned(),
                    switch_port: format!("{host_name}-c"),
                    addresses: vec![v4_in(CLUSTER_V4, octet)],
                });
            }
            PlannedHost {
                netns: format!("{name}-{host_name}"),
                name: host_name,
                role,
                interfaces,
            }
        })
        .collect();
    Ok(Plan {
        name: name.to_owned(),
        switch_netns: format!("{name}-sw"),
        hosts,
    })
}

impl Plan {
    /// The host called `name`.
    pub fn host(&self, name: &str) -> Option<&PlannedHost> {
        self.hosts.iter().find(|host| host.name == name)
    }

    /// The hosts of a role, in order.
    pub fn hosts_of(&self, role: Role) -> impl Iterator<Item = &PlannedHost> {
        self.hosts.iter().filter(move |host| host.role == role)
    }

    /// Every namespace of the lab, the switch first.
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.switch_netns.as_str())
            .chain(self.hosts.iter().map(|host| host.netns.as_str()))
    }

    /// The `/etc/hosts` every lab host sees: each host by name on its public addresses, and
    /// each node as `<name>-cluster` on its cluster address.
    pub fn etc_hosts(&self) -> String {
        let mut text = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost\n");
        for host in &self.hosts {
            for interface in &host.interfaces {
                let alias = match interface.network {
                    Network::Public => host.name.clone(),
                    Network::Cluster => format!("{}-cluster", host.name),
                };
                for address in &interface.addresses {
                    text.push_str(&format!("{}\t{alias}\n", address.addr()));
                }
            }
        }
        text
    }
}

impl Network {
    /// The bridge of this network inside the switch namespace.
    pub fn bridge(self) -> &'static str {
        match self {
            Network::Public => PUBLIC_BRIDGE,
            Network::Cluster => CLUSTER_BRIDGE,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Network::Public => "public",
            Network::Cluster => "cluster",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        let table = [
            ("vg1", true),
            ("demo", true),
            ("a-b-c", true),
            ("", false),
            ("1abc", false),
            ("-abc", false),
            ("Demo", false),
            ("a/b", false),
            ("a.b", false),
            ("abcdefghijklmnopq", false),
            ("abcdefghijklmnop", true),
        ];
        for (name, valid) in table {
            assert_eq!(valid_lab_name(name), valid, "{name:?}");
        }
    }

    #[test]
    fn three_nodes_one_client() {
        let plan = plan("t1", 3, 1).unwrap();
        assert_eq!(plan.switch_netns, "t1-sw");
        let rows: Vec<(String, String, Vec<String>)> = plan
            .hosts
            .iter()
            .map(|host| {
                let addresses = host
                    .interfaces
                    .iter()
                    .flat_map(|i| {
                        i.addresses
                            .iter()
                            .map(move |a| format!("{}:{}:{a}", i.name, i.switch_port))
                    })
                    .collect();
                (host.name.clone(), host.netns.clone(), addresses)
            })
            .collect();
        let expected = [
            (
                "node1",
                "t1-node1",
                vec![
                    "pub0:node1-p:192.0.2.11/24",
                    "pub0:node1-p:2001:db8:0:1::11/64",
                    "clu0:node1-c:198.51.100.11/24",
                ],
            ),
            (
                "node2",
                "t1-node2",
                vec![
                    "pub0:node2-p:192.0.2.12/24",
                    "pub0:node2-p:2001:db8:0:1::12/64",
                    "clu0:node2-c:198.51.100.12/24",
                ],
            ),
            (
                "node3",
                "t1-node3",
                vec![
                    "pub0:node3-p:192.0.2.13/24",
                    "pub0:node3-p:2001:db8:0:1::13/64",
                    "clu0:node3-c:198.51.100.13/24",
                ],
            ),
            (
                "client1",
                "t1-client1",
                vec![
                    "pub0:client1-p:192.0.2.101/24",
                    "pub0:client1-p:2001:db8:0:1::101/64",
                ],
            ),
        ];
        assert_eq!(rows.len(), expected.len());
        for (row, (name, netns, addresses)) in rows.iter().zip(expected) {
            assert_eq!(row.0, name);
            assert_eq!(row.1, netns);
            assert_eq!(row.2, addresses);
        }
    }

    #[test]
    fn limits_are_enforced() {
        assert_eq!(plan("t", 0, 1), Err(PlanError::Nodes(0)));
        assert_eq!(plan("t", 33, 1), Err(PlanError::Nodes(33)));
        assert_eq!(plan("t", 3, 17), Err(PlanError::Clients(17)));
        assert_eq!(plan("T", 3, 1), Err(PlanError::BadName("T".into())));
        // The largest lab still yields valid Linux interface names (at most 15 bytes).
        let plan = plan("abcdefghijklmnop", MAX_NODES, MAX_CLIENTS).unwrap();
        let longest_port = plan
            .hosts
            .iter()
            .flat_map(|h| h.interfaces.iter().map(|i| i.switch_port.len()))
            .max()
            .unwrap();
        assert!(longest_port <= 15, "{longest_port}");
        assert_eq!(
            plan.host("node32").unwrap().public_v4().to_string(),
            "192.0.2.42"
        );
        assert_eq!(
            plan.host("client16").unwrap().public_v4().to_string(),
            "192.0.2.116"
        );
    }

    #[test]
    fn etc_hosts_names_every_address() {
        let text = plan("t1", 2, 1).unwrap().etc_hosts();
        for line in [
            "192.0.2.11\tnode1",
            "2001:db8:0:1::12\tnode2",
            "198.51.100.12\tnode2-cluster",
            "192.0.2.101\tclient1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("client1-cluster"));
    }
}
