//! The `smb.conf` of a node, rendered from the cluster file (pure): the bundled `[global]`
//! template of `deploy/samba/smb.conf.in` with this node's state directories filled in, then one
//! section per share of the `smb` section. Values that Samba would read differently from what
//! the cluster file says (`%` substitutions, quotes in user lists, surrounding blanks that Samba
//! trims) are refused rather than passed on.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use cluster_config::{ClusterConfig, Share};

/// The bundled template: the `[global]` section with `@PLACEHOLDER@`s.
pub const TEMPLATE: &str = include_str!("../../../deploy/samba/smb.conf.in");

/// Samba's limit on a NetBIOS name.
const NETBIOS_NAME_LEN: usize = 15;

/// Where one node keeps everything of its smbd: `<data_dir>/samba`. It holds the rendered
/// `smb.conf`, the username map, and smbd's private, lock, state, cache, pid and ncalrpc
/// directories, so every database stays on the node's local disk and apart from the
/// distribution's own Samba.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SambaPaths {
    root: PathBuf,
}

impl SambaPaths {
    /// The Samba directory inside the node's local `data_dir`.
    pub fn under(data_dir: &Path) -> SambaPaths {
        SambaPaths {
            root: data_dir.join("samba"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The rendered configuration smbd runs with.
    pub fn config(&self) -> PathBuf {
        self.root.join("smb.conf")
    }

    /// The username map (`unix = smb-name` lines), kept by `vipgate smb-user`.
    pub fn username_map(&self) -> PathBuf {
        self.root.join("users.map")
    }

    /// The pid file smbd writes.
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("run").join("smbd.pid")
    }

    /// The directories the template names, with the mode each is created with: the private
    /// directory (passwords, secrets) is readable by root only.
    pub fn directories(&self) -> Vec<(PathBuf, u32)> {
        let mut directories = vec![(self.root.clone(), 0o755)];
        for (name, mode) in [
            ("private", 0o700),
            ("lock", 0o755),
            ("state", 0o755),
            ("cache", 0o755),
            ("run", 0o755),
            ("ncalrpc", 0o755),
            ("bind-dns", 0o750),
            ("winbindd", 0o755),
            ("usershares", 0o755),
        ] {
            directories.push((self.root.join(name), mode));
        }
        directories
    }
}

/// Why the configuration cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("the cluster file has no smb shares to serve (smb.shares is empty)")]
    NoShares,
    #[error(
        "{what} {value:?} contains '%', which Samba would expand as a variable; rename or move it"
    )]
    Substitution { what: String, value: String },
    #[error("{what} {value:?} contains '\"', which Samba reads as a quote in user lists")]
    Quote { what: String, value: String },
    #[error("{what} {value:?} starts or ends with a blank, which Samba would trim")]
    Blank { what: String, value: String },
    #[error("{what} {value:?} is not valid UTF-8, which smb.conf needs")]
    NotUtf8 { what: String, value: String },
}

/// The complete `smb.conf` for the cluster's shares, with state under `paths`.
pub fn render(config: &ClusterConfig, paths: &SambaPaths) -> Result<String, RenderError> {
    if config.smb.shares.is_empty() {
        return Err(RenderError::NoShares);
    }
    let state = path_value("the Samba state directory", paths.root())?;
    let username_map = path_value("the username map", &paths.username_map())?;
    let mut text = TEMPLATE
        .replace("@NETBIOS_NAME@", &netbios_name(&config.cluster.name))
        .replace("@CLUSTER@", &config.cluster.name)
        .replace("@USERNAME_MAP@", &username_map)
        .replace("@STATE@", &state);
    for share in &config.smb.shares {
        text.push('\n');
        // `join("")` would add a trailing slash for a share of the whole volume.
        let path = if share.path.as_os_str().is_empty() {
            config.volume.path.clone()
        } else {
            share.local_path(&config.volume)
        };
        render_share(&mut text, share, &path)?;
    }
    Ok(text)
}

fn render_share(text: &mut String, share: &Share, path: &Path) -> Result<(), RenderError> {
    plain_value("share name", &share.name)?;
    let path = path_value(&format!("the path of share {}", share.name), path)?;
    let _ = writeln!(text, "[{}]", share.name);
    let _ = writeln!(text, "\tpath = {path}");
    let _ = writeln!(text, "\tread only = {}", yes_no(share.read_only));
    let _ = writeln!(text, "\tguest ok = no");
    let _ = writeln!(text, "\tbrowseable = yes");
    if let Some(users) = &share.valid_users {
        for user in users {
            let what = format!("valid user of share {}", share.name);
            plain_value(&what, user)?;
            if user.contains('"') {
                return Err(RenderError::Quote {
                    what,
                    value: user.clone(),
                });
            }
        }
        let _ = writeln!(text, "\tvalid users = {}", users.join(" "));
    }
    Ok(())
}

