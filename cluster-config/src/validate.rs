//! Semantic validation: turns the file as written ([`crate::schema`]) into the runtime model
//! ([`crate::model`]), collecting every problem instead of stopping at the first.
//!
//! Each field is checked and converted in one step, so no rule is written twice and nothing is
//! parsed again later. A field that fails yields `None` plus a diagnostic; rules that compare
//! fields (uniqueness, references, timing ratios) skip the `None`s so one mistake is reported once
//! rather than again by every rule that reads it. The model is assembled only when every part is
//! present, and returned only when no diagnostic was raised.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use crate::diagnostic::Diagnostic;
use crate::duration::{format_duration, parse_duration};
use crate::model::{
    Access, ClientMatch, Cluster, ClusterConfig, DEFAULT_PORT, Dns, DnsName, Export, HandleScheme,
    MAX_HEALTH_TIMEOUT, MAX_NODES, MIN_SECRET_LEN, Nfs, NfsVersion, Node, NodeId, PublicAddress,
    SecretSource, Share, Smb, Squash, Timings, Volume,
};
use crate::positions::PositionIndex;
use crate::rules;
use crate::schema::{
    RawAccess, RawCluster, RawConfig, RawDns, RawDnsAddresses, RawExport, RawHandles, RawNode,
    RawPublicAddress, RawShare, RawSquash, RawTimings, RawVolume,
};

const DEFAULT_ANON_ID: u32 = 65_534;
const DEFAULT_WEIGHT: u32 = 1;
const MAX_WEIGHT: u32 = 100;
const DEFAULT_TTL: u32 = 5;
const MAX_TTL: u32 = 3_600;
const DEFAULT_DNS_PORT: u16 = 53;
/// No timing is useful beyond an hour, and the cap keeps lease arithmetic far from overflow.
const MAX_TIMING: Duration = Duration::from_secs(3_600);

/// Validates `raw` and converts it, or returns every problem found.
pub(crate) fn validate(
    raw: &RawConfig,
    positions: &PositionIndex,
    file: &str,
) -> Result<ClusterConfig, Vec<Diagnostic>> {
    let mut checker = Checker {
        positions,
        file,
        diagnostics: Vec::new(),
    };
    let config = checker.config(raw);
    if !checker.diagnostics.is_empty() {
        return Err(checker.diagnostics);
    }
    config.ok_or_else(|| {
        // Every `None` above is raised together with a diagnostic, so this is a bug in this
        // module; it is still reported rather than turned into a panic.
        vec![Diagnostic {
            file: file.to_owned(),
            line: 1,
            column: 1,
            path: String::new(),
            message: "internal error: the file passed validation but could not be converted"
                .to_owned(),
        }]
    })
}

struct Checker<'a> {
    positions: &'a PositionIndex,
    file: &'a str,
    diagnostics: Vec<Diagnostic>,
}

/// A node as far as it could be checked; `None` parts have been reported.
struct NodeDraft<'r> {
    raw: &'r RawNode,
    name: Option<String>,
    cluster_address: Option<IpAddr>,
    public_interfaces: Option<Vec<String>>,
    public_address: Option<Option<IpAddr>>,
}

impl NodeDraft<'_> {
    fn finish(self, id: NodeId) -> Option<Node> {
        Some(Node {
            id,
            name: self.name?,
            cluster_address: self.cluster_address?,
            public_interfaces: self.public_interfaces?,
            public_address: self.public_address?,
        })
    }
}

