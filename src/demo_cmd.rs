//! `vipgate demo`: build an isolated lab on this machine, show it, run commands inside it, and
//! remove it.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use vipgate::lab::state::LabRecord;
use vipgate::lab::{self, Lab, LabSpec, Network, Plan, Role};

use crate::Globals;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DemoArgs {
    #[command(subcommand)]
    command: Option<DemoCommand>,
    #[command(flatten)]
    start: StartArgs,
}

#[derive(Debug, Args)]
struct StartArgs {
    /// Number of node hosts.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=lab::plan::MAX_NODES as i64))]
    nodes: u16,
    /// Number of client hosts.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=lab::plan::MAX_CLIENTS as i64))]
    clients: u16,
    /// Lab name (a-z, 0-9, '-'; at most 16); a fresh one when omitted.
    #[arg(long)]
    name: Option<String>,
    /// Leave the lab running and exit; `vipgate demo down NAME` removes it.
    #[arg(long)]
    detach: bool,
}

#[derive(Debug, Subcommand)]
enum DemoCommand {
    /// Show the labs running on this machine.
    List,
    /// Run a command inside a lab host, with that host's network and name files.
    Exec {
        /// The lab; may be omitted when exactly one runs.
        #[arg(long)]
        lab: Option<String>,
        /// The host: node1, node2, …, client1, ….
        host: String,
        /// The command and its arguments.
        #[arg(required = true, last = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Remove a lab: stop its processes, delete its namespaces.
    Down {
        /// The lab; may be omitted when exactly one runs.
        name: Option<String>,
        /// Remove every lab on this machine.
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
}

pub fn run(args: DemoArgs, globals: &Globals) -> anyhow::Result<ExitCode> {
    match args.command {
        None => start(args.start, globals),
        Some(DemoCommand::List) => {
            list(globals);
            Ok(ExitCode::SUCCESS)
        }
        Some(DemoCommand::Exec { lab, host, command }) => exec(lab, &host, &command),
        Some(DemoCommand::Down { name, all }) => down(name, all, globals),
    }
}

fn require_root() -> anyhow::Result<()> {
    if !lab::is_root() {
        bail!("the demo builds network namespaces and needs root: run it with sudo");
    }
    Ok(())
}

fn start(args: StartArgs, globals: &Globals) -> anyhow::Result<ExitCode> {
    require_root()?;
    let spec = LabSpec {
        name: args.name,
        nodes: usize::from(args.nodes),
        clients: usize::from(args.clients),
    };
    if !globals.json {
        eprintln!(
            "building lab: {} node(s), {} client(s) …",
            spec.nodes, spec.clients
        );
    }
    let lab = Lab::create(&spec)?;
    if globals.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&LabView::of(lab.plan(), "ready", None))?
        );
    } else {
        print!("{}", describe(lab.plan()));
    }
    if args.detach {
        let name = lab.name().to_owned();
        lab.detach()?;
        if !globals.json {
            println!("\nThe lab keeps running. Remove it with: vipgate demo down {name}");
            println!("{name}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !globals.json {
        println!("\nPress Ctrl-C to remove the lab (or start it with --detach to keep it).");
    }
    wait_for_shutdown_signal()?;
    let name = lab.name().to_owned();
    lab.teardown()?;
    if !globals.json {
        println!("lab {name} removed");
    }
    Ok(ExitCode::SUCCESS)
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal listener")?;
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot listen for SIGTERM")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("cannot listen for SIGINT"),
            _ = terminate.recv() => Ok(()),
        }
    })
}

/// A person's view of a lab: its hosts and what to try.
fn describe(plan: &Plan) -> String {
    let nodes = plan.hosts_of(Role::Node).count();
    let clients = plan.hosts_of(Role::Client).count();
    let mut text = format!(
        "lab {}: {nodes} node{}, {clients} client{} — isolated: no uplink, no NAT, no default route\n\n",
        plan.name,
        if nodes == 1 { "" } else { "s" },
        if clients == 1 { "" } else { "s" },
    );
    text.push_str(&host_table(plan));
    let first_node = plan
        .hosts_of(Role::Node)
        .next()
        .map(|host| host.name.as_str())
        .unwrap_or("node1");
    let last_node = plan
        .hosts_of(Role::Node)
        .last()
        .map(|host| host.name.as_str())
        .unwrap_or("node1");
    let _ = writeln!(text, "\nTry:");
    let _ = writeln!(text, "  vipgate demo exec {first_node} -- ip -br addr");
    if let Some(client) = plan.hosts_of(Role::Client).next() {
        let _ = writeln!(
            text,
            "  vipgate demo exec {} -- ping -c 1 {last_node}",
            client.name
        );
    }
    let _ = writeln!(
        text,
        "  vipgate demo exec {first_node} -- ping -c 1 {last_node}-cluster"
    );
    let _ = writeln!(text, "  vipgate demo list");
    text
}