/// The NetBIOS name shared by every node: the cluster name, upper-cased, at most 15 characters.
pub fn netbios_name(cluster: &str) -> String {
    cluster
        .chars()
        .take(NETBIOS_NAME_LEN)
        .collect::<String>()
        .to_uppercase()
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

fn path_value(what: &str, path: &Path) -> Result<String, RenderError> {
    let text = path.to_str().ok_or_else(|| RenderError::NotUtf8 {
        what: what.to_owned(),
        value: path.display().to_string(),
    })?;
    plain_value(what, text)?;
    Ok(text.to_owned())
}

/// A value Samba will read back exactly: no substitution and nothing it trims.
fn plain_value(what: &str, value: &str) -> Result<(), RenderError> {
    if value.contains('%') {
        return Err(RenderError::Substitution {
            what: what.to_owned(),
            value: value.to_owned(),
        });
    }
    if value.trim() != value {
        return Err(RenderError::Blank {
            what: what.to_owned(),
            value: value.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(smb: &str) -> ClusterConfig {
        let text = format!(
            "cluster: {{name: gw1, secret: 0123456789abcdef, data_dir: /var/lib/vipgate}}\n\
             nodes:\n  - {{name: node1, cluster_address: 198.51.100.11, public_interfaces: [eth1]}}\n\
             public_addresses:\n  - address: 192.0.2.101/24\n\
             volume: {{path: /mnt/volume}}\n{smb}"
        );
        cluster_config::parse(&text, "cluster.yaml").unwrap_or_else(|error| panic!("{error}"))
    }

    fn paths() -> SambaPaths {
        SambaPaths::under(Path::new("/var/lib/vipgate"))
    }

    /// The lines of the section `[name]`, trimmed, without comments.
    fn section(text: &str, name: &str) -> Vec<String> {
        let header = format!("[{name}]");
        text.lines()
            .skip_while(|line| line.trim() != header)
            .skip(1)
            .map(str::trim)
            .take_while(|line| !line.starts_with('['))
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn shares_become_sections() {
        let text = render(
            &config(
                "smb:\n  manage: true\n  shares:\n\
                 \x20   - {name: share, path: data, read_only: false, valid_users: [alice, \"@staff\"]}\n\
                 \x20   - {name: Archive, path: .}\n",
            ),
            &paths(),
        )
        .unwrap();
        assert_eq!(
            section(&text, "share"),
            [
                "path = /mnt/volume/data",
                "read only = no",
                "guest ok = no",
                "browseable = yes",
                "valid users = alice @staff",
            ]
        );
        assert_eq!(
            section(&text, "Archive"),
            [
                "path = /mnt/volume",
                "read only = yes",
                "guest ok = no",
                "browseable = yes",
            ]
        );
    }

    #[test]
    fn the_global_section_keeps_state_local_and_is_cluster_safe() {
        let text = render(
            &config("smb:\n  shares:\n    - {name: share, path: data}\n"),
            &paths(),
        )
        .unwrap();
        assert!(!text.contains('@'), "a placeholder was left:\n{text}");
        let global = section(&text, "global");
        for expected in [
            "netbios name = GW1",
            "server role = standalone server",
            "bind interfaces only = no",
            "smb ports = 445",
            "disable netbios = yes",
            "private dir = /var/lib/vipgate/samba/private",
            "lock directory = /var/lib/vipgate/samba/lock",
            "state directory = /var/lib/vipgate/samba/state",
            "cache directory = /var/lib/vipgate/samba/cache",
            "pid directory = /var/lib/vipgate/samba/run",
            "ncalrpc dir = /var/lib/vipgate/samba/ncalrpc",
            "username map = /var/lib/vipgate/samba/users.map",
            "oplocks = no",
            "level2 oplocks = no",
            "smb2 leases = no",
            "kernel share modes = no",
            "posix locking = yes",
            "durable handles = no",
            "load printers = no",
        ] {
            assert!(
                global.iter().any(|line| line == expected),
                "missing {expected:?} in {global:#?}"
            );
        }
        // Every directory the template names is one `directories` creates.
        let created: Vec<PathBuf> = paths().directories().into_iter().map(|(d, _)| d).collect();
        for line in &global {
            if let Some((_, value)) = line.split_once(" = ")
                && value.starts_with("/var/lib/vipgate/samba/")
                && !value.ends_with(".map")
            {
                assert!(created.contains(&PathBuf::from(value)), "{line}");
            }
        }
    }

    #[test]
    fn values_samba_would_change_are_refused() {
        for (smb, expected) in [
            ("smb:\n  shares: []\n", RenderError::NoShares),
            (
                "smb:\n  shares:\n    - {name: share, path: \"data \"}\n",
                RenderError::Blank {
                    what: "the path of share share".into(),
                    value: "/mnt/volume/data ".into(),
                },
            ),
            (
                "smb:\n  shares:\n    - {name: s, path: d, valid_users: [\"a\\\"b\"]}\n",
                RenderError::Quote {
                    what: "valid user of share s".into(),
                    value: "a\"b".into(),
                },
            ),
        ] {
            assert_eq!(render(&config(smb), &paths()), Err(expected), "{smb}");
        }
        // The cluster file check refuses '%' in share names, paths and users; the volume's
        // own path is only checked here, where it meets Samba.
        let mut config = config("smb:\n  shares:\n    - {name: share, path: data}\n");
        config.volume.path = "/mnt/vol%U".into();
        assert_eq!(
            render(&config, &paths()),
            Err(RenderError::Substitution {
                what: "the path of share share".into(),
                value: "/mnt/vol%U/data".into(),
            })
        );
    }

    #[test]
    fn the_example_cluster_file_renders() {
        let example = include_str!("../../../deploy/examples/cluster.yaml");
        let config = cluster_config::parse(example, "cluster.yaml").unwrap();
        let text = render(&config, &paths()).unwrap();
        assert_eq!(
            section(&text, "share"),
            [
                "path = /mnt/volume/data",
                "read only = no",
                "guest ok = no",
                "browseable = yes",
                "valid users = alice @staff",
            ]
        );
    }

    #[test]
    fn netbios_names() {
        for (cluster, expected) in [
            ("gw1", "GW1"),
            ("a-very-long-cluster-name", "A-VERY-LONG-CLU"),
        ] {
            assert_eq!(netbios_name(cluster), expected);
        }
    }
}
