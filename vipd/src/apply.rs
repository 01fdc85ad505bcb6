//! Applying VIP ownership to the kernel, with the lease enforced by the kernel itself.
//!
//! A node configures a VIP only while it holds a lease on it. Every VIP is added with a valid and
//! preferred lifetime no longer than the lease left, and each lease renewal renews the lifetime
//! (`RTM_NEWADDR` with `NLM_F_REPLACE`). If the daemon is killed or frozen, nothing renews the
//! lifetime and the kernel deletes the address when it ends — without a line of our code running.
//!
//! Kernel lifetimes are whole seconds, so the lifetime is the lease left rounded *down*: the
//! address may vanish up to a second before the lease ends, never after. With less than one whole
//! second of lease left there is no safe lifetime, and the VIP is removed.
//!
//! [`reconcile`] is pure: what this node should hold and what the kernel has go in, the changes
//! come out. [`AddressApplier`] performs them; [`NetlinkApplier`] is the real kernel behind it.
//! Only addresses in the cluster's set of VIPs are ever removed; a node's own addresses are never
//! touched.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, CacheInfo};
use rtnetlink::packet_route::link::LinkAttribute;

/// A VIP this node holds a lease on, and where it belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldVip {
    pub address: IpNet,
    pub interface: String,
    pub lease_left: Duration,
}

/// An address as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelAddress {
    pub address: IpNet,
    pub interface: String,
    /// Remaining valid lifetime in seconds; `None` for a permanent address.
    pub valid_lifetime: Option<u32>,
}

/// One change to the kernel's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressChange {
    /// Add a VIP that is not configured, with this lifetime in seconds.
    Add {
        address: IpNet,
        interface: String,
        lifetime: u32,
    },
    /// Replace a configured VIP's lifetime.
    Renew {
        address: IpNet,
        interface: String,
        lifetime: u32,
    },
    /// Delete a VIP this node must not hold.
    Remove { address: IpNet, interface: String },
}

impl fmt::Display for AddressChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressChange::Add {
                address,
                interface,
                lifetime,
            } => write!(f, "add {address} on {interface} for {lifetime}s"),
            AddressChange::Renew {
                address,
                interface,
                lifetime,
            } => write!(f, "renew {address} on {interface} for {lifetime}s"),
            AddressChange::Remove { address, interface } => {
                write!(f, "remove {address} from {interface}")
            }
        }
    }
}

/// The kernel lifetime for a lease with `lease_left` to run: whole seconds rounded down, or
/// `None` when less than one second is left and the VIP must not be configured.
pub fn lifetime_for(lease_left: Duration) -> Option<u32> {
    let seconds = lease_left.as_secs();
    (seconds >= 1).then(|| u32::try_from(seconds).unwrap_or(u32::MAX))
}

/// The changes that make the kernel hold exactly the VIPs in `held` (with fresh lifetimes) and
/// none of the other addresses in `managed`. Addresses outside `managed` are left alone.
/// Removals come first, so that a VIP moving between interfaces is never configured twice.
pub fn reconcile(
    held: &[HeldVip],
    kernel: &[KernelAddress],
    managed: &BTreeSet<IpAddr>,
) -> Vec<AddressChange> {
    let wanted: Vec<(&HeldVip, u32)> = held
        .iter()
        .filter(|vip| managed.contains(&vip.address.addr()))
        .filter_map(|vip| lifetime_for(vip.lease_left).map(|lifetime| (vip, lifetime)))
        .collect();
    let is_wanted = |present: &KernelAddress| {
        wanted
            .iter()
            .any(|(vip, _)| vip.address == present.address && vip.interface == present.interface)
    };
    let mut changes: Vec<AddressChange> = kernel
        .iter()
        .filter(|present| managed.contains(&present.address.addr()) && !is_wanted(present))
        .map(|present| AddressChange::Remove {
            address: present.address,
            interface: present.interface.clone(),
        })
        .collect();
    for (vip, lifetime) in wanted {
        let present = kernel
            .iter()
            .any(|k| k.address == vip.address && k.interface == vip.interface);
        let (address, interface) = (vip.address, vip.interface.clone());
        changes.push(if present {
            AddressChange::Renew {
                address,
                interface,
                lifetime,
            }
        } else {
            AddressChange::Add {
                address,
                interface,
                lifetime,
            }
        });
    }
    changes
}

