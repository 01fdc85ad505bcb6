//! Every example cluster file shipped in `deploy/examples/` must be valid, and the main one must
//! say what its comments promise.

use std::path::{Path, PathBuf};

use cluster_config::{Access, ClientMatch, NfsVersion, NodeId, SecretSource, load};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

#[test]
fn every_example_is_valid() {
    let mut checked = 0;
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .extension()
            .is_some_and(|extension| extension == "yaml")
        {
            if let Err(error) = load(&path) {
                panic!("{} is invalid:\n{error}", path.display());
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 1,
        "no example found in {}",
        examples_dir().display()
    );
}

#[test]
fn cluster_example_matches_its_comments() {
    let config = load(&examples_dir().join("cluster.yaml")).unwrap();
    assert_eq!(
        config.summary(),
        "3 nodes, 4 public addresses, 2 exports, 1 share"
    );
    assert_eq!(
        config.cluster.secret,
        SecretSource::File("/etc/vipgate/secret".into())
    );
    assert_eq!(
        config.public_addresses[1].eligible,
        [NodeId(0), NodeId(1), NodeId(2)]
    );
    assert_eq!(config.public_addresses[2].eligible, [NodeId(1), NodeId(2)]);
    assert!(config.public_addresses[3].address.addr().is_ipv6());

    let archive = &config.nfs.exports[1];
    assert_eq!(archive.pseudo, "/archive");
    assert_eq!(archive.path, PathBuf::new());
    assert_eq!(archive.access, Access::ReadOnly);
    assert_eq!(archive.protocols, [NfsVersion::V3, NfsVersion::V4]);
    assert_eq!(archive.clients, [ClientMatch::Any]);

    let dns = config.dns.as_ref().unwrap();
    assert_eq!(dns.names[0].fqdn, "nfs.vipgate.example");
    assert_eq!(dns.names[0].addresses.len(), 4);
    assert_eq!(
        dns.names[1].addresses,
        [
            "192.0.2.101".parse::<std::net::IpAddr>().unwrap(),
            "192.0.2.102".parse().unwrap()
        ]
    );
    assert_eq!(config.timings, cluster_config::Timings::default());
}