fn host_table(plan: &Plan) -> String {
    let mut text = format!(
        "  {:<9} {:<24} {:<16} {:<22} {}\n",
        "HOST", "NAMESPACE", "PUBLIC", "PUBLIC IPV6", "CLUSTER"
    );
    for host in &plan.hosts {
        let show = |network, v6| {
            host.address(network, v6)
                .map(|address| address.to_string())
                .unwrap_or_else(|| "-".to_owned())
        };
        let _ = writeln!(
            text,
            "  {:<9} {:<24} {:<16} {:<22} {}",
            host.name,
            host.netns,
            show(Network::Public, false),
            show(Network::Public, true),
            show(Network::Cluster, false),
        );
    }
    text
}

#[derive(Debug, Serialize)]
struct LabView<'a> {
    name: &'a str,
    state: &'a str,
    owner_pid: Option<u32>,
    switch_namespace: &'a str,
    hosts: Vec<HostView<'a>>,
}

#[derive(Debug, Serialize)]
struct HostView<'a> {
    name: &'a str,
    role: Role,
    namespace: &'a str,
    public_v4: Option<std::net::IpAddr>,
    public_v6: Option<std::net::IpAddr>,
    cluster_v4: Option<std::net::IpAddr>,
}

impl<'a> LabView<'a> {
    fn of(plan: &'a Plan, state: &'a str, owner_pid: Option<u32>) -> LabView<'a> {
        LabView {
            name: &plan.name,
            state,
            owner_pid,
            switch_namespace: &plan.switch_netns,
            hosts: plan
                .hosts
                .iter()
                .map(|host| HostView {
                    name: &host.name,
                    role: host.role,
                    namespace: &host.netns,
                    public_v4: host.address(Network::Public, false),
                    public_v6: host.address(Network::Public, true),
                    cluster_v4: host.address(Network::Cluster, false),
                })
                .collect(),
        }
    }
}

/// The state of a lab as a word: "ready", "building", or "orphaned" when its owner died.
fn lab_state(record: &LabRecord) -> &'static str {
    if record.is_orphaned() {
        "orphaned"
    } else if record.ready {
        "ready"
    } else {
        "building"
    }
}

fn list(globals: &Globals) {
    let records = lab::list();
    if globals.json {
        let views: Vec<LabView> = records
            .iter()
            .map(|record| LabView::of(&record.plan, lab_state(record), record.owner.map(|o| o.pid)))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&views).unwrap_or_else(|_| "[]".into())
        );
        return;
    }
    if records.is_empty() {
        println!("no labs running; start one with `vipgate demo` (or `vipgate demo --detach`)");
        return;
    }
    for (index, record) in records.iter().enumerate() {
        if index > 0 {
            println!();
        }
        let owner = match record.owner {
            Some(owner) => format!("owned by pid {}", owner.pid),
            None => "detached".to_owned(),
        };
        println!("lab {} ({}, {owner})", record.plan.name, lab_state(record));
        print!("{}", host_table(&record.plan));
    }
}

/// The lab meant by an optional name: the named one, or the only one running.
fn resolve_lab(name: Option<String>) -> anyhow::Result<String> {
    if let Some(name) = name {
        return Ok(name);
    }
    let names: Vec<String> = lab::list()
        .into_iter()
        .map(|record| record.plan.name)
        .collect();
    match names.as_slice() {
        [] => bail!("no lab is running; start one with `vipgate demo --detach`"),
        [only] => Ok(only.clone()),
        several => bail!(
            "several labs are running ({}); name one",
            several.join(", ")
        ),
    }
}

fn exec(
    lab_name: Option<String>,
    host: &str,
    command: &[std::ffi::OsString],
) -> anyhow::Result<ExitCode> {
    require_root()?;
    let lab = Lab::open(&resolve_lab(lab_name)?)?;
    let Some((program, arguments)) = command.split_first() else {
        bail!("no command given: vipgate demo exec HOST -- COMMAND [ARGS…]");
    };
    let mut child_command = lab.command(host, program)?;
    child_command.args(arguments);
    let status = child_command
        .status()
        .with_context(|| format!("cannot run {} on {host}", program.to_string_lossy()))?;
    use std::os::unix::process::ExitStatusExt;
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

fn down(name: Option<String>, all: bool, globals: &Globals) -> anyhow::Result<ExitCode> {
    require_root()?;
    let names = if all {
        lab::list()
            .into_iter()
            .map(|record| record.plan.name)
            .collect()
    } else {
        vec![resolve_lab(name)?]
    };
    for name in &names {
        lab::teardown(name)?;
        if !globals.json {
            println!("lab {name} removed");
        }
    }
    if globals.json {
        println!("{}", serde_json::json!({ "removed": names }));
    }
    Ok(ExitCode::SUCCESS)
}