/// The index of `interface`, in the namespace of `handle`'s socket.
pub async fn interface_index(
    handle: &rtnetlink::Handle,
    interface: &str,
) -> Result<u32, ApplyError> {
    let mut links = handle
        .link()
        .get()
        .match_name(interface.to_owned())
        .execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link.header.index),
        // The kernel answers ENODEV for an unknown name.
        Ok(None) | Err(_) => Err(ApplyError::NoInterface(interface.to_owned())),
    }
}

/// Interface names by index, in the namespace of `handle`'s socket.
pub async fn interface_names(
    handle: &rtnetlink::Handle,
) -> Result<std::collections::HashMap<u32, String>, rtnetlink::Error> {
    let mut names = std::collections::HashMap::new();
    let mut links = handle.link().get().execute();
    while let Some(link) = links.try_next().await? {
        if let Some(name) = link
            .attributes
            .iter()
            .find_map(|attribute| match attribute {
                LinkAttribute::IfName(name) => Some(name.clone()),
                _ => None,
            })
        {
            names.insert(link.header.index, name);
        }
    }
    Ok(names)
}

/// Why an address change failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("interface {0} does not exist")]
    NoInterface(String),
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
}

/// Reads and changes the kernel's addresses. The netlink implementation is [`NetlinkApplier`];
/// unit tests of the daemon use an in-memory one.
#[allow(
    async_fn_in_trait,
    reason = "used with concrete types only, never as dyn or across spawn bounds"
)]
pub trait AddressApplier {
    /// Every address the kernel has, loopback's excluded.
    async fn addresses(&self) -> Result<Vec<KernelAddress>, ApplyError>;
    /// Performs one change.
    async fn apply(&self, change: &AddressChange) -> Result<(), ApplyError>;
}

/// The kernel, through rtnetlink, in the namespace where the handle's socket was opened.
#[derive(Debug, Clone)]
pub struct NetlinkApplier {
    handle: rtnetlink::Handle,
}

impl NetlinkApplier {
    pub fn new(handle: rtnetlink::Handle) -> NetlinkApplier {
        NetlinkApplier { handle }
    }

    /// Adds `address` on `interface`, or replaces it if present, with `lifetime` seconds, usable
    /// at once (no duplicate address detection: ownership is decided by the cluster, not by
    /// probing). Replacing is what renews the lifetime, and it makes an add idempotent.
    async fn put(&self, address: IpNet, interface: &str, lifetime: u32) -> Result<(), ApplyError> {
        let index = interface_index(&self.handle, interface).await?;
        let mut request = self
            .handle
            .address()
            .add(index, address.addr(), address.prefix_len())
            .replace();
        let attributes = &mut request.message_mut().attributes;
        attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        // CacheInfo is non-exhaustive; only the two lifetimes matter on a request.
        let mut lifetimes = CacheInfo::default();
        lifetimes.ifa_preferred = lifetime;
        lifetimes.ifa_valid = lifetime;
        attributes.push(AddressAttribute::CacheInfo(lifetimes));
        request.execute().await?;
        Ok(())
    }
}

impl AddressApplier for NetlinkApplier {
    async fn addresses(&self) -> Result<Vec<KernelAddress>, ApplyError> {
        let names = interface_names(&self.handle).await?;
        let mut addresses = Vec::new();
        let mut messages = self.handle.address().get().execute();
        while let Some(message) = messages.try_next().await? {
            let interface = names
                .get(&message.header.index)
                .cloned()
                .unwrap_or_default();
            if interface == "lo" {
                continue;
            }
            let mut ip = None;
            let mut valid_lifetime = None;
            for attribute in &message.attributes {
                match attribute {
                    AddressAttribute::Address(address) => ip = Some(*address),
                    AddressAttribute::CacheInfo(info) if info.ifa_valid != u32::MAX => {
                        valid_lifetime = Some(info.ifa_valid);
                    }
                    _ => {}
                }
            }
            if let Some(ip) = ip
                && let Ok(address) = IpNet::new(ip, message.header.prefix_len)
            {
                addresses.push(KernelAddress {
                    address,
                    interface,
                    valid_lifetime,
                });
            }
        }
        Ok(addresses)
    }

