//! Checks of single values: names, addresses, paths. Each takes the text as written and returns
//! the typed, normalized value or a lower-case sentence naming the text.
//!
//! Rules that relate several fields (uniqueness, cross references, timing ratios) live in
//! `validate`, which calls these.

use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use ipnet::IpNet;

use crate::model::ClientMatch;

/// Longest cluster or node name.
const MAX_NAME_LEN: usize = 32;
/// Linux `IFNAMSIZ` less the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;
/// Samba refuses longer share names.
const MAX_SHARE_NAME_LEN: usize = 80;
const MAX_EXPORT_NAME_LEN: usize = 64;

/// A cluster or node name: `[a-z0-9-]`, 1 to 32 characters, not starting with `-` (it would read
/// as an option on the command line: `vipgate disable -node1`).
pub(crate) fn check_name(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("the name is empty".to_owned());
    }
    if text.chars().count() > MAX_NAME_LEN {
        return Err(format!("{text:?} is longer than {MAX_NAME_LEN} characters"));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "{text:?} contains {bad:?}; names use only a-z, 0-9 and -"
        ));
    }
    if text.starts_with('-') {
        return Err(format!("{text:?} starts with -"));
    }
    Ok(())
}

/// An export name: `[A-Za-z0-9._-]`, 1 to 64 characters, not `.` or `..` (it also makes the
/// default pseudo path `/<name>`).
pub(crate) fn check_export_name(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("the name is empty".to_owned());
    }
    if text.chars().count() > MAX_EXPORT_NAME_LEN {
        return Err(format!(
            "{text:?} is longer than {MAX_EXPORT_NAME_LEN} characters"
        ));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{text:?} contains {bad:?}; export names use only letters, digits, '.', '_' and '-'"
        ));
    }
    if text == "." || text == ".." {
        return Err(format!("{text:?} is not a usable export name"));
    }
    Ok(())
}

/// A Linux interface name, as the kernel's `dev_valid_name` accepts it.
pub(crate) fn check_interface_name(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("the interface name is empty".to_owned());
    }
    if text.len() > MAX_IFNAME_LEN {
        return Err(format!(
            "{text:?} is longer than {MAX_IFNAME_LEN} bytes, the Linux limit for interface names"
        ));
    }
    if text == "." || text == ".." {
        return Err(format!("{text:?} is not a valid interface name"));
    }
    if text.contains(':') {
        return Err(format!(
            "{text:?} is not a valid interface name: ':' is not allowed (address labels such as \
             eth0:1 are not interfaces; name the interface itself)"
        ));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| *c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{text:?} is not a valid interface name: {bad:?} is not allowed"
        ));
    }
    Ok(())
}

/// A node's own address (cluster or fixed public): a bare IP that a peer can reach.
pub(crate) fn parse_node_address(text: &str) -> Result<IpAddr, String> {
    if text.contains('/') {
        return Err(format!(
            "{text} has a prefix length; write the bare address"
        ));
    }
    let address: IpAddr = text
        .parse()
        .map_err(|_| format!("{text:?} is not an IP address"))?;
    check_usable_address(address)?;
    Ok(address)
}

/// Refuses addresses that cannot name one node on a network.
fn check_usable_address(address: IpAddr) -> Result<(), String> {
    if address.is_loopback() {
        return Err(format!(
            "{address} is a loopback address, which every node has for itself"
        ));
    }
    if address.is_unspecified() {
        return Err(format!("{address} is the unspecified address"));
    }
    if address.is_multicast() {
        return Err(format!("{address} is a multicast address"));
    }
    match address {
        IpAddr::V4(v4) if v4.is_broadcast() => {
            return Err(format!("{address} is the broadcast address"));
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return Err(format!(
                    "{address} is an IPv4-mapped IPv6 address; write it as {v4}"
                ));
            }
            if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                return Err(format!(
                    "{address} is an IPv6 link-local address, which needs an interface scope \
                     the cluster file cannot give; use a global or unique-local address"
                ));
            }
        }
        IpAddr::V4(_) => {}
    }
    Ok(())
}

