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
    /// Send a signal to a node's `vipgate node` daemon (default KILL; STOP freezes it, CONT
    /// thaws it, TERM stops it cleanly).
    Kill {
        /// The lab; may be omitted when exactly one runs.
        #[arg(long)]
        lab: Option<String>,
        /// The node: node1, node2, ….
        host: String,
        /// KILL, STOP, CONT or TERM.
        #[arg(long, short, default_value = "KILL", value_parser = ["KILL", "STOP", "CONT", "TERM"])]
        signal: String,
    },
    /// Start a node's `vipgate node` daemon again.
    Restart {
        /// The lab; may be omitted when exactly one runs.
        #[arg(long)]
        lab: Option<String>,
        /// The node: node1, node2, ….
        host: String,
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
        Some(DemoCommand::Kill { lab, host, signal }) => kill(lab, &host, &signal),
        Some(DemoCommand::Restart { lab, host }) => restart(lab, &host),
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
    // Ctrl-C or SIGTERM at any point, even while the lab is being built, must end in a clean
    // teardown: block both now (threads started later inherit the mask; children get a clean
    // mask from std) and take them with sigwait once the lab is up.
    let shutdown_signals = shutdown_signals();
    if !args.detach {
        shutdown_signals
            .thread_block()
            .context("cannot block SIGINT and SIGTERM")?;
    }
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
    let vipgate = std::env::current_exe().context("cannot find this program to run its nodes")?;
    if !globals.json {
        eprintln!("starting `vipgate node` on every node …");
    }
    lab.start_cluster(&vipgate)?;
    let started = std::time::Instant::now();
    match wait_for_cluster(&lab) {
        Ok(summary) => {
            if !globals.json {
                eprintln!(
                    "cluster up in {:.1}s: {summary}",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        Err(error) => eprintln!(
            "warning: {error:#} (see the node logs under {})",
            vipgate::lab::state::lab_dir(lab.name()).display()
        ),
    }
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
    shutdown_signals
        .wait()
        .context("cannot wait for SIGINT or SIGTERM")?;
    let name = lab.name().to_owned();
    lab.teardown()?;
    if !globals.json {
        println!("lab {name} removed");
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits until every VIP of the lab is hosted, asking node1's daemon; returns a summary.
fn wait_for_cluster(lab: &Lab) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let socket = vipgate::lab::cluster::socket_path(lab.name(), "node1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut last = String::from("no answer from node1 yet");
    while std::time::Instant::now() < deadline {
        let answer = runtime.block_on(vipd::control::call(
            &socket,
            &vipd::control::Request::Ip { all: true },
            std::time::Duration::from_secs(1),
        ));
        match answer {
            Ok(vipd::control::Response::Ips(report)) => {
                let hosted = report.ips.iter().filter(|ip| ip.owner.is_some()).count();
                last = format!("{hosted} of {} addresses hosted", report.ips.len());
                if hosted == report.ips.len() && hosted > 0 {
                    return Ok(last);
                }
            }
            Ok(other) => last = format!("unexpected answer {other:?}"),
            Err(error) => last = error.to_string(),
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    anyhow::bail!("the cluster did not come up within 20s: {last}")
}

/// The signals that end a foreground demo.
fn shutdown_signals() -> nix::sys::signal::SigSet {
    let mut signals = nix::sys::signal::SigSet::empty();
    signals.add(nix::sys::signal::Signal::SIGINT);
    signals.add(nix::sys::signal::Signal::SIGTERM);
    signals
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
    let _ = writeln!(
        text,
        "\nPublic addresses (VIPs): {}",
        vipgate::lab::cluster::VIPS.join(", ")
    );
    text.push_str(&service_table(plan));
    let _ = writeln!(text, "\nTry:");
    let _ = writeln!(text, "  vipgate demo exec {first_node} -- vipgate status");
    let _ = writeln!(
        text,
        "  vipgate demo exec {first_node} -- vipgate ip all -v"
    );
    let _ = writeln!(
        text,
        "  vipgate demo kill {last_node}          # SIGKILL its daemon; its addresses move"
    );
    let _ = writeln!(
        text,
        "  vipgate demo restart {last_node}       # start it again"
    );
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

/// The lab's services, where to reach them and a command to try each.
fn service_table(plan: &Plan) -> String {
    let mut text = String::from("\nServices:\n");
    for hint in vipgate::lab::cluster::service_hints(plan) {
        let _ = writeln!(
            text,
            "  {:<5} {:<32} {}",
            hint.service, hint.address, hint.command
        );
    }
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
    services: Vec<vipgate::lab::cluster::ServiceHint>,
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
            services: vipgate::lab::cluster::service_hints(plan),
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
        print!("{}", service_table(&record.plan));
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

fn kill(lab_name: Option<String>, host: &str, signal: &str) -> anyhow::Result<ExitCode> {
    require_root()?;
    let lab = Lab::open(&resolve_lab(lab_name)?)?;
    let Some(daemon) = lab.node_daemon(host)? else {
        bail!("no `vipgate node` runs on {host} (start it with `vipgate demo restart {host}`)");
    };
    let signal = match signal {
        "STOP" => nix::sys::signal::Signal::SIGSTOP,
        "CONT" => nix::sys::signal::Signal::SIGCONT,
        "TERM" => nix::sys::signal::Signal::SIGTERM,
        _ => nix::sys::signal::Signal::SIGKILL,
    };
    daemon.signal(signal);
    println!(
        "sent {signal} to vipgate node on {host} (pid {})",
        daemon.pid
    );
    Ok(ExitCode::SUCCESS)
}

fn restart(lab_name: Option<String>, host: &str) -> anyhow::Result<ExitCode> {
    require_root()?;
    let lab = Lab::open(&resolve_lab(lab_name)?)?;
    if let Some(daemon) = lab.node_daemon(host)? {
        bail!("vipgate node already runs on {host} (pid {})", daemon.pid);
    }
    let vipgate = std::env::current_exe().context("cannot find this program")?;
    let child = lab.start_node(host, &vipgate)?;
    println!("started vipgate node on {host} (pid {})", child.id());
    Ok(ExitCode::SUCCESS)
}
