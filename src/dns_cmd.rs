//! `vipgate dns`: what each DNS name of the cluster answers now, as the local node sees it.
//!
//! It reads the zone from the cluster file and the live VIPs from the local node (control
//! socket: `status` and `ip all`). A VIP is live when it is held by a node that is healthy, not
//! fenced and not disabled — the rule of the replicated live set the DNS servers answer from —
//! so the lists printed are the answers every node's DNS server gives now, before rotation.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use vipd::control::{ClusterStatus, IpReport, Request, Response, VipPhase};

use crate::{DEFAULT_CONFIG, Globals};

/// `vipgate dns`.
#[derive(Debug, Args)]
pub struct DnsArgs {
    /// The cluster file (for the zone, its names and the node names).
    #[arg(long, env = "VIPGATE_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
}

/// What `vipgate dns --json` prints. Field names are a public interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsReport {
    pub zone: String,
    pub ttl: u32,
    /// The sockets the servers answer on (`0.0.0.0:53` is every IPv4 address).
    pub listen: Vec<String>,
    pub names: Vec<DnsNameReport>,
}

/// One name and its answer now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsNameReport {
    /// Fully qualified, without the trailing dot.
    pub name: String,
    /// `service` (live VIPs) or `node` (the node's fixed public address).
    pub kind: &'static str,
    /// What A and AAAA queries list now, IPv4 first, before rotation.
    pub addresses: Vec<IpAddr>,
}

pub fn run(args: &DnsArgs, globals: &Globals) -> anyhow::Result<ExitCode> {
    let config = cluster_config::load(&args.config)
        .with_context(|| format!("cannot use the cluster file {}", args.config.display()))?;
    let Some(section) = &config.dns else {
        bail!(
            "the cluster file {} has no dns section, so no node serves DNS",
            args.config.display()
        );
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (status, ips) = runtime.block_on(async {
        let status = ask(globals, Request::Status).await?;
        let ips = ask(globals, Request::Ip { all: true }).await?;
        match (status, ips) {
            (Response::Status(status), Response::Ips(ips)) => Ok((status, ips)),
            other => bail!("the node answered something unexpected: {other:?}"),
        }
    })?;
    let zone = Arc::new(dns::Zone::new(section, &config.nodes));
    let view = dns::View::new(zone, &live_vips(&status, &ips), 0);
    let report = report(&view, &section.listen);
    if globals.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", format_report(&report));
    }
    Ok(ExitCode::SUCCESS)
}

async fn ask(globals: &Globals, request: Request) -> anyhow::Result<Response> {
    match vipd::control::call(&globals.socket, &request, crate::ctl_cmd::CALL_TIMEOUT).await {
        Ok(Response::Error { message }) => bail!("{message}"),
        Ok(response) => Ok(response),
        Err(error) => Err(anyhow::Error::new(error).context(format!(
            "cannot ask the node on {}",
            globals.socket.display()
        ))),
    }
}

/// The VIPs held by a node that is healthy, not fenced and not disabled.
pub fn live_vips(status: &ClusterStatus, ips: &IpReport) -> BTreeSet<IpAddr> {
    ips.ips
        .iter()
        .filter(|ip| ip.state == VipPhase::Held)
        .filter(|ip| {
            ip.owner
                .and_then(|owner| status.nodes.iter().find(|node| node.pnn == owner))
                .is_some_and(|node| {
                    !node.flags.unhealthy && !node.flags.fenced && !node.flags.disabled
                })
        })
        .map(|ip| ip.address)
        .collect()
}

pub fn report(view: &dns::View, listen: &[std::net::SocketAddr]) -> DnsReport {
    DnsReport {
        zone: view.zone().apex().to_owned(),
        ttl: view.zone().ttl(),
        listen: listen.iter().map(ToString::to_string).collect(),
        names: view
            .names()
            .map(|name| DnsNameReport {
                name: name.fqdn.to_owned(),
                kind: if name.node { "node" } else { "service" },
                addresses: name.addresses.all().collect(),
            })
            .collect(),
    }
}

