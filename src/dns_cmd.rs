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
use vipd::control::{Request, Response};

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
    /// The SOA serial: it moves with every change of the answers.
    pub serial: u32,
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
    let ips = runtime.block_on(async {
        match ask(globals, Request::Ip { all: true }).await? {
            Response::Ips(ips) => Ok(ips),
            other => bail!("the node answered something unexpected: {other:?}"),
        }
    })?;
    let zone = Arc::new(dns::Zone::new(section, &config.nodes));
    let live: BTreeSet<IpAddr> = ips
        .ips
        .iter()
        .filter(|ip| ip.live)
        .map(|ip| ip.address)
        .collect();
    let view = dns::View::new(zone, &live, ips.live_serial);
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

pub fn report(view: &dns::View, listen: &[std::net::SocketAddr]) -> DnsReport {
    DnsReport {
        zone: view.zone().apex().to_owned(),
        ttl: view.zone().ttl(),
        serial: view.serial(),
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
        "zone {} (serial {}, ttl {}s) on {}\n",
        report.zone,
        report.serial,
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
            "zone vipgate.test (serial 3, ttl 5s) on 0.0.0.0:53, [::]:53\n\
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
        assert_eq!(json["serial"], 3);
    }
}