impl Checker<'_> {
    fn report(&mut self, path: &str, message: String) {
        let position = self.positions.locate(path);
        self.diagnostics.push(Diagnostic {
            file: self.file.to_owned(),
            line: position.line,
            column: position.column,
            path: path.to_owned(),
            message,
        });
    }

    /// Reports the error of `result` at `path`, if any.
    fn check<T>(&mut self, path: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(message) => {
                self.report(path, message);
                None
            }
        }
    }

    fn config(&mut self, raw: &RawConfig) -> Option<ClusterConfig> {
        let volume = self.volume(&raw.volume);
        let cluster = self.cluster(&raw.cluster, volume.as_ref());
        let nodes = self.nodes(&raw.nodes);
        let public_addresses = self.public_addresses(&raw.public_addresses, &raw.nodes, &nodes);
        let nfs = self.nfs(&raw.nfs.exports);
        let smb = self.smb(raw.smb.manage, &raw.smb.shares);
        let dns = match &raw.dns {
            Some(dns) => self.dns(dns, &raw.public_addresses, &raw.nodes).map(Some),
            None => Some(None),
        };
        let timings = self.timings(&raw.timings);
        Some(ClusterConfig {
            cluster: cluster?,
            nodes: nodes
                .into_iter()
                .enumerate()
                .map(|(index, draft)| draft.finish(NodeId(index)))
                .collect::<Option<_>>()?,
            public_addresses: public_addresses?,
            volume: volume?,
            nfs: nfs?,
            smb: smb?,
            dns: dns?,
            timings: timings?,
        })
    }

    fn volume(&mut self, raw: &RawVolume) -> Option<Volume> {
        let path = self.check("volume.path", rules::parse_absolute_path(&raw.path));
        let path = path.and_then(|path| {
            if path.parent().is_none() {
                self.report(
                    "volume.path",
                    "the volume cannot be mounted at /".to_owned(),
                );
                None
            } else {
                Some(path)
            }
        });
        let handles = match raw.handles {
            RawHandles::Auto => HandleScheme::Auto,
            RawHandles::Kernel => HandleScheme::Kernel,
            RawHandles::GlusterfsGfid => HandleScheme::GlusterfsGfid,
        };
        Some(Volume {
            path: path?,
            handles,
        })
    }

    fn cluster(&mut self, raw: &RawCluster, volume: Option<&Volume>) -> Option<Cluster> {
        let name = self
            .check("cluster.name", rules::check_name(&raw.name))
            .map(|()| raw.name.clone());
        let secret = match (&raw.secret, &raw.secret_file) {
            (Some(_), Some(_)) => {
                self.report(
                    "cluster.secret",
                    "both secret and secret_file are set; keep only one".to_owned(),
                );
                None
            }
            (None, None) => {
                self.report(
                    "cluster",
                    "neither secret nor secret_file is set; one of them is required".to_owned(),
                );
                None
            }
            (Some(secret), None) => {
                let length = secret.chars().count();
                if length < MIN_SECRET_LEN {
                    // The message must not echo the secret itself.
                    self.report(
                        "cluster.secret",
                        format!(
                            "the inline secret is {length} characters long; at least \
                             {MIN_SECRET_LEN} are needed"
                        ),
                    );
                    None
                } else {
                    Some(SecretSource::Inline(secret.clone()))
                }
            }
            (None, Some(file)) => self
                .check("cluster.secret_file", rules::parse_absolute_path(file))
                .map(SecretSource::File),
        };
        let data_dir = self.check(
            "cluster.data_dir",
            rules::parse_absolute_path(&raw.data_dir),
        );
        let data_dir = data_dir.and_then(|data_dir| match volume {
            Some(volume) if data_dir.starts_with(&volume.path) => {
                self.report(
                    "cluster.data_dir",
                    format!(
                        "{} is inside volume.path {}; Raft state must stay local to each node",
                        data_dir.display(),
                        volume.path.display()
                    ),
                );
                None
            }
            _ => Some(data_dir),
        });
        Some(Cluster {
            name: name?,
            secret: secret?,
            data_dir: data_dir?,
            port: match raw.port {
                Some(0) => {
                    self.report(
                        "cluster.port",
                        "port 0 is not a port a peer can dial".to_owned(),
                    );
                    return None;
                }
                Some(port) => port,
                None => DEFAULT_PORT,
            },
        })
    }

    fn nodes<'r>(&mut self, raw_nodes: &'r [RawNode]) -> Vec<NodeDraft<'r>> {
        if raw_nodes.is_empty() {
            self.report(
                "nodes",
                "no nodes are listed; a cluster needs at least one".to_owned(),
            );
        } else if raw_nodes.len() > MAX_NODES {
            self.report(
                "nodes",
                format!(
                    "{} nodes are listed; a cluster has at most {MAX_NODES}",
                    raw_nodes.len()
                ),
            );
        }
        let mut drafts = Vec::with_capacity(raw_nodes.len());
        for (index, raw) in raw_nodes.iter().enumerate() {
            let path = format!("nodes[{index}]");
            let name = self
                .check(&format!("{path}.name"), rules::check_name(&raw.name))
                .map(|()| raw.name.clone());
            let cluster_address = self.check(
                &format!("{path}.cluster_address"),
                rules::parse_node_address(&raw.cluster_address),
            );
            let public_interfaces = self.interfaces(&path, &raw.public_interfaces);
            let public_address = match &raw.public_address {
                None => Some(None),
                Some(text) => self
                    .check(
                        &format!("{path}.public_address"),
                        rules::parse_node_address(text),
                    )
                    .map(Some),
            };
            drafts.push(NodeDraft {
                raw,
                name,
                cluster_address,
                public_interfaces,
                public_address,
            });
        }
        self.check_unique_nodes(&drafts);
        drafts
    }

    fn interfaces(&mut self, node_path: &str, raw: &[String]) -> Option<Vec<String>> {
        let list_path = format!("{node_path}.public_interfaces");
        if raw.is_empty() {
            self.report(
                &list_path,
                "no public interfaces are listed; a node needs at least one".to_owned(),
            );
            return None;
        }
        let mut valid = true;
        for (index, name) in raw.iter().enumerate() {
            let path = format!("{list_path}[{index}]");
            if self
                .check(&path, rules::check_interface_name(name))
                .is_none()
            {
                valid = false;
            } else if raw[..index].contains(name) {
                self.report(&path, format!("{name} is listed twice"));
                valid = false;
            }
        }
        valid.then(|| raw.to_vec())
    }

    fn check_unique_nodes(&mut self, drafts: &[NodeDraft<'_>]) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut addresses: HashMap<IpAddr, (usize, &'static str)> = HashMap::new();
        for (index, draft) in drafts.iter().enumerate() {
            if draft.name.is_some() {
                if let Some(first) = names.get(draft.raw.name.as_str()) {
                    self.report(
                        &format!("nodes[{index}].name"),
                        format!("{} is already the name of nodes[{first}]", draft.raw.name),
                    );
                } else {
                    names.insert(&draft.raw.name, index);
                }
            }
        }
        // Cluster and fixed public addresses share one namespace: each may belong to one node.
        for (index, draft) in drafts.iter().enumerate() {
            let owned = [
                (draft.cluster_address, "cluster_address", "cluster address"),
                (
                    draft.public_address.flatten(),
                    "public_address",
                    "public address",
                ),
            ];
            for (address, field, role) in owned {
                let Some(address) = address else { continue };
                match addresses.entry(address) {
                    Entry::Occupied(first) => {
                        let (first_index, first_role) = *first.get();
                        let owner = &drafts[first_index].raw.name;
                        self.report(
                            &format!("nodes[{index}].{field}"),
                            format!("{address} is already {owner}'s {first_role}"),
                        );
                    }
                    Entry::Vacant(slot) => {
                        slot.insert((index, role));
                    }
                }
            }
        }
    }

    fn public_addresses(
        &mut self,
        raw_addresses: &[RawPublicAddress],
        raw_nodes: &[RawNode],
        nodes: &[NodeDraft<'_>],
    ) -> Option<Vec<PublicAddress>> {
        if raw_addresses.is_empty() {
            self.report(
                "public_addresses",
                "no public addresses are listed; a cluster needs at least one".to_owned(),
            );
            return None;
        }
        let mut node_addresses: HashMap<IpAddr, String> = HashMap::new();
        for draft in nodes {
            if let Some(address) = draft.cluster_address {
                node_addresses.insert(address, format!("{}'s cluster address", draft.raw.name));
            }
            if let Some(Some(address)) = draft.public_address {
                node_addresses.insert(address, format!("{}'s public address", draft.raw.name));
            }
        }
        let mut seen: HashMap<IpAddr, usize> = HashMap::new();
        let mut parsed: Vec<(usize, IpNet)> = Vec::new();
        let mut result = Some(Vec::with_capacity(raw_addresses.len()));
        for (index, raw) in raw_addresses.iter().enumerate() {
            let path = format!("public_addresses[{index}]");
            let address_path = format!("{path}.address");
            let mut address = self.check(&address_path, rules::parse_public_address(&raw.address));
            if let Some(network) = address {
                let ip = network.addr();
                if let Some(owner) = node_addresses.get(&ip) {
                    self.report(&address_path, format!("{ip} is {owner}"));
                    address = None;
                } else if let Some(first) = seen.get(&ip) {
                    self.report(
                        &address_path,
                        format!("{ip} is already public_addresses[{first}]"),
                    );
                    address = None;
                } else {
                    seen.insert(ip, index);
                    parsed.push((index, network));
                }
            }
            let eligible = self.eligible_nodes(&path, raw.nodes.as_deref(), raw_nodes);
            let interface = match &raw.interface {
                None => Some(None),
                Some(name) => {
                    let checked = self.check(
                        &format!("{path}.interface"),
                        rules::check_interface_name(name),
                    );
                    checked.and_then(|()| {
                        self.check_interface_on_eligible(&path, name, eligible.as_deref(), nodes)
                    })
                }
            };
            let weight = match raw.weight {
                None => Some(DEFAULT_WEIGHT),
                Some(weight @ 1..=MAX_WEIGHT) => Some(weight),
                Some(weight) => {
                    self.report(
                        &format!("{path}.weight"),
                        format!("weight {weight} is outside 1 to {MAX_WEIGHT}"),
                    );
                    None
                }
            };
            let entry = (|| {
                Some(PublicAddress {
                    address: address?,
                    interface: interface?,
                    eligible: eligible?,
                    weight: weight?,
                })
            })();
            result = result.zip(entry).map(|(mut list, entry)| {
                list.push(entry);
                list
            });
        }
        self.check_subnet_prefixes(&parsed);
        result
    }

    /// Resolves a VIP's `nodes` list against the node names as written, so that a node whose
    /// own entry has a problem does not also make every reference to it fail.
    fn eligible_nodes(
        &mut self,
        path: &str,
        listed: Option<&[String]>,
        raw_nodes: &[RawNode],
    ) -> Option<Vec<NodeId>> {
        let Some(listed) = listed else {
            return Some((0..raw_nodes.len()).map(NodeId).collect());
        };
        if listed.is_empty() {
            self.report(
                &format!("{path}.nodes"),
                "no nodes are listed; omit the key to let every node hold this address".to_owned(),
            );
            return None;
        }
        let mut ids = Some(Vec::with_capacity(listed.len()));
        for (index, name) in listed.iter().enumerate() {
            let entry_path = format!("{path}.nodes[{index}]");
            let id = if listed[..index].contains(name) {
                self.report(&entry_path, format!("{name} is listed twice"));
                None
            } else if let Some(position) = raw_nodes.iter().position(|node| &node.name == name) {
                Some(NodeId(position))
            } else {
                self.report(&entry_path, format!("there is no node named {name:?}"));
                None
            };
            ids = ids.zip(id).map(|(mut ids, id)| {
                ids.push(id);
                ids
            });
        }
        ids
    }

    fn check_interface_on_eligible(
        &mut self,
        path: &str,
        interface: &str,
        eligible: Option<&[NodeId]>,
        nodes: &[NodeDraft<'_>],
    ) -> Option<Option<String>> {
        let Some(eligible) = eligible else {
            return Some(Some(interface.to_owned()));
        };
        let lacking: Vec<&str> = eligible
            .iter()
            .filter_map(|id| nodes.get(id.index()))
            .filter(|node| {
                !node
                    .raw
                    .public_interfaces
                    .iter()
                    .any(|name| name == interface)
            })
            .map(|node| node.raw.name.as_str())
            .collect();
        if lacking.is_empty() {
            return Some(Some(interface.to_owned()));
        }
        self.report(
            &format!("{path}.interface"),
            format!(
                "{interface} is not among the public_interfaces of {}, which may hold this address",
                lacking.join(", ")
            ),
        );
        None
    }

    /// Two VIPs in one subnet must agree on its prefix, or the kernel routes the subnet by
    /// whichever was added first and the other VIP's prefix silently does nothing.
    fn check_subnet_prefixes(&mut self, parsed: &[(usize, IpNet)]) {
        for (position, (index, network)) in parsed.iter().enumerate() {
            let conflict = parsed[..position].iter().find(|(_, earlier)| {
                earlier.prefix_len() != network.prefix_len()
                    && (earlier.contains(&network.addr()) || network.contains(&earlier.addr()))
            });
            if let Some((earlier_index, earlier)) = conflict {
                self.report(
                    &format!("public_addresses[{index}].address"),
                    format!(
                        "{network} shares a subnet with {earlier} (public_addresses[{earlier_index}]) \
                         but has a different prefix length"
                    ),
                );
            }
        }
    }

    fn nfs(&mut self, raw_exports: &[RawExport]) -> Option<Nfs> {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut pseudo_paths: HashMap<String, usize> = HashMap::new();
        let mut exports = Some(Vec::with_capacity(raw_exports.len()));
        for (index, raw) in raw_exports.iter().enumerate() {
            let path = format!("nfs.exports[{index}]");
            let mut name = self
                .check(&format!("{path}.name"), rules::check_export_name(&raw.name))
                .map(|()| raw.name.clone());
            if name.is_some() {
                if let Some(first) = names.get(raw.name.as_str()) {
                    self.report(
                        &format!("{path}.name"),
                        format!("{} is already the name of nfs.exports[{first}]", raw.name),
                    );
                    name = None;
                } else {
                    names.insert(&raw.name, index);
                }
            }
            let local_path = self.check(
                &format!("{path}.path"),
                rules::parse_volume_relative_path(&raw.path),
            );
            let pseudo_path_field = format!("{path}.pseudo");
            let mut pseudo = match &raw.pseudo {
                Some(pseudo) => self
                    .check(&pseudo_path_field, rules::check_pseudo_path(pseudo))
                    .map(|()| pseudo.clone()),
                // An invalid name is already reported; its default pseudo path is not checked.
                None => name.as_ref().map(|name| format!("/{name}")),
            };
            if let Some(pseudo_path) = &pseudo {
                if let Some(first) = pseudo_paths.get(pseudo_path) {
                    let how = if raw.pseudo.is_none() {
                        " (the default, /<name>)"
                    } else {
                        ""
                    };
                    self.report(
                        &pseudo_path_field,
                        format!(
                            "{pseudo_path}{how} is already the pseudo path of nfs.exports[{first}]"
                        ),
                    );
                    pseudo = None;
                } else {
                    pseudo_paths.insert(pseudo_path.clone(), index);
                }
            }
            let protocols = self.protocols(&path, raw.protocols.as_deref());
            let clients = self.clients(&path, raw.clients.as_deref());
            let squash = match raw.squash {
                RawSquash::None => Squash::None,
                RawSquash::Root => Squash::Root,
                RawSquash::All => Squash::All,
            };
            let anon_uid = self.anon_id(&path, "anon_uid", raw.anon_uid, squash);
            let anon_gid = self.anon_id(&path, "anon_gid", raw.anon_gid, squash);
            let access = match raw.access {
                RawAccess::Ro => Access::ReadOnly,
                RawAccess::Rw => Access::ReadWrite,
            };
            let export = (|| {
                Some(Export {
                    name: name?,
                    path: local_path?,
                    pseudo: pseudo?,
                    protocols: protocols?,
                    access,
                    clients: clients?,
                    squash,
                    anon_uid: anon_uid?,
                    anon_gid: anon_gid?,
                })
            })();
            exports = exports.zip(export).map(|(mut list, export)| {
                list.push(export);
                list
            });
        }
        exports.map(|exports| Nfs { exports })
    }

    fn protocols(&mut self, path: &str, listed: Option<&[u32]>) -> Option<Vec<NfsVersion>> {
        let Some(listed) = listed else {
            return Some(vec![NfsVersion::V3, NfsVersion::V4]);
        };
        let list_path = format!("{path}.protocols");
        if listed.is_empty() {
            self.report(
                &list_path,
                "no protocols are listed; omit the key to serve both 3 and 4".to_owned(),
            );
            return None;
        }
        let mut versions = Some(Vec::new());
        for (index, version) in listed.iter().enumerate() {
            let entry_path = format!("{list_path}[{index}]");
            let parsed = match version {
                3 => Some(NfsVersion::V3),
                4 => Some(NfsVersion::V4),
                other => {
                    self.report(
                        &entry_path,
                        format!("NFS version {other} is not served; list 3, 4 or both"),
                    );
                    None
                }
            };
            let parsed = parsed.and_then(|parsed| {
                if listed[..index].contains(version) {
                    self.report(&entry_path, format!("version {version} is listed twice"));
                    None
                } else {
                    Some(parsed)
                }
            });
            versions = versions.zip(parsed).map(|(mut list, parsed)| {
                list.push(parsed);
                list
            });
        }
        versions.map(|mut versions| {
            versions.sort_unstable();
            versions
        })
    }

    fn clients(&mut self, path: &str, listed: Option<&[String]>) -> Option<Vec<ClientMatch>> {
        let Some(listed) = listed else {
            return Some(vec![ClientMatch::Any]);
        };
        let list_path = format!("{path}.clients");
        if listed.is_empty() {
            self.report(
                &list_path,
                "no clients are listed; omit the key to allow every client".to_owned(),
            );
            return None;
        }
        let mut clients = Some(Vec::with_capacity(listed.len()));
        for (index, text) in listed.iter().enumerate() {
            let client = self.check(&format!("{list_path}[{index}]"), rules::parse_client(text));
            clients = clients.zip(client).map(|(mut list, client)| {
                list.push(client);
                list
            });
        }
        clients
    }

    fn anon_id(
        &mut self,
        path: &str,
        field: &str,
        value: Option<u32>,
        squash: Squash,
    ) -> Option<u32> {
        let id = value.unwrap_or(DEFAULT_ANON_ID);
        let field_path = format!("{path}.{field}");
        if id == u32::MAX {
            self.report(
                &field_path,
                format!("{id} is not a usable id; the kernel reads it as \"no change\""),
            );
            return None;
        }
        if id == 0 && squash != Squash::None {
            self.report(
                &field_path,
                format!(
                    "{field} 0 makes squashed callers root, which defeats squashing; use an \
                     unprivileged id such as {DEFAULT_ANON_ID}"
                ),
            );
            return None;
        }
        Some(id)
    }

    fn smb(&mut self, manage: bool, raw_shares: &[RawShare]) -> Option<Smb> {
        // SMB clients compare share names without regard to case.
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut shares = Some(Vec::with_capacity(raw_shares.len()));
        for (index, raw) in raw_shares.iter().enumerate() {
            let path = format!("smb.shares[{index}]");
            let name_path = format!("{path}.name");
            let mut name = self
                .check(&name_path, rules::check_share_name(&raw.name))
                .map(|()| raw.name.clone());
            if name.is_some() {
                match names.entry(raw.name.to_lowercase()) {
                    Entry::Occupied(first) => {
                        self.report(
                            &name_path,
                            format!(
                                "{} is already the name of smb.shares[{}] (share names ignore case)",
                                raw.name,
                                first.get()
                            ),
                        );
                        name = None;
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(index);
                    }
                }
            }
            let local_path = self.check(
                &format!("{path}.path"),
                rules::check_no_samba_variable(&raw.path)
                    .and_then(|()| rules::parse_volume_relative_path(&raw.path)),
            );
            let valid_users = match &raw.valid_users {
                None => Some(None),
                Some(users) => self.valid_users(&path, users).map(Some),
            };
            let share = (|| {
                Some(Share {
                    name: name?,
                    path: local_path?,
                    read_only: raw.read_only.unwrap_or(true),
                    valid_users: valid_users?,
                })
            })();
            shares = shares.zip(share).map(|(mut list, share)| {
                list.push(share);
                list
            });
        }
        shares.map(|shares| Smb { manage, shares })
    }

    fn valid_users(&mut self, path: &str, users: &[String]) -> Option<Vec<String>> {
        let list_path = format!("{path}.valid_users");
        if users.is_empty() {
            self.report(
                &list_path,
                "no users are listed; omit the key to allow every user".to_owned(),
            );
            return None;
        }
        let mut valid = true;
        for (index, user) in users.iter().enumerate() {
            if self
                .check(
                    &format!("{list_path}[{index}]"),
                    rules::check_user_name(user),
                )
                .is_none()
            {
                valid = false;
            }
        }
        valid.then(|| users.to_vec())
    }

    fn dns(
        &mut self,
        raw: &RawDns,
        raw_addresses: &[RawPublicAddress],
        raw_nodes: &[RawNode],
    ) -> Option<Dns> {
        let zone = self.check("dns.zone", rules::parse_dns_name(&raw.zone));
        let ttl = match raw.ttl {
            None => Some(DEFAULT_TTL),
            Some(0) => {
                self.report(
                    "dns.ttl",
                    format!(
                        "ttl 0 forbids caching and floods the servers with queries; use 1 to \
                         {MAX_TTL} seconds"
                    ),
                );
                None
            }
            Some(ttl) if ttl > MAX_TTL => {
                self.report(
                    "dns.ttl",
                    format!(
                        "ttl {ttl} is longer than {MAX_TTL} seconds; clients would keep dead \
                         addresses that long"
                    ),
                );
                None
            }
            Some(ttl) => Some(ttl),
        };
        let port = match raw.port {
            None => Some(DEFAULT_DNS_PORT),
            Some(0) => {
                self.report("dns.port", "port 0 is not a port to listen on".to_owned());
                None
            }
            Some(port) => Some(port),
        };
        let listen = self.listen(raw.listen.as_deref());
        let listen = listen.zip(port).map(|(addresses, port)| {
            addresses
                .into_iter()
                .map(|address| SocketAddr::new(address, port))
                .collect()
        });
        let names = self.dns_names(raw, zone.as_deref(), raw_addresses, raw_nodes);
        Some(Dns {
            zone: zone?,
            ttl: ttl?,
            listen: listen?,
            names: names?,
        })
    }

    fn listen(&mut self, listed: Option<&[String]>) -> Option<Vec<IpAddr>> {
        let Some(listed) = listed else {
            return Some(vec![
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            ]);
        };
        if listed.is_empty() {
            self.report(
                "dns.listen",
                "no addresses are listed; omit the key to listen on 0.0.0.0 and ::, or remove \
                 the dns section to turn DNS off"
                    .to_owned(),
            );
            return None;
        }
        let mut addresses = Some(Vec::with_capacity(listed.len()));
        for (index, text) in listed.iter().enumerate() {
            let path = format!("dns.listen[{index}]");
            let address = self.check(&path, rules::parse_listen_address(text));
            let address = address.and_then(|address| {
                let earlier = listed[..index]
                    .iter()
                    .any(|other| other.parse::<IpAddr>() == Ok(address));
                if earlier {
                    self.report(&path, format!("{address} is listed twice"));
                    None
                } else {
                    Some(address)
                }
            });
            addresses = addresses.zip(address).map(|(mut list, address)| {
                list.push(address);
                list
            });
        }
        addresses
    }

    fn dns_names(
        &mut self,
        raw: &RawDns,
        zone: Option<&str>,
        raw_addresses: &[RawPublicAddress],
        raw_nodes: &[RawNode],
    ) -> Option<Vec<DnsName>> {
        // Public addresses as written, including ones that failed their own checks, so a DNS
        // name that refers to a faulty VIP does not raise a second, misleading problem.
        let written: Vec<(IpAddr, Option<IpNet>)> = raw_addresses
            .iter()
            .filter_map(|vip| {
                let address_text = vip.address.split('/').next().unwrap_or_default();
                let address = address_text.parse::<IpAddr>().ok()?;
                Some((address, rules::parse_public_address(&vip.address).ok()))
            })
            .collect();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut names = Some(Vec::with_capacity(raw.names.len()));
        for (index, entry) in raw.names.iter().enumerate() {
            let path = format!("dns.names[{index}]");
            let name_path = format!("{path}.name");
            let mut name = self.check(&name_path, rules::parse_relative_dns_name(&entry.name));
            if let Some(relative) = &name {
                if let Some(first) = seen.get(relative) {
                    self.report(
                        &name_path,
                        format!("{} is already listed as dns.names[{first}]", entry.name),
                    );
                    name = None;
                } else if let Some(node) = raw_nodes
                    .iter()
                    .position(|node| node.name.eq_ignore_ascii_case(relative))
                {
                    // `<node>.<zone>` is the node's own name (its public_address, and an NS host).
                    self.report(
                        &name_path,
                        format!(
                            "{} is the name of nodes[{node}], which the zone answers with that \
                             node's public_address; choose another name",
                            relative
                        ),
                    );
                    name = None;
                } else {
                    seen.insert(relative.clone(), index);
                }
            }
            let fqdn = name
                .as_deref()
                .zip(zone)
                .and_then(|(relative, zone)| self.check(&name_path, qualify(relative, zone)));
            let addresses = match &entry.addresses {
                RawDnsAddresses::All => Some(written.iter().map(|(address, _)| *address).collect()),
                RawDnsAddresses::List(listed) => self.dns_addresses(&path, listed, &written),
            };
            let name_entry = (|| {
                Some(DnsName {
                    name: name?,
                    fqdn: fqdn?,
                    addresses: addresses?,
                })
            })();
            names = names.zip(name_entry).map(|(mut list, entry)| {
                list.push(entry);
                list
            });
        }
        names
    }

    fn dns_addresses(
        &mut self,
        path: &str,
        listed: &[String],
        written: &[(IpAddr, Option<IpNet>)],
    ) -> Option<Vec<IpAddr>> {
        let list_path = format!("{path}.addresses");
        if listed.is_empty() {
            self.report(
                &list_path,
                "no addresses are listed; write `all` or list public addresses".to_owned(),
            );
            return None;
        }
        let mut addresses: Option<Vec<IpAddr>> = Some(Vec::with_capacity(listed.len()));
        for (index, text) in listed.iter().enumerate() {
            let entry_path = format!("{list_path}[{index}]");
            let reference = match text.split_once('/') {
                None => text
                    .parse::<IpAddr>()
                    .map(|address| (address, None))
                    .map_err(drop),
                Some(_) => text
                    .parse::<IpNet>()
                    .map(|network| (network.addr(), Some(network)))
                    .map_err(drop),
            };
            let address = match reference {
                Err(_) => {
                    self.report(&entry_path, format!("{text:?} is not an IP address"));
                    None
                }
                Ok((address, prefix)) => match written.iter().find(|(vip, _)| *vip == address) {
                    None => {
                        self.report(
                            &entry_path,
                            format!("{text} is not one of the public_addresses"),
                        );
                        None
                    }
                    Some((_, Some(vip))) if prefix.is_some_and(|given| given != *vip) => {
                        self.report(
                            &entry_path,
                            format!("{text} does not match public address {vip}"),
                        );
                        None
                    }
                    Some(_)
                        if listed[..index].iter().any(|other| {
                            other
                                .split('/')
                                .next()
                                .and_then(|ip| ip.parse::<IpAddr>().ok())
                                == Some(address)
                        }) =>
                    {
                        self.report(&entry_path, format!("{address} is listed twice"));
                        None
                    }
                    Some(_) => Some(address),
                },
            };
            addresses = addresses.zip(address).map(|(mut list, address)| {
                list.push(address);
                list
            });
        }
        addresses
    }

    fn timings(&mut self, raw: &RawTimings) -> Option<Timings> {
        let defaults = Timings::default();
        let heartbeat = self.timing("heartbeat", raw.heartbeat.as_deref(), defaults.heartbeat);
        let election = self.timing("election", raw.election.as_deref(), defaults.election);
        let lease = self.timing("lease", raw.lease.as_deref(), defaults.lease);
        let health_interval = self.timing(
            "health_interval",
            raw.health_interval.as_deref(),
            defaults.health_interval,
        );
        let health_timeout = self.timing(
            "health_timeout",
            raw.health_timeout.as_deref(),
            defaults.health_timeout,
        );
        if let Some(timeout) = health_timeout
            && timeout > MAX_HEALTH_TIMEOUT
        {
            self.report(
                "timings.health_timeout",
                format!(
                    "health_timeout {} is longer than {}; a hung volume would go unnoticed \
                     that long",
                    format_duration(timeout),
                    format_duration(MAX_HEALTH_TIMEOUT)
                ),
            );
        }
        // A rule between two timings is reported at whichever of them the file sets, preferring
        // the first; a defaulted value has no position of its own.
        let at = |first: (&str, &Option<String>), second: (&str, &Option<String>)| {
            let field = if first.1.is_some() || second.1.is_none() {
                first.0
            } else {
                second.0
            };
            format!("timings.{field}")
        };
        let heartbeat_field = ("heartbeat", &raw.heartbeat);
        let lease_field = ("lease", &raw.lease);
        let mut related_ok = true;
        if let (Some(heartbeat), Some(lease)) = (heartbeat, lease) {
            let minimum = Duration::from_secs(1).saturating_add(heartbeat.saturating_mul(2));
            if lease < minimum {
                self.report(
                    &at(lease_field, heartbeat_field),
                    format!(
                        "lease {} is shorter than 1s plus two heartbeats (1s + 2 × {}); the \
                         kernel counts address lifetimes in whole seconds, so every renewal \
                         must find at least a second left, with room for a late heartbeat",
                        format_duration(lease),
                        format_duration(heartbeat)
                    ),
                );
                related_ok = false;
            }
        }
        if let (Some(heartbeat), Some(election)) = (heartbeat, election) {
            if election < heartbeat.saturating_mul(3) {
                self.report(
                    &at(("election", &raw.election), heartbeat_field),
                    format!(
                        "election timeout {} is shorter than three heartbeats (3 × {}); \
                         followers would call elections against a healthy leader",
                        format_duration(election),
                        format_duration(heartbeat)
                    ),
                );
                related_ok = false;
            }
        }
        if let (Some(health_interval), Some(lease)) = (health_interval, lease) {
            if health_interval > lease / 2 {
                self.report(
                    &at(("health_interval", &raw.health_interval), lease_field),
                    format!(
                        "health_interval {} is longer than half the lease ({}); a failed node \
                         would keep its addresses for a whole lease before a probe noticed",
                        format_duration(health_interval),
                        format_duration(lease / 2)
                    ),
                );
                related_ok = false;
            }
        }
        if !related_ok {
            return None;
        }
        Some(Timings {
            heartbeat: heartbeat?,
            election: election?,
            lease: lease?,
            health_interval: health_interval?,
            health_timeout: health_timeout.filter(|timeout| *timeout <= MAX_HEALTH_TIMEOUT)?,
        })
    }

    fn timing(&mut self, field: &str, text: Option<&str>, default: Duration) -> Option<Duration> {
        let Some(text) = text else {
            return Some(default);
        };
        let path = format!("timings.{field}");
        let duration = self.check(&path, parse_duration(text))?;
        if duration.is_zero() {
            self.report(
                &path,
                format!("{field} {text} is zero; it must be positive"),
            );
            return None;
        }
        if duration > MAX_TIMING {
            self.report(
                &path,
                format!(
                    "{field} {text} is longer than {}",
                    format_duration(MAX_TIMING)
                ),
            );
            return None;
        }
        Some(duration)
    }
}

/// The fully qualified form of a name relative to `zone`, refusing names that already end with
/// the zone (a common slip: `nfs.vipgate.example` under zone `vipgate.example`).
fn qualify(relative: &str, zone: &str) -> Result<String, String> {
    if relative == "@" {
        return Ok(zone.to_owned());
    }
    if relative == zone || relative.ends_with(&format!(".{zone}")) {
        let shorter = relative
            .strip_suffix(zone)
            .map(|rest| rest.trim_end_matches('.'))
            .filter(|rest| !rest.is_empty())
            .unwrap_or("@");
        return Err(format!(
            "{relative} already ends with the zone {zone}; names are relative to it, write \
             {shorter}"
        ));
    }
    let fqdn = format!("{relative}.{zone}");
    if fqdn.len() > 253 {
        return Err(format!("{fqdn} is longer than 253 characters"));
    }
    Ok(fqdn)
}
