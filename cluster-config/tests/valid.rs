//! Valid files and the runtime values they produce: defaults, resolved references, loading.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use cluster_config::{
    Access, ClientMatch, Cluster, ClusterConfig, Dns, DnsName, Export, HandleScheme, Nfs,
    NfsVersion, Node, NodeId, PublicAddress, SecretSource, Share, Smb, Squash, Timings, Volume,
    load, parse,
};
use common::MINIMAL;

#[allow(
    clippy::unwrap_used,
    reason = "a test helper; the panic is the failure report"
)]
fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn minimal_file_parses_into_the_expected_values() {
    let config = parse(MINIMAL, "cluster.yaml").unwrap();
    let expected = ClusterConfig {
        cluster: Cluster {
            name: "gw1".to_owned(),
            secret: SecretSource::Inline("0123456789abcdef".to_owned()),
            data_dir: PathBuf::from("/var/lib/vipgate"),
            port: cluster_config::DEFAULT_PORT,
        },
        nodes: vec![Node {
            id: NodeId(0),
            name: "node1".to_owned(),
            cluster_address: ip("198.51.100.11"),
            public_interfaces: vec!["eth1".to_owned()],
            public_address: None,
        }],
        public_addresses: vec![PublicAddress {
            address: "192.0.2.101/24".parse().unwrap(),
            interface: None,
            eligible: vec![NodeId(0)],
            weight: 1,
        }],
        volume: Volume {
            path: PathBuf::from("/mnt/volume"),
            handles: HandleScheme::Auto,
        },
        nfs: Nfs { exports: vec![] },
        smb: Smb {
            manage: false,
            shares: vec![],
        },
        dns: None,
        timings: Timings {
            heartbeat: Duration::from_millis(100),
            election: Duration::from_millis(500),
            lease: Duration::from_millis(1500),
            health_interval: Duration::from_millis(250),
            health_timeout: Duration::from_secs(1),
        },
    };
    assert_eq!(config, expected);
    assert_eq!(
        config.summary(),
        "1 node, 1 public address, 0 exports, 0 shares"
    );
    assert_eq!(config.node_by_name("node1"), Some(&config.nodes[0]));
    assert_eq!(config.node_by_name("node2"), None);
    assert_eq!(
        config.node_by_cluster_address(ip("198.51.100.11")),
        Some(&config.nodes[0])
    );
    assert_eq!(config.node_by_cluster_address(ip("198.51.100.12")), None);
    assert_eq!(config.node(NodeId(0)), Some(&config.nodes[0]));
    assert_eq!(config.node(NodeId(1)), None);
    let vip = &config.public_addresses[0];
    assert_eq!(vip.ip(), ip("192.0.2.101"));
    assert_eq!(vip.interface_on(&config.nodes[0]), "eth1");
    assert!(vip.is_eligible(NodeId(0)));
}

#[test]
fn section_defaults_are_applied() {
    let text = format!(
        "{MINIMAL}\
nfs:
  exports:
    - name: data
      path: ./data/
smb:
  shares:
    - name: share
      path: .
dns:
  zone: VipGate.Example.
  names:
    - name: '@'
      addresses: [192.0.2.101/24]
"
    );
    let config = parse(&text, "cluster.yaml").unwrap();
    assert_eq!(
        config.nfs.exports,
        [Export {
            name: "data".to_owned(),
            path: PathBuf::from("data"),
            pseudo: "/data".to_owned(),
            protocols: vec![NfsVersion::V3, NfsVersion::V4],
            access: Access::ReadOnly,
            clients: vec![ClientMatch::Any],
            squash: Squash::Root,
            anon_uid: 65534,
            anon_gid: 65534,
        }]
    );
    assert_eq!(
        config.nfs.exports[0].local_path(&config.volume),
        PathBuf::from("/mnt/volume/data")
    );
    assert_eq!(
        config.smb,
        Smb {
            manage: false,
            shares: vec![Share {
                name: "share".to_owned(),
                path: PathBuf::new(),
                read_only: true,
                valid_users: None,
            }],
        }
    );
    assert_eq!(
        config.dns,
        Some(Dns {
            zone: "vipgate.example".to_owned(),
            ttl: 5,
            listen: vec![
                SocketAddr::new(ip("0.0.0.0"), 53),
                SocketAddr::new(ip("::"), 53)
            ],
            names: vec![DnsName {
                name: "@".to_owned(),
                fqdn: "vipgate.example".to_owned(),
                addresses: vec![ip("192.0.2.101")],
            }],
        })
    );
    assert_eq!(
        config.summary(),
        "1 node, 1 public address, 1 export, 1 share"
    );
}

#[test]
fn empty_optional_sections_mean_their_defaults() {
    let text = format!("{MINIMAL}nfs:\n  exports:\n    # - name: data\nsmb:\ntimings:\n");
    let config = parse(&text, "cluster.yaml").unwrap();
    assert_eq!(config, parse(MINIMAL, "cluster.yaml").unwrap());
}