/// A public (virtual) address with its prefix length, e.g. `192.0.2.101/24`.
pub(crate) fn parse_public_address(text: &str) -> Result<IpNet, String> {
    let Some((address_text, prefix_text)) = text.split_once('/') else {
        let example = match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => format!("; write it with its subnet's prefix, e.g. {text}/24"),
            Ok(IpAddr::V6(_)) => format!("; write it with its subnet's prefix, e.g. {text}/64"),
            Err(_) => String::new(),
        };
        return Err(format!("{text:?} has no prefix length{example}"));
    };
    let address: IpAddr = address_text
        .parse()
        .map_err(|_| format!("{address_text:?} in {text:?} is not an IP address"))?;
    let max_prefix = if address.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = match prefix_text.parse::<u8>() {
        Ok(prefix) if prefix_text.bytes().all(|b| b.is_ascii_digit()) => prefix,
        _ => {
            return Err(format!(
                "prefix length {prefix_text:?} in {text:?} is not a number from 1 to {max_prefix}"
            ));
        }
    };
    if prefix > max_prefix {
        let family = if address.is_ipv4() { "IPv4" } else { "IPv6" };
        return Err(format!(
            "prefix length /{prefix} in {text} is too long for an {family} address (at most \
             /{max_prefix})"
        ));
    }
    if prefix == 0 {
        return Err(format!(
            "{text} has prefix length /0, which would put every address on-link"
        ));
    }
    check_usable_address(address)?;
    let network =
        IpNet::new(address, prefix).map_err(|_| format!("{text:?} is not an IP network"))?;
    // /31 and /32 (/127 and /128) subnets have no network or broadcast address to collide with.
    if prefix + 1 < max_prefix {
        if address == network.network() {
            return Err(format!(
                "{text} is the network address of its subnet, not a host address; a public \
                 address is one host in it, e.g. {}/{prefix}",
                first_host(network)
            ));
        }
        if address.is_ipv4() && address == network.broadcast() {
            return Err(format!(
                "{text} is the broadcast address of its subnet, not a host address"
            ));
        }
    }
    Ok(network)
}

fn first_host(network: IpNet) -> IpAddr {
    match network.network() {
        IpAddr::V4(v4) => IpAddr::V4(u32::from(v4).saturating_add(1).into()),
        IpAddr::V6(v6) => IpAddr::V6(u128::from(v6).saturating_add(1).into()),
    }
}

/// A bare IP to listen on (DNS `listen`); wildcards are the point here, so only the family
/// matters.
pub(crate) fn parse_listen_address(text: &str) -> Result<IpAddr, String> {
    let address: IpAddr = text.parse().map_err(|_| {
        if text.contains(':')
            && text
                .rsplit_once(':')
                .is_some_and(|(host, _)| host.parse::<IpAddr>().is_ok())
        {
            format!("{text:?} is not an IP address; give the port in dns.port")
        } else {
            format!("{text:?} is not an IP address")
        }
    })?;
    if address.is_multicast() {
        return Err(format!("{address} is a multicast address"));
    }
    Ok(address)
}

/// A path inside the volume, as exports and shares give it: relative, without `..`. Returns the
/// normalized relative path, empty for the volume root (`.` or ``).
pub(crate) fn parse_volume_relative_path(text: &str) -> Result<PathBuf, String> {
    check_path_characters(text)?;
    let path = Path::new(text);
    if path.is_absolute() {
        let suggestion = text.trim_start_matches('/');
        let suggestion = if suggestion.is_empty() {
            "."
        } else {
            suggestion
        };
        return Err(format!(
            "{text} is absolute; paths are relative to volume.path, e.g. {suggestion}"
        ));
    }
    let mut normalized = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => normalized.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!(
                    "{text} contains '..'; paths must stay inside the volume"
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("{text} is not a relative path"));
            }
        }
    }
    Ok(normalized)
}

/// An absolute local path (`data_dir`, `volume.path`, `secret_file`), normalized, without `..`.
pub(crate) fn parse_absolute_path(text: &str) -> Result<PathBuf, String> {
    check_path_characters(text)?;
    let path = Path::new(text);
    if !path.is_absolute() {
        return Err(format!("{text:?} is not an absolute path"));
    }
    let mut normalized = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::Normal(_) => normalized.push(component),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!("{text} contains '..'; write the path without it"));
            }
            Component::Prefix(_) => return Err(format!("{text:?} is not a Linux path")),
        }
    }
    Ok(normalized)
}

