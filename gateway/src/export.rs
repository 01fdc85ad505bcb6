//! Export policy, as pure decisions: which clients may use an export (CIDR networks, host names,
//! `*`), who a caller acts as after root or all squash, and the stable export id that file
//! handles and `fsid` carry.
//!
//! Nothing here touches the network or the file system. Host-name entries need the client's
//! name; the caller passes a closure that resolves it (reverse lookup, confirmed forward), which
//! is only called when an entry actually needs it.

use std::net::IpAddr;

use cluster_config::{Access, ClientMatch, Squash};

use crate::creds::Identity;
use crate::rpc::Credential;

/// An export's identity on the wire: FNV-1a (64 bit) of its name. The name is the same in
/// every node's configuration, so the id is too (DESIGN.md invariant 3); it never depends on the
/// order of exports in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExportId(pub u64);

impl ExportId {
    pub fn of_name(name: &str) -> Self {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in name.as_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        ExportId(hash)
    }
}

/// What an export allows, and to whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub access: Access,
    pub clients: Vec<ClientMatch>,
    pub squash: Squash,
    pub anon_uid: u32,
    pub anon_gid: u32,
}

impl Policy {
    /// Whether `client` may use the export. `names` returns the client's verified host names
    /// (lower case, no trailing dot); it is called at most once, and only if a host entry is
    /// reached before any address entry matched.
    pub fn admits(&self, client: IpAddr, names: impl FnOnce() -> Vec<String>) -> bool {
        let client = client.to_canonical();
        let mut names = Some(names);
        let mut resolved: Vec<String> = Vec::new();
        for entry in &self.clients {
            match entry {
                ClientMatch::Any => return true,
                ClientMatch::Network(network) => {
                    if network.contains(&client) {
                        return true;
                    }
                }
                ClientMatch::Host(host) => {
                    if let Some(names) = names.take() {
                        resolved = names();
                    }
                    if resolved.iter().any(|name| name == host) {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Whether the export accepts modifications.
    pub fn writable(&self) -> bool {
        self.access == Access::ReadWrite
    }

    /// Who a caller with `credential` acts as. AUTH_NONE callers are anonymous, as knfsd treats
    /// them; root squash maps uid 0 (and its gid 0) to the anonymous ids; all squash maps
    /// everyone. A squashed caller loses its supplementary groups too, since keeping root's
    /// groups would keep part of root's power.
    pub fn identity(&self, credential: &Credential) -> Identity {
        let anonymous = Identity {
            uid: self.anon_uid,
            gid: self.anon_gid,
            groups: Vec::new(),
        };
        let Credential::Sys(auth) = credential else {
            return anonymous;
        };
        match self.squash {
            Squash::All => anonymous,
            Squash::Root if auth.uid == 0 => anonymous,
            Squash::Root => Identity {
                uid: auth.uid,
                gid: if auth.gid == 0 {
                    self.anon_gid
                } else {
                    auth.gid
                },
                groups: auth.gids.iter().copied().filter(|gid| *gid != 0).collect(),
            },
            Squash::None => Identity {
                uid: auth.uid,
                gid: auth.gid,
                groups: auth.gids.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::AuthSys;

    fn policy(clients: Vec<ClientMatch>, squash: Squash) -> Policy {
        Policy {
            access: Access::ReadWrite,
            clients,
            squash,
            anon_uid: 65534,
            anon_gid: 65533,
        }
    }

    #[test]
    fn export_ids_are_stable_and_distinct() {
        // FNV-1a test vectors: the empty string and "a".
        assert_eq!(ExportId::of_name("").0, 0xcbf2_9ce4_8422_2325);
        assert_eq!(ExportId::of_name("a").0, 0xaf63_dc4c_8601_ec8c);
        assert_ne!(ExportId::of_name("data"), ExportId::of_name("archive"));
    }

    #[test]
    fn client_lists_table() {
        let network = |text: &str| ClientMatch::Network(text.parse().unwrap());
        let host = |text: &str| ClientMatch::Host(text.to_owned());
        // (entries, client, names the resolver returns, admitted, resolver called)
        type Case = (
            Vec<ClientMatch>,
            &'static str,
            Vec<&'static str>,
            bool,
            bool,
        );
        let cases: Vec<Case> = vec![
            (vec![ClientMatch::Any], "192.0.2.9", vec![], true, false),
            (
                vec![network("192.0.2.0/24")],
                "192.0.2.9",
                vec![],
                true,
                false,
            ),
            (
                vec![network("192.0.2.0/24")],
                "192.0.3.9",
                vec![],
                false,
                false,
            ),
            (
                vec![network("192.0.2.9/32")],
                "192.0.2.9",
                vec![],
                true,
                false,
            ),
            // An IPv4 client reaching an IPv6 socket arrives as ::ffff:a.b.c.d.
            (
                vec![network("192.0.2.0/24")],
                "::ffff:192.0.2.9",
                vec![],
                true,
                false,
            ),
            (
                vec![network("2001:db8::/32")],
                "2001:db8::5",
                vec![],
                true,
                false,
            ),
            (
                vec![network("2001:db8::/32")],
                "192.0.2.9",
                vec![],
                false,
                false,
            ),
            (
                vec![host("client1.example")],
                "192.0.2.9",
                vec!["client1.example"],
                true,
                true,
            ),
            (
                vec![host("client1.example")],
                "192.0.2.9",
                vec!["client2.example"],
                false,
                true,
            ),
            // An address entry that matches first spares the lookup.
            (
                vec![network("192.0.2.0/24"), host("client1.example")],
                "192.0.2.9",
                vec![],
                true,
                false,
            ),
            (vec![], "192.0.2.9", vec![], false, false),
        ];
        for (entries, client, names, admitted, resolves) in cases {
            let mut called = false;
            let outcome =
                policy(entries.clone(), Squash::Root).admits(client.parse().unwrap(), || {
                    called = true;
                    names.iter().map(|name| (*name).to_owned()).collect()
                });
            assert_eq!(outcome, admitted, "{entries:?} {client}");
            assert_eq!(called, resolves, "{entries:?} {client} resolver");
        }
    }

    #[test]
    fn squash_table() {
        let sys = |uid, gid, gids: &[u32]| {
            Credential::Sys(AuthSys {
                stamp: 0,
                machinename: b"c".to_vec(),
                uid,
                gid,
                gids: gids.to_vec(),
            })
        };
        let id = |uid, gid, groups: &[u32]| Identity {
            uid,
            gid,
            groups: groups.to_vec(),
        };
        let anonymous = id(65534, 65533, &[]);
        let cases = vec![
            (Squash::Root, Credential::None, anonymous.clone()),
            (Squash::None, Credential::None, anonymous.clone()),
            (Squash::Root, sys(0, 0, &[0, 10]), anonymous.clone()),
            (Squash::Root, sys(1000, 100, &[0, 27]), id(1000, 100, &[27])),
            (Squash::Root, sys(1000, 0, &[]), id(1000, 65533, &[])),
            (Squash::All, sys(1000, 100, &[27]), anonymous.clone()),
            (Squash::None, sys(0, 0, &[4]), id(0, 0, &[4])),
            (Squash::None, sys(1000, 100, &[27]), id(1000, 100, &[27])),
        ];
        for (squash, credential, expected) in cases {
            assert_eq!(
                policy(vec![], squash).identity(&credential),
                expected,
                "{squash:?} {credential:?}"
            );
        }
    }
}