/// The text form: a heading, then one aligned line per name.
pub fn format_report(report: &DnsReport) -> String {
    let mut text = format!(
        "zone {} (ttl {}s) on {}\n",
        report.zone,
        report.ttl,
        report.listen.join(", ")
    );
    let width = report
        .names
        .iter()
        .map(|name| name.name.len())
        .max()
        .unwrap_or(0);
    for name in &report.names {
        let addresses = if name.addresses.is_empty() {
            "(none)".to_owned()
        } else {
            name.addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        text.push_str(&format!(
            "{:<width$}  {:<7}  {addresses}\n",
            name.name, name.kind
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use vipd::control::{IpStatus, NodeFlags, NodeStatus};

    fn node(pnn: u32, flags: NodeFlags) -> NodeStatus {
        NodeStatus {
            pnn,
            name: format!("node{}", pnn + 1),
            cluster_address: format!("198.51.100.{}", 11 + pnn).parse().unwrap(),
            flags,
            ban_left_secs: None,
            failing_probes: Vec::new(),
        }
    }

    fn ip(address: &str, owner: Option<u32>, state: VipPhase) -> IpStatus {
        IpStatus {
            address: address.parse().unwrap(),
            prefix_len: 24,
            owner,
            owner_name: None,
            interface: None,
            epoch: 1,
            state,
            lease_left_ms: None,
            connections: 0,
        }
    }

    #[test]
    fn live_means_held_by_a_healthy_unfenced_enabled_node() {
        let status = ClusterStatus {
            this_node: 0,
            nodes: vec![
                node(0, NodeFlags::default()),
                node(
                    1,
                    NodeFlags {
                        unhealthy: true,
                        ..NodeFlags::default()
                    },
                ),
                node(
                    2,
                    NodeFlags {
                        fenced: true,
                        ..NodeFlags::default()
                    },
                ),
                node(
                    3,
                    NodeFlags {
                        disabled: true,
                        ..NodeFlags::default()
                    },
                ),
                node(
                    4,
                    NodeFlags {
                        disconnected: true,
                        ..NodeFlags::default()
                    },
                ),
            ],
            leader: Some(0),
            term: 1,
            commit_index: 1,
            applied_index: 1,
        };
        let ips = IpReport {
            this_node: 0,
            ips: vec![
                ip("192.0.2.1", Some(0), VipPhase::Held),
                ip("192.0.2.2", Some(0), VipPhase::Releasing),
                ip("192.0.2.3", None, VipPhase::Unassigned),
                ip("192.0.2.4", Some(1), VipPhase::Held),
                ip("192.0.2.5", Some(2), VipPhase::Held),
                ip("192.0.2.6", Some(3), VipPhase::Held),
                // Disconnected from this node is not a state of the replicated live set.
                ip("192.0.2.7", Some(4), VipPhase::Held),
                ip("192.0.2.8", Some(9), VipPhase::Held),
            ],
        };
        let live: Vec<String> = live_vips(&status, &ips)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(live, ["192.0.2.1", "192.0.2.7"]);
    }

    #[test]
    fn the_report_lists_every_name_and_its_answer() {
        let plan = vipgate::lab::plan::plan("t1", 2, 1).unwrap();
        let text = vipgate::lab::cluster::cluster_file(
            &plan,
            "0123456789abcdef0123",
            std::path::Path::new("/mnt"),
        );
        let config = cluster_config::parse(&text, "cluster.yaml").unwrap();
        let section = config.dns.as_ref().unwrap();
        let zone = Arc::new(dns::Zone::new(section, &config.nodes));
        let live: BTreeSet<IpAddr> = [
            "192.0.2.202".parse().unwrap(),
            "2001:db8:0:1::201".parse().unwrap(),
        ]
        .into();
        let report = report(&dns::View::new(zone, &live, 3), &section.listen);
        assert_eq!(
            format_report(&report),
            "zone vipgate.test (ttl 5s) on 0.0.0.0:53, [::]:53\n\
             nfs.vipgate.test    service  192.0.2.202 2001:db8:0:1::201\n\
             smb.vipgate.test    service  192.0.2.202 2001:db8:0:1::201\n\
             node1.vipgate.test  node     192.0.2.11\n\
             node2.vipgate.test  node     192.0.2.12\n"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["names"][0]["name"], "nfs.vipgate.test");
        assert_eq!(json["names"][0]["kind"], "service");
        assert_eq!(json["names"][0]["addresses"][1], "2001:db8:0:1::201");
        assert_eq!(json["listen"][1], "[::]:53");
    }
}
