//! Table of invalid cluster files, each with the exact diagnostics it must produce: position,
//! field path and message.

mod common;

use cluster_config::{Diagnostic, parse};
use common::MINIMAL as BASE;

/// One expected diagnostic: line, column, field path, and a substring of the message.
type Expected = (usize, usize, &'static str, &'static str);

struct Case {
    name: &'static str,
    text: String,
    expected: Vec<Expected>,
}

fn case(name: &'static str, text: &str, expected: &[Expected]) -> Case {
    Case {
        name,
        text: text.to_owned(),
        expected: expected.to_vec(),
    }
}

fn appended(name: &'static str, extra: &str, expected: &[Expected]) -> Case {
    case(name, &format!("{BASE}{extra}"), expected)
}

fn cases() -> Vec<Case> {
    vec![
        case(
            "bad indentation",
            "cluster:\n  name: gw1\n    secret: 0123456789abcdef\n",
            &[(3, 11, "", "mapping values are not allowed in this context")],
        ),
        case(
            "unclosed flow mapping",
            "cluster: {name: gw1\nnodes: [node1]\n",
            &[(2, 6, "", "did not find expected ',' or '}', while parsing a flow mapping")],
        ),
        case("empty file", "# nothing yet\n", &[(1, 1, "", "the file is empty")]),
        case(
            "not a mapping",
            "- cluster\n",
            &[(1, 1, "", "invalid type: sequence, expected a mapping with the cluster file's sections")],
        ),
        case(
            "unknown field",
            &BASE.replace("cluster_address:", "cluster_adress:"),
            &[(7, 5, "nodes[0]", "unknown field `cluster_adress`, expected one of `name`, `cluster_address`")],
        ),
        appended(
            "unknown section",
            "nfs_exports: []\n",
            &[(13, 1, "", "unknown field `nfs_exports`, expected one of `cluster`, `nodes`")],
        ),
        appended(
            "wrong enum value",
            "  handles: gluster\n",
            &[(13, 12, "volume.handles", "unknown variant `gluster`, expected one of `auto`, `kernel`, `glusterfs-gfid`")],
        ),
        case(
            "wrong type",
            &BASE.replace("  - address: 192.0.2.101/24\n", "  - address: 192.0.2.101/24\n    weight: heavy\n"),
            &[(11, 13, "public_addresses[0].weight", "invalid type: string \"heavy\", expected u32")],
        ),
        case(
            "missing section",
            &BASE.replace("volume:\n  path: /mnt/volume\n", ""),
            &[(1, 1, "", "missing field `volume`")],
        ),
        case(
            "missing field in a list entry",
            &BASE.replace("    public_interfaces: [eth1]\n", ""),
            &[(6, 5, "nodes[0]", "missing field `public_interfaces`")],
        ),
        case(
            "duplicate key",
            &BASE.replace("  name: gw1\n", "  name: gw1\n  name: gw2\n"),
            &[(3, 3, "cluster.name", "duplicate field `name`")],
        ),
        case(
            "public address is a cluster address",
            &BASE.replace(
                "  - address: 192.0.2.101/24\n",
                "  - address: 192.0.2.101/24\n  - address: 198.51.100.11/24\n",
            ),
            &[(11, 14, "public_addresses[1].address", "198.51.100.11 is node1's cluster address")],
        ),
        case(
            "public address without prefix",
            &BASE.replace("192.0.2.101/24", "192.0.2.101"),
            &[(10, 14, "public_addresses[0].address", "\"192.0.2.101\" has no prefix length; write it with its subnet's prefix, e.g. 192.0.2.101/24")],
        ),
        case(
            "malformed public addresses",
            &BASE.replace(
                "  - address: 192.0.2.101/24\n",
                "  - address: 192.0.2.300/24\n  - address: 192.0.2.1/33\n  - address: 192.0.2.7/0\n  - address: 192.0.2.0/24\n  - address: \"2001:db8::1/64\"\n  - address: 2001:db8::1/64\n",
            ),
            &[
                (10, 14, "public_addresses[0].address", "\"192.0.2.300\" in \"192.0.2.300/24\" is not an IP address"),
                (11, 14, "public_addresses[1].address", "prefix length /33 in 192.0.2.1/33 is too long for an IPv4 address"),
                (12, 14, "public_addresses[2].address", "prefix length /0"),
                (13, 14, "public_addresses[3].address", "192.0.2.0/24 is the network address of its subnet"),
                (15, 14, "public_addresses[5].address", "2001:db8::1 is already public_addresses[4]"),
            ],
        ),
        case(
            "subnet with two prefixes",
            &BASE.replace(
                "  - address: 192.0.2.101/24\n",
                "  - address: 192.0.2.101/24\n  - address: 192.0.2.102/25\n",
            ),
            &[(11, 14, "public_addresses[1].address", "192.0.2.102/25 shares a subnet with 192.0.2.101/24 (public_addresses[0]) but has a different prefix length")],
        ),
        case(
            "duplicate node name and cluster address",
            &BASE.replace(
                "public_addresses:\n",
                "  - name: node1\n    cluster_address: 198.51.100.11\n    public_interfaces: [eth1, eth1]\npublic_addresses:\n",
            ),
            &[
                (9, 11, "nodes[1].name", "node1 is already the name of nodes[0]"),
                (10, 22, "nodes[1].cluster_address", "198.51.100.11 is already node1's cluster address"),
                (11, 31, "nodes[1].public_interfaces[1]", "eth1 is listed twice"),
            ],
        ),
        case(
            "unusable cluster addresses",
            &BASE.replace(
                "public_addresses:\n",
                "  - name: node2\n    cluster_address: 127.0.0.1\n    public_interfaces: [\"eth0:1\"]\n  - name: node3\n    cluster_address: ff02::1\n    public_interfaces: [eth1]\n    public_address: 198.51.100.11\npublic_addresses:\n",
            ),
            &[
                (10, 22, "nodes[1].cluster_address", "127.0.0.1 is a loopback address"),
                (11, 25, "nodes[1].public_interfaces[0]", "address labels such as eth0:1 are not interfaces"),
                (13, 22, "nodes[2].cluster_address", "ff02::1 is a multicast address"),
                (15, 21, "nodes[2].public_address", "198.51.100.11 is already node1's cluster address"),
            ],
        ),
        case(
            "eligible nodes and interfaces",
            &BASE.replace(
                "  - address: 192.0.2.101/24\n",
                "  - address: 192.0.2.101/24\n    nodes: [node1, node9, node1]\n  - address: 192.0.2.102/24\n    interface: eth2\n    weight: 101\n",
            ),
            &[
                (11, 20, "public_addresses[0].nodes[1]", "there is no node named \"node9\""),
                (11, 27, "public_addresses[0].nodes[2]", "node1 is listed twice"),
                (13, 16, "public_addresses[1].interface", "eth2 is not among the public_interfaces of node1, which may hold this address"),
                (14, 13, "public_addresses[1].weight", "weight 101 is outside 1 to 100"),
            ],
        ),
        appended(
            "export paths and names",
            "nfs:\n  exports:\n    - {name: data, path: /srv/data}\n    - {name: data, path: a/../../etc, pseudo: /data}\n    - name: logs\n      path: logs\n      protocols: []\n      anon_uid: 0\n",
            &[
                (15, 26, "nfs.exports[0].path", "/srv/data is absolute; paths are relative to volume.path, e.g. srv/data"),
                (16, 14, "nfs.exports[1].name", "data is already the name of nfs.exports[0]"),
                (16, 26, "nfs.exports[1].path", "a/../../etc contains '..'"),
                (16, 47, "nfs.exports[1].pseudo", "/data is already the pseudo path of nfs.exports[0]"),
                (19, 18, "nfs.exports[2].protocols", "no protocols are listed"),
                (20, 17, "nfs.exports[2].anon_uid", "anon_uid 0 makes squashed callers root"),
            ],
        ),
        appended(
            "export protocols and clients",
            "nfs:\n  exports:\n    - name: data\n      path: data\n      protocols: [2, 4, 4]\n      clients: [192.0.2.5/24, \"bad host\"]\n      anon_gid: 4294967295\n",
            &[
                (17, 19, "nfs.exports[0].protocols[0]", "NFS version 2 is not served; list 3, 4 or both"),
                (17, 25, "nfs.exports[0].protocols[2]", "version 4 is listed twice"),
                (18, 17, "nfs.exports[0].clients[0]", "192.0.2.5/24 has host bits set; write the network as 192.0.2.0/24"),
                (18, 31, "nfs.exports[0].clients[1]", "\"bad host\" is not *, a network, an IP address or a host name"),
                (19, 17, "nfs.exports[0].anon_gid", "4294967295 is not a usable id"),
            ],
        ),
        appended(
            "shares",
            "smb:\n  shares:\n    - {name: Share, path: data}\n    - {name: share, path: ..}\n    - {name: \"a:b\", path: x, valid_users: []}\n",
            &[
                (16, 14, "smb.shares[1].name", "share is already the name of smb.shares[0] (share names ignore case)"),
                (16, 27, "smb.shares[1].path", ".. contains '..'"),
                (17, 14, "smb.shares[2].name", "\"a:b\" contains ':'"),
                (17, 43, "smb.shares[2].valid_users", "no users are listed"),
            ],
        ),
        appended(
            "samba variables",
            "smb:\n  shares:\n    - {name: \"50%\", path: \"a%U\", valid_users: [bob, \"%u\"]}\n",
            &[
                (15, 14, "smb.shares[0].name", "\"50%\" contains '%', which Samba would expand"),
                (15, 27, "smb.shares[0].path", "\"a%U\" contains '%'"),
                (15, 53, "smb.shares[0].valid_users[1]", "\"%u\" contains '%'"),
            ],
        ),
        appended(
            "dns",
            "dns:\n  zone: vipgate..example\n  ttl: 7200\n  port: 0\n  names:\n    - {name: nfs, addresses: [192.0.2.101/25, 192.0.2.199]}\n    - {name: NFS, addresses: all}\n    - {name: smb.gw.example, addresses: all}\n",
            &[
                (14, 9, "dns.zone", "\"vipgate..example\" is not a DNS name: it has an empty label"),
                (15, 8, "dns.ttl", "ttl 7200 is longer than 3600 seconds"),
                (16, 9, "dns.port", "port 0 is not a port to listen on"),
                (18, 31, "dns.names[0].addresses[0]", "192.0.2.101/25 does not match public address 192.0.2.101/24"),
                (18, 47, "dns.names[0].addresses[1]", "192.0.2.199 is not one of the public_addresses"),
                (19, 14, "dns.names[1].name", "NFS is already listed as dns.names[0]"),
            ],
        ),
        appended(
            "dns name that repeats the zone",
            "dns:\n  zone: gw.example\n  ttl: 0\n  names:\n    - {name: nfs.gw.example, addresses: all}\n",
            &[
                (15, 8, "dns.ttl", "ttl 0 forbids caching"),
                (17, 14, "dns.names[0].name", "nfs.gw.example already ends with the zone gw.example; names are relative to it, write nfs"),
            ],
        ),
        appended(
            "dns name that is a node's name",
            "dns:\n  zone: gw.example\n  names:\n    - {name: Node1, addresses: all}\n",
            &[(16, 14, "dns.names[0].name", "node1 is the name of nodes[0], which the zone answers with that node's public_address")],
        ),
        appended(
            "timings",
            "timings:\n  heartbeat: 500ms\n  election: 1s\n  lease: 900ms\n  health_interval: 1\n",
            &[
                (15, 13, "timings.election", "election timeout 1s is shorter than three heartbeats (3 × 500ms)"),
                (16, 10, "timings.lease", "lease 900ms is shorter than 1s plus two heartbeats (1s + 2 × 500ms)"),
                (17, 20, "timings.health_interval", "\"1\" has no unit; write e.g. 1ms or 1s"),
            ],
        ),
        appended(
            "health timeout out of range",
            "timings:\n  health_timeout: 31s\n",
            &[(14, 19, "timings.health_timeout", "health_timeout 31s is longer than 30s; a hung volume would go unnoticed that long")],
        ),
        appended(
            "health interval against a defaulted lease",
            "timings:\n  health_interval: 1500ms\n",
            &[(14, 20, "timings.health_interval", "health_interval 1500ms is longer than half the lease (750ms)")],
        ),
        case(
            "secrets and directories",
            &BASE
                .replace("  secret: 0123456789abcdef\n", "  secret: short\n")
                .replace("/var/lib/vipgate", "/mnt/volume/.vipgate"),
            &[
                (3, 11, "cluster.secret", "the inline secret is 5 characters long; at least 16 are needed"),
                (4, 13, "cluster.data_dir", "/mnt/volume/.vipgate is inside volume.path /mnt/volume"),
            ],
        ),
        case(
            "both secrets",
            &BASE.replace("  secret: 0123456789abcdef\n", "  secret: 0123456789abcdef\n  secret_file: etc/secret\n"),
            &[(3, 11, "cluster.secret", "both secret and secret_file are set; keep only one")],
        ),
        case(
            "no secret, relative paths",
            &BASE
                .replace("  secret: 0123456789abcdef\n", "")
                .replace("/var/lib/vipgate", "var/lib/vipgate")
                .replace("/mnt/volume", "/"),
            &[
                (2, 3, "cluster", "neither secret nor secret_file is set"),
                (3, 13, "cluster.data_dir", "\"var/lib/vipgate\" is not an absolute path"),
                (11, 9, "volume.path", "the volume cannot be mounted at /"),
            ],
        ),
        case(
            "nothing to run",
            "cluster: {name: Gw1, secret: 0123456789abcdef, data_dir: /var/lib/vipgate}\nnodes: []\npublic_addresses: []\nvolume: {path: /mnt/volume}\n",
            &[
                (1, 17, "cluster.name", "\"Gw1\" contains 'G'; names use only a-z, 0-9 and -"),
                (2, 8, "nodes", "no nodes are listed; a cluster needs at least one"),
                (3, 19, "public_addresses", "no public addresses are listed; a cluster needs at least one"),
            ],
        ),
        case(
            "lists left empty by commenting out their entries",
            "cluster: {name: gw1, secret: 0123456789abcdef, data_dir: /var/lib/vipgate}\nnodes:\n  # - name: node1\npublic_addresses:\nvolume: {path: /mnt/volume}\n",
            &[
                (2, 1, "nodes", "no nodes are listed"),
                (4, 1, "public_addresses", "no public addresses are listed"),
            ],
        ),
        // Several independent mistakes all over the file: every one is reported, in file order.
        case(
            "many problems at once",
            "\
cluster:
  name: gw_1
  secret_file: secret
  data_dir: /var/lib/vipgate
nodes:
  - name: node1
    cluster_address: 0.0.0.0
    public_interfaces: [eth1]
  - name: node2
    cluster_address: 198.51.100.12
    public_interfaces: []
public_addresses:
  - address: 192.0.2.101/24
    nodes: [node3]
volume:
  path: /mnt/volume
nfs:
  exports:
    - {name: data, path: ../data}
dns:
  zone: -bad.example
  names:
    - {name: nfs, addresses: [192.0.2.9]}
timings:
  lease: 150ms
",
            &[
                (2, 9, "cluster.name", "\"gw_1\" contains '_'"),
                (3, 16, "cluster.secret_file", "\"secret\" is not an absolute path"),
                (7, 22, "nodes[0].cluster_address", "0.0.0.0 is the unspecified address"),
                (11, 24, "nodes[1].public_interfaces", "no public interfaces are listed"),
                (14, 13, "public_addresses[0].nodes[0]", "there is no node named \"node3\""),
                (19, 26, "nfs.exports[0].path", "../data contains '..'"),
                (21, 9, "dns.zone", "label \"-bad\" starts or ends with -"),
                (23, 31, "dns.names[0].addresses[0]", "192.0.2.9 is not one of the public_addresses"),
                (25, 10, "timings.lease", "lease 150ms is shorter than 1s plus two heartbeats (1s + 2 × 100ms)"),
                (25, 10, "timings.lease", "health_interval 250ms is longer than half the lease (75ms)"),
            ],
        ),
    ]
}

