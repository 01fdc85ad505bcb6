//! The serde boundary: the cluster file exactly as written, before any validation.
//!
//! Every struct refuses unknown fields and every closed choice is an enum, so typos and wrong
//! types fail while parsing with yaml_serde's own position. Values whose faults are semantic
//! (addresses, paths, names, durations) stay strings here so that `validate` can report every bad
//! one at once instead of stopping at the first. Nothing outside this crate sees these types.

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with the cluster file's sections"
)]
pub(crate) struct RawConfig {
    pub(crate) cluster: RawCluster,
    // Required keys, but `nodes:` with every entry commented out reaches validation as an empty
    // list, which explains itself better than "invalid type: unit value".
    #[serde(deserialize_with = "null_as_default")]
    pub(crate) nodes: Vec<RawNode>,
    #[serde(deserialize_with = "null_as_default")]
    pub(crate) public_addresses: Vec<RawPublicAddress>,
    pub(crate) volume: RawVolume,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) nfs: RawNfs,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) smb: RawSmb,
    #[serde(default)]
    pub(crate) dns: Option<RawDns>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) timings: RawTimings,
}

/// Reads an empty value (`nfs:` with nothing after it, say because every line below was
/// commented out) as the default, like an absent key.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with the cluster settings")]
pub(crate) struct RawCluster {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) secret_file: Option<String>,
    #[serde(default)]
    pub(crate) secret: Option<String>,
    pub(crate) data_dir: String,
    #[serde(default)]
    pub(crate) port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping describing one node")]
pub(crate) struct RawNode {
    pub(crate) name: String,
    pub(crate) cluster_address: String,
    pub(crate) public_interfaces: Vec<String>,
    #[serde(default)]
    pub(crate) public_address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping describing one public address"
)]
pub(crate) struct RawPublicAddress {
    pub(crate) address: String,
    #[serde(default)]
    pub(crate) interface: Option<String>,
    #[serde(default)]
    pub(crate) nodes: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping describing the volume")]
pub(crate) struct RawVolume {
    pub(crate) path: String,
    #[serde(default)]
    pub(crate) handles: RawHandles,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RawHandles {
    #[default]
    Auto,
    Kernel,
    GlusterfsGfid,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with the nfs settings")]
pub(crate) struct RawNfs {
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) exports: Vec<RawExport>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping describing one export")]
pub(crate) struct RawExport {
    pub(crate) name: String,
    pub(crate) path: String,
    #[serde(default)]
    pub(crate) pseudo: Option<String>,
    #[serde(default)]
    pub(crate) protocols: Option<Vec<u32>>,
    #[serde(default)]
    pub(crate) access: RawAccess,
    #[serde(default)]
    pub(crate) clients: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) squash: RawSquash,
    #[serde(default)]
    pub(crate) anon_uid: Option<u32>,
    #[serde(default)]
    pub(crate) anon_gid: Option<u32>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RawAccess {
    #[default]
    Ro,
    Rw,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RawSquash {
    None,
    #[default]
    Root,
    All,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with the smb settings")]
pub(crate) struct RawSmb {
    #[serde(default)]
    pub(crate) manage: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) shares: Vec<RawShare>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping describing one share")]
pub(crate) struct RawShare {
    pub(crate) name: String,
    pub(crate) path: String,
    #[serde(default)]
    pub(crate) read_only: Option<bool>,
    #[serde(default)]
    pub(crate) valid_users: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with the dns settings")]
pub(crate) struct RawDns {
    pub(crate) zone: String,
    #[serde(default)]
    pub(crate) ttl: Option<u32>,
    #[serde(default)]
    pub(crate) listen: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) port: Option<u16>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) names: Vec<RawDnsName>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping describing one dns name")]
pub(crate) struct RawDnsName {
    pub(crate) name: String,
    pub(crate) addresses: RawDnsAddresses,
}

/// `addresses: all` or `addresses: [192.0.2.101, ...]`.
///
/// Deserialized by hand rather than with `#[serde(untagged)]`, whose only error is "data did not
/// match any variant".
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RawDnsAddresses {
    All,
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for RawDnsAddresses {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AddressesVisitor;

        impl<'de> Visitor<'de> for AddressesVisitor {
            type Value = RawDnsAddresses;

            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("`all` or a list of public addresses")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                if value == "all" {
                    Ok(RawDnsAddresses::All)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(value), &self))
                }
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Self::Value, A::Error> {
                let mut addresses = Vec::new();
                while let Some(address) = items.next_element::<String>()? {
                    addresses.push(address);
                }
                Ok(RawDnsAddresses::List(addresses))
            }
        }

        deserializer.deserialize_any(AddressesVisitor)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with the timings")]
pub(crate) struct RawTimings {
    #[serde(default)]
    pub(crate) heartbeat: Option<String>,
    #[serde(default)]
    pub(crate) election: Option<String>,
    #[serde(default)]
    pub(crate) lease: Option<String>,
    #[serde(default)]
    pub(crate) health_interval: Option<String>,
    #[serde(default)]
    pub(crate) health_timeout: Option<String>,
}