#[test]
fn explicit_values_are_kept() {
    let text = "\
cluster: {name: gw1, secret_file: /etc/vipgate/secret, data_dir: /var/lib/vipgate}
nodes:
  - {name: a, cluster_address: '2001:db8:1::1', public_interfaces: [eth1, eth2], public_address: 192.0.2.1}
  - {name: b, cluster_address: '2001:db8:1::2', public_interfaces: [eth2]}
public_addresses:
  - {address: 192.0.2.101/24, interface: eth2, nodes: [b, a], weight: 7}
  - {address: '2001:db8::101/64', nodes: [b]}
volume: {path: /mnt/gv0, handles: glusterfs-gfid}
nfs:
  exports:
    - {name: d, path: d, pseudo: /x/y, protocols: [4, 3], access: rw, clients: [192.0.2.0/24, '2001:db8::7', Host.Example], squash: all, anon_uid: 1000, anon_gid: 1001}
    - {name: e, path: e, protocols: [4], squash: none, anon_uid: 0}
smb: {manage: true, shares: [{name: s, path: s, read_only: false, valid_users: [alice, '@staff']}]}
dns: {zone: z.example, ttl: 1, listen: [192.0.2.1], port: 5353, names: [{name: nfs.site1, addresses: all}]}
timings: {heartbeat: 50ms, election: 150ms, lease: 1100ms, health_interval: 50ms, health_timeout: 2500ms}
";
    let config = parse(text, "cluster.yaml").unwrap();
    assert_eq!(
        config.cluster.secret,
        SecretSource::File("/etc/vipgate/secret".into())
    );
    assert_eq!(config.nodes[0].public_address, Some(ip("192.0.2.1")));
    let vip = &config.public_addresses[0];
    assert_eq!((vip.interface.as_deref(), vip.weight), (Some("eth2"), 7));
    assert_eq!(vip.eligible, [NodeId(1), NodeId(0)]);
    assert_eq!(
        config.public_addresses[1].interface_on(&config.nodes[1]),
        "eth2"
    );
    assert_eq!(config.volume.handles, HandleScheme::GlusterfsGfid);
    let export = &config.nfs.exports[0];
    assert_eq!(export.pseudo, "/x/y");
    assert_eq!(export.protocols, [NfsVersion::V3, NfsVersion::V4]);
    assert_eq!(export.access, Access::ReadWrite);
    assert_eq!(
        export.clients,
        [
            ClientMatch::Network("192.0.2.0/24".parse().unwrap()),
            ClientMatch::Network("2001:db8::7/128".parse().unwrap()),
            ClientMatch::Host("host.example".to_owned()),
        ]
    );
    assert_eq!(
        (export.squash, export.anon_uid, export.anon_gid),
        (Squash::All, 1000, 1001)
    );
    assert_eq!(config.nfs.exports[1].anon_uid, 0);
    assert!(config.smb.manage);
    assert_eq!(
        config.smb.shares[0].valid_users,
        Some(vec!["alice".to_owned(), "@staff".to_owned()])
    );
    let dns = config.dns.unwrap();
    assert_eq!(dns.listen, [SocketAddr::new(ip("192.0.2.1"), 5353)]);
    assert_eq!(dns.names[0].fqdn, "nfs.site1.z.example");
    assert_eq!(
        dns.names[0].addresses,
        [ip("192.0.2.101"), ip("2001:db8::101")]
    );
    assert_eq!(config.timings.lease, Duration::from_millis(1100));
    assert_eq!(config.timings.health_timeout, Duration::from_millis(2500));
}

#[test]
fn inline_secrets_are_redacted_in_debug_output() {
    let config = parse(MINIMAL, "cluster.yaml").unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("0123456789abcdef"), "{debug}");
    assert!(debug.contains("Inline(<redacted>)"));
}

#[allow(
    clippy::unwrap_used,
    reason = "a test helper; the panic is the failure report"
)]
fn scratch_file(name: &str, contents: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("cluster-config-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn secret_files_are_read_without_their_line_break() {
    let path = scratch_file("secret", b"0123456789abcdef\r\n");
    assert_eq!(
        SecretSource::File(path.clone()).read().unwrap(),
        b"0123456789abcdef"
    );
    std::fs::write(&path, b"short\n").unwrap();
    let error = SecretSource::File(path.clone()).read().unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    assert!(
        error
            .to_string()
            .contains("holds 5 bytes; at least 16 are needed"),
        "{error}"
    );
    std::fs::remove_file(&path).unwrap();
    let error = SecretSource::File(path.clone()).read().unwrap_err();
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
    assert_eq!(
        SecretSource::Inline("x".repeat(16)).read().unwrap(),
        b"x".repeat(16)
    );
}

#[test]
fn load_reads_files_and_reports_what_it_cannot_read() {
    let path = scratch_file("cluster.yaml", MINIMAL.as_bytes());
    assert_eq!(load(&path).unwrap(), parse(MINIMAL, "x").unwrap());

    std::fs::write(&path, MINIMAL.replace("gw1", "GW1")).unwrap();
    let error = load(&path).unwrap_err();
    assert_eq!(error.diagnostics()[0].file, path.display().to_string());
    assert_eq!(error.diagnostics()[0].line, 2);

    std::fs::write(&path, b"cluster: \xff\n").unwrap();
    let error = load(&path).unwrap_err();
    assert!(error.to_string().contains("not UTF-8 text"), "{error}");

    std::fs::remove_file(&path).unwrap();
    let error = load(&path).unwrap_err();
    let diagnostic = &error.diagnostics()[0];
    assert_eq!((diagnostic.line, diagnostic.column), (0, 0));
    assert_eq!(
        error.to_string(),
        format!(
            "{}: cannot read the file: No such file or directory (os error 2)",
            path.display()
        )
    );
}