fn describe(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(|diagnostic| format!("  {diagnostic}\n"))
        .collect()
}

#[test]
fn base_file_is_valid() {
    parse(BASE, "cluster.yaml").unwrap();
}

#[test]
fn invalid_files_report_exactly_the_expected_diagnostics() {
    let mut failures = Vec::new();
    for case in cases() {
        let error = match parse(&case.text, "cluster.yaml") {
            Ok(_) => {
                failures.push(format!("{}: parsed without error", case.name));
                continue;
            }
            Err(error) => error,
        };
        let actual = error.diagnostics();
        let matches = actual.len() == case.expected.len()
            && actual
                .iter()
                .zip(&case.expected)
                .all(|(diagnostic, expected)| {
                    let (line, column, path, message) = *expected;
                    diagnostic.file == "cluster.yaml"
                        && diagnostic.line == line
                        && diagnostic.column == column
                        && diagnostic.path == path
                        && diagnostic.message.contains(message)
                });
        if !matches {
            failures.push(format!(
                "{}:\n expected\n{}\n got\n{}",
                case.name,
                case.expected
                    .iter()
                    .map(|(line, column, path, message)| format!(
                        "  {line}:{column}: {path}: {message}\n"
                    ))
                    .collect::<String>(),
                describe(actual)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn there_are_enough_cases() {
    assert!(cases().len() >= 12);
}

#[test]
fn messages_are_lower_case_sentences() {
    for case in cases() {
        if let Err(error) = parse(&case.text, "cluster.yaml") {
            for diagnostic in error.diagnostics() {
                let first = diagnostic.message.chars().next().unwrap();
                assert!(
                    !first.is_uppercase() || diagnostic.message.starts_with("NFS"),
                    "{}: {diagnostic}",
                    case.name
                );
                assert!(
                    !diagnostic.message.ends_with('.'),
                    "{}: {diagnostic}",
                    case.name
                );
            }
        }
    }
}

#[test]
fn inline_secrets_never_appear_in_diagnostics() {
    let text = BASE.replace("0123456789abcdef", "hunter2");
    let error = parse(&text, "cluster.yaml").unwrap_err();
    assert!(!error.to_string().contains("hunter2"), "{error}");
}