fn check_path_characters(text: &str) -> Result<(), String> {
    if text.chars().any(char::is_control) {
        return Err(format!("{text:?} contains a control character"));
    }
    Ok(())
}

/// An NFSv4 pseudo path: absolute and already normalized (`/`, `/data`, `/a/b`).
pub(crate) fn check_pseudo_path(text: &str) -> Result<(), String> {
    check_path_characters(text)?;
    let Some(rest) = text.strip_prefix('/') else {
        return Err(format!(
            "{text:?} is not absolute; pseudo paths start with /"
        ));
    };
    if rest.is_empty() {
        return Ok(());
    }
    for component in rest.split('/') {
        match component {
            "" => {
                return Err(format!("{text} has an empty component or a trailing /"));
            }
            "." | ".." => {
                return Err(format!("{text} contains {component:?}"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// One entry of an export's `clients`: `*`, a CIDR network, a single IP or a host name.
pub(crate) fn parse_client(text: &str) -> Result<ClientMatch, String> {
    if text == "*" {
        return Ok(ClientMatch::Any);
    }
    if text.contains('/') {
        let network: IpNet = text
            .parse()
            .map_err(|_| format!("{text:?} is not a CIDR network"))?;
        if network.trunc() != network {
            return Err(format!(
                "{text} has host bits set; write the network as {}",
                network.trunc()
            ));
        }
        return Ok(ClientMatch::Network(network));
    }
    if let Ok(address) = text.parse::<IpAddr>() {
        return Ok(ClientMatch::Network(IpNet::from(address)));
    }
    if text.starts_with(|c: char| c.is_ascii_digit())
        && text.contains('.')
        && text.chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        return Err(format!("{text:?} is not a valid IP address"));
    }
    let host = parse_dns_name(text)
        .map_err(|_| format!("{text:?} is not *, a network, an IP address or a host name"))?;
    Ok(ClientMatch::Host(host))
}

/// An absolute DNS name (a zone or a host): letters, digits and `-` in labels of 1 to 63
/// characters, at most 253 characters; an optional trailing dot is dropped and the result is
/// lower-cased.
pub(crate) fn parse_dns_name(text: &str) -> Result<String, String> {
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() {
        return Err(format!("{text:?} is not a DNS name"));
    }
    if name.len() > 253 {
        return Err(format!("{text:?} is longer than 253 characters"));
    }
    for label in name.split('.') {
        check_dns_label(label)
            .map_err(|problem| format!("{text:?} is not a DNS name: {problem}"))?;
    }
    Ok(name.to_ascii_lowercase())
}

/// A name relative to a zone (`nfs`, `nfs.site1`), or `@` for the zone apex.
pub(crate) fn parse_relative_dns_name(text: &str) -> Result<String, String> {
    if text == "@" {
        return Ok("@".to_owned());
    }
    if text.ends_with('.') {
        return Err(format!(
            "{text:?} ends with a dot; names are relative to the zone"
        ));
    }
    if text.is_empty() {
        return Err("the name is empty; use @ for the zone itself".to_owned());
    }
    for label in text.split('.') {
        check_dns_label(label)
            .map_err(|problem| format!("{text:?} is not a DNS name: {problem}"))?;
    }
    Ok(text.to_ascii_lowercase())
}

fn check_dns_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("it has an empty label".to_owned());
    }
    if label.len() > 63 {
        return Err(format!("label {label:?} is longer than 63 characters"));
    }
    if let Some(bad) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(format!("label {label:?} contains {bad:?}"));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label {label:?} starts or ends with -"));
    }
    Ok(())
}

/// Text that goes into smb.conf verbatim: Samba expands `%` sequences everywhere (`%U` is the
/// user, `%m` the client...), so a `%` would silently become something else.
pub(crate) fn check_no_samba_variable(text: &str) -> Result<(), String> {
    if text.contains('%') {
        return Err(format!(
            "{text:?} contains '%', which Samba would expand as a variable"
        ));
    }
    Ok(())
}

/// An SMB share name as Samba accepts it, excluding its special sections.
pub(crate) fn check_share_name(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("the share name is empty".to_owned());
    }
    check_no_samba_variable(text)?;
    if text.chars().count() > MAX_SHARE_NAME_LEN {
        return Err(format!(
            "{text:?} is longer than {MAX_SHARE_NAME_LEN} characters"
        ));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| "[]/\\:;|=,+*?<>\"".contains(*c) || c.is_control())
    {
        return Err(format!(
            "{text:?} contains {bad:?}, which SMB share names cannot"
        ));
    }
    if text.trim() != text {
        return Err(format!("{text:?} starts or ends with whitespace"));
    }
    let lower = text.to_lowercase();
    if matches!(lower.as_str(), "global" | "homes" | "printers" | "ipc$") {
        return Err(format!(
            "{text:?} is reserved by Samba for a special section"
        ));
    }
    Ok(())
}

/// A `valid_users` entry: a user, `@group` or `+group`, possibly `DOMAIN\user`.
pub(crate) fn check_user_name(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("the user name is empty".to_owned());
    }
    if let Some(bad) = text
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == ',')
    {
        return Err(format!(
            "{text:?} contains {bad:?}; give one user per list entry"
        ));
    }
    check_no_samba_variable(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in [
            "gw1",
            "node-1",
            "a",
            "0",
            "abcdefghijklmnopqrstuvwxyz012345",
        ] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for (bad, expected) in [
            ("", "empty"),
            ("Node1", "contains 'N'"),
            ("node_1", "contains '_'"),
            ("node 1", "contains ' '"),
            ("-node", "starts with -"),
            ("abcdefghijklmnopqrstuvwxyz0123456", "longer than 32"),
        ] {
            let error = check_name(bad).unwrap_err();
            assert!(error.contains(expected), "{bad:?}: {error}");
        }
    }

    #[test]
    fn interface_names() {
        for good in [
            "eth1",
            "ens3f0",
            "bond0.100",
            "br-public",
            "abcdefghijklmno",
        ] {
            assert_eq!(check_interface_name(good), Ok(()), "{good}");
        }
        for (bad, expected) in [
            ("", "empty"),
            ("abcdefghijklmnop", "longer than 15"),
            ("eth0:1", "address labels"),
            ("eth/0", "'/'"),
            ("eth 0", "' '"),
            ("..", "not a valid"),
        ] {
            let error = check_interface_name(bad).unwrap_err();
            assert!(error.contains(expected), "{bad:?}: {error}");
        }
    }

    #[test]
    fn node_addresses() {
        assert_eq!(
            parse_node_address("198.51.100.11"),
            Ok("198.51.100.11".parse().unwrap())
        );
        assert_eq!(
            parse_node_address("2001:db8::11"),
            Ok("2001:db8::11".parse().unwrap())
        );
        for (bad, expected) in [
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("::ffff:192.0.2.1", "write it as 192.0.2.1"),
            ("fe80::1", "link-local"),
            ("198.51.100.11/24", "has a prefix length"),
            ("node1.example", "not an IP address"),
            ("198.51.100.011", "not an IP address"),
        ] {
            let error = parse_node_address(bad).unwrap_err();
            assert!(error.contains(expected), "{bad:?}: {error}");
        }
    }

    #[test]
    fn public_addresses() {
        for good in [
            "192.0.2.101/24",
            "192.0.2.101/32",
            "192.0.2.0/31",
            "2001:db8::101/64",
            "2001:db8::/128",
        ] {
            assert_eq!(
                parse_public_address(good).map(|n| n.to_string()),
                Ok(good.to_owned())
            );
        }
        for (bad, expected) in [
            (
                "192.0.2.101",
                "no prefix length; write it with its subnet's prefix, e.g. 192.0.2.101/24",
            ),
            ("2001:db8::1", "e.g. 2001:db8::1/64"),
            ("gw.example", "no prefix length"),
            (
                "192.0.2.300/24",
                "\"192.0.2.300\" in \"192.0.2.300/24\" is not an IP address",
            ),
            ("192.0.2.1/33", "too long for an IPv4 address (at most /32)"),
            ("2001:db8::1/129", "too long for an IPv6 address"),
            ("192.0.2.1/0", "/0"),
            ("192.0.2.1/x", "is not a number from 1 to 32"),
            ("192.0.2.1/+24", "is not a number"),
            (
                "192.0.2.0/24",
                "network address of its subnet, not a host address; a public address is one host in it, e.g. 192.0.2.1/24",
            ),
            ("192.0.2.255/24", "broadcast address"),
            ("2001:db8::/64", "network address"),
            ("127.0.0.2/8", "loopback"),
            ("224.0.0.5/24", "multicast"),
        ] {
            let error = parse_public_address(bad).unwrap_err();
            assert!(error.contains(expected), "{bad:?}: {error}");
        }
    }

    #[test]
    fn volume_relative_paths() {
        for (good, expected) in [
            ("data", "data"),
            ("a/b/", "a/b"),
            ("./a//b", "a/b"),
            (".", ""),
            ("", ""),
        ] {
            assert_eq!(
                parse_volume_relative_path(good),
                Ok(PathBuf::from(expected)),
                "{good}"
            );
        }
        for (bad, expected) in [
            (
                "/data",
                "/data is absolute; paths are relative to volume.path, e.g. data",
            ),
            ("/", "e.g. ."),
            ("../x", "contains '..'"),
            ("a/../../b", "contains '..'"),
            ("a\0b", "control character"),
        ] {
            let error = parse_volume_relative_path(bad).unwrap_err();
            assert!(error.contains(expected), "{bad:?}: {error}");
        }
    }

    #[test]
    fn absolute_paths() {
        assert_eq!(
            parse_absolute_path("/var//lib/./vipgate/"),
            Ok(PathBuf::from("/var/lib/vipgate"))
        );
        assert!(
            parse_absolute_path("var/lib")
                .unwrap_err()
                .contains("not an absolute path")
        );
        assert!(
            parse_absolute_path("/var/../etc")
                .unwrap_err()
                .contains("'..'")
        );
    }

    #[test]
    fn pseudo_paths() {
        for good in ["/", "/data", "/a/b"] {
            assert_eq!(check_pseudo_path(good), Ok(()), "{good}");
        }
        for bad in ["data", "/data/", "//data", "/a/../b", "/a/./b", ""] {
            assert!(check_pseudo_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn clients() {
        assert_eq!(parse_client("*"), Ok(ClientMatch::Any));
        assert_eq!(
            parse_client("192.0.2.0/24"),
            Ok(ClientMatch::Network("192.0.2.0/24".parse().unwrap()))
        );
        assert_eq!(
            parse_client("192.0.2.7"),
            Ok(ClientMatch::Network("192.0.2.7/32".parse().unwrap()))
        );
        assert_eq!(
            parse_client("2001:db8::/32"),
            Ok(ClientMatch::Network("2001:db8::/32".parse().unwrap()))
        );
        assert_eq!(
            parse_client("Client1.Example."),
            Ok(ClientMatch::Host("client1.example".to_owned()))
        );
        for (bad, expected) in [
            (
                "192.0.2.5/24",
                "host bits set; write the network as 192.0.2.0/24",
            ),
            ("192.0.2.0/33", "not a CIDR network"),
            ("192.0.2.256", "not a valid IP address"),
            ("*.example", "not *, a network"),
            ("", "not *, a network"),
        ] {
            let error = parse_client(bad).unwrap_err();
            assert!(error.contains(expected), "{bad:?}: {error}");
        }
    }

    #[test]
    fn dns_names() {
        assert_eq!(
            parse_dns_name("VipGate.Example."),
            Ok("vipgate.example".to_owned())
        );
        for bad in [
            "",
            ".",
            "a..b",
            "-a.example",
            "a_b.example",
            &"a".repeat(64),
            &"a.".repeat(128),
        ] {
            assert!(parse_dns_name(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_relative_dns_name("NFS"), Ok("nfs".to_owned()));
        assert_eq!(parse_relative_dns_name("@"), Ok("@".to_owned()));
        assert!(
            parse_relative_dns_name("nfs.")
                .unwrap_err()
                .contains("relative to the zone")
        );
    }

    #[test]
    fn share_names() {
        for good in ["share", "Team Data", "a$"] {
            assert_eq!(check_share_name(good), Ok(()), "{good}");
        }
        for (bad, expected) in [
            ("a/b", "'/'"),
            ("x[1]", "'['"),
            ("Global", "reserved"),
            ("50%", "'%'"),
            ("IPC$", "reserved"),
            (" a", "whitespace"),
            (&"s".repeat(81), "longer than 80"),
        ] {
            let error = check_share_name(bad).unwrap_err();
            assert!(error.contains(expected), "{bad:?}: {error}");
        }
    }
}
