//! What the cluster-config tests share: the smallest valid cluster file.

/// The smallest valid cluster file; it has 12 lines, so text appended to it starts on line 13.
pub const MINIMAL: &str = "\
cluster:
  name: gw1
  secret: 0123456789abcdef
  data_dir: /var/lib/vipgate
nodes:
  - name: node1
    cluster_address: 198.51.100.11
    public_interfaces: [eth1]
public_addresses:
  - address: 192.0.2.101/24
volume:
  path: /mnt/volume
";