    async fn apply(&self, change: &AddressChange) -> Result<(), ApplyError> {
        match change {
            AddressChange::Add {
                address,
                interface,
                lifetime,
            }
            | AddressChange::Renew {
                address,
                interface,
                lifetime,
            } => self.put(*address, interface, *lifetime).await,
            AddressChange::Remove { address, interface } => {
                let index = interface_index(&self.handle, interface).await?;
                let mut messages = self
                    .handle
                    .address()
                    .get()
                    .set_link_index_filter(index)
                    .set_address_filter(address.addr())
                    .execute();
                while let Some(message) = messages.try_next().await? {
                    if message.header.prefix_len == address.prefix_len() {
                        self.handle.address().del(message).execute().await?;
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn held(address: &str, interface: &str, millis: u64) -> HeldVip {
        HeldVip {
            address: net(address),
            interface: interface.into(),
            lease_left: Duration::from_millis(millis),
        }
    }

    fn kernel(address: &str, interface: &str) -> KernelAddress {
        KernelAddress {
            address: net(address),
            interface: interface.into(),
            valid_lifetime: Some(1),
        }
    }

    fn managed(addresses: &[&str]) -> BTreeSet<IpAddr> {
        addresses.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn lifetimes_round_down_and_refuse_less_than_a_second() {
        let table = [
            (0, None),
            (999, None),
            (1000, Some(1)),
            (1999, Some(1)),
            (2000, Some(2)),
            (7500, Some(7)),
        ];
        for (millis, expected) in table {
            assert_eq!(
                lifetime_for(Duration::from_millis(millis)),
                expected,
                "{millis} ms"
            );
        }
    }

    #[test]
    fn reconcile_table() {
        let vips = managed(&["192.0.2.201", "192.0.2.202", "2001:db8:0:1::201"]);
        let own = kernel("192.0.2.11/24", "pub0");
        struct Case {
            name: &'static str,
            held: Vec<HeldVip>,
            kernel: Vec<KernelAddress>,
            expected: Vec<&'static str>,
        }
        let cases = [
            Case {
                name: "nothing held, nothing configured: only the node's own address, untouched",
                held: vec![],
                kernel: vec![own.clone()],
                expected: vec![],
            },
            Case {
                name: "a new lease adds the VIP with its lifetime",
                held: vec![held("192.0.2.201/24", "pub0", 2500)],
                kernel: vec![own.clone()],
                expected: vec!["add 192.0.2.201/24 on pub0 for 2s"],
            },
            Case {
                name: "a renewed lease renews the configured VIP",
                held: vec![held("2001:db8:0:1::201/64", "pub0", 3000)],
                kernel: vec![own.clone(), kernel("2001:db8:0:1::201/64", "pub0")],
                expected: vec!["renew 2001:db8:0:1::201/64 on pub0 for 3s"],
            },
            Case {
                name: "a VIP no longer held is removed, other addresses stay",
                held: vec![],
                kernel: vec![
                    own.clone(),
                    kernel("192.0.2.202/24", "pub0"),
                    kernel("192.0.2.99/24", "pub0"),
                ],
                expected: vec!["remove 192.0.2.202/24 from pub0"],
            },
            Case {
                name: "less than a second of lease left: remove, never extend",
                held: vec![held("192.0.2.201/24", "pub0", 900)],
                kernel: vec![kernel("192.0.2.201/24", "pub0")],
                expected: vec!["remove 192.0.2.201/24 from pub0"],
            },
            Case {
                name: "wrong interface or prefix: removed before being added right",
                held: vec![
                    held("192.0.2.201/24", "pub1", 2000),
                    held("192.0.2.202/24", "pub0", 2000),
                ],
                kernel: vec![
                    kernel("192.0.2.201/24", "pub0"),
                    kernel("192.0.2.202/32", "pub0"),
                ],
                expected: vec![
                    "remove 192.0.2.201/24 from pub0",
                    "remove 192.0.2.202/32 from pub0",
                    "add 192.0.2.201/24 on pub1 for 2s",
                    "add 192.0.2.202/24 on pub0 for 2s",
                ],
            },
            Case {
                name: "an address outside the cluster's VIPs is never added",
                held: vec![held("192.0.2.77/24", "pub0", 5000)],
                kernel: vec![],
                expected: vec![],
            },
        ];
        for case in cases {
            let changes: Vec<String> = reconcile(&case.held, &case.kernel, &vips)
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(changes, case.expected, "{}", case.name);
        }
    }
}
