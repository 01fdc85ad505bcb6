//! The ctdb-like commands (`status`, `ip`, `moveip`, `disable`, `enable`, `ban`, `unban`,
//! `listnodes`, `nodestatus`, `pnn`, `node add|remove|set-address`) and `node` itself: their
//! arguments, the request each sends over the local node's control socket, and how each answer is
//! shown — text modelled on ctdb's layout, or JSON with `--json` — with its exit code.
//!
//! Everything from an answer to the printed text and the exit code is pure ([`render`]) and
//! tested with exact expected output; [`run`] only sends the request and prints.
//!
//! # JSON output (`--json`)
//!
//! The payload of the node's answer, one object per line, with the field names documented in
//! `vipd::control`:
//! - `status`: a `ClusterStatus` object;
//! - `ip`: an `IpReport` object;
//! - `nodestatus`: that node's `NodeStatus` object (`nodestatus all`: an array of them);
//! - `listnodes`: an array of `{"pnn", "name", "cluster_address"}`;
//! - `pnn`: `{"pnn", "name"}`;
//! - commands that change something: `{"message"}`.
//!
//! Errors are never JSON: they go to stderr as `vipgate: MESSAGE`, text or not.
//!
//! # Exit codes
//!
//! 0 on success; 1 when the command failed (no node running, refused by the node, unknown node).
//! `nodestatus` is ctdb's: the node's flag bits (DISCONNECTED 1, UNHEALTHY 2, DISABLED 4,
//! BANNED 8, FENCED 64; OR-ed over the nodes for `nodestatus all`), so 0 means OK; as 1 is a flag
//! there, its failures exit with 255 instead.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use vipd::control::{ClusterStatus, IpReport, IpStatus, NodeStatus, RaftRole, Request, Response};

use crate::{DEFAULT_CONFIG, Globals};

/// How long a command waits for the node. The node itself gives up on a request after 5 s, so
/// this only fires when the node is wedged.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Exit code of a failed command.
pub const EXIT_FAILED: u8 = 1;
/// Exit code of a failed `nodestatus`, whose successful exit codes are flag bits.
pub const EXIT_NODESTATUS_FAILED: u8 = 255;

#[derive(Debug, Subcommand)]
pub enum ControlCommand {
    /// Show every node and its state, and the Raft leader, term and commit index.
    Status,
    /// Show the public IPs this node may host and their owners (-1: nobody); `ip all`: every one.
    Ip(IpArgs),
    /// Move a public IP to another node now.
    Moveip {
        /// The public IP.
        address: IpAddr,
        /// The node to take it: its name, pnn or cluster address.
        node: String,
    },
    /// Disable a node: it releases its public IPs and takes none until enabled.
    Disable(NodeChoice),
    /// Enable a disabled node again.
    Enable(NodeChoice),
    /// Ban a node for a while: it releases its public IPs and takes none until the ban ends.
    Ban {
        /// How long, in seconds.
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        seconds: u64,
        #[command(flatten)]
        choice: NodeChoice,
    },
    /// Lift a ban before it ends.
    Unban(NodeChoice),
    /// Print every node's cluster address, one per line.
    Listnodes,
    /// Print a node's status line; the exit code is its flag bits (0 when OK), as ctdb's.
    Nodestatus {
        /// The node: name, pnn, cluster address, or `all`; this node when omitted.
        node: Option<String>,
    },
    /// Print this node's pnn.
    Pnn,
    /// Run the node daemon, or change the cluster's membership.
    Node(NodeArgs),
}

/// `ip [all] [-v]`.
#[derive(Debug, Args)]
pub struct IpArgs {
    /// `all`: every public IP of the cluster, not only those this node may host.
    #[arg(value_enum, value_name = "all")]
    pub scope: Option<IpScope>,
    /// Also show the interface, epoch, state and lease left.
    #[arg(short, long)]
    pub verbose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IpScope {
    /// Every public IP of the cluster.
    All,
}

/// `--node N` of the commands that act on this node by default.
#[derive(Debug, Args)]
pub struct NodeChoice {
    /// The node to act on (name, pnn or cluster address); this node when omitted.
    #[arg(long)]
    pub node: Option<String>,
}

/// `node`: with a subcommand, a membership change; without, the daemon.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub command: Option<MembershipCommand>,
    #[command(flatten)]
    pub daemon: NodeDaemonArgs,
}

/// How the node daemon starts.
#[derive(Debug, Args)]
pub struct NodeDaemonArgs {
    /// The cluster file.
    #[arg(long, env = "VIPGATE_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// This node's name in the cluster file; when omitted, the node whose cluster address is
    /// configured on this machine.
    #[arg(long)]
    pub name: Option<String>,
    /// Where the Raft log lives; overrides the cluster file's `data_dir` (for several nodes on
    /// one machine, as in the demo).
    #[arg(long, env = "VIPGATE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// First start of a node added with `vipgate node add`: join the running cluster (which
    /// tells this node its pnn and sends it the state) instead of bootstrapping a new one from
    /// the file. Has no effect once the node has started once.
    #[arg(long)]
    pub join: bool,
}

/// Membership changes, agreed through Raft. After the first start the cluster's own membership
/// is the authority, not the file: keep the file in step for the record.
#[derive(Debug, Subcommand)]
pub enum MembershipCommand {
    /// Add a node to the cluster; then start it with `vipgate node --join`.
    Add {
        /// Its name (as the cluster file will list it).
        name: String,
        /// Its cluster address.
        address: IpAddr,
    },
    /// Remove a node from the cluster: its public IPs move away first. Run it on another node.
    Remove {
        /// Its name, pnn or cluster address.
        name: String,
    },
    /// Change a node's cluster address.
    SetAddress {
        /// Its name.
        name: String,
        /// Its new cluster address.
        address: IpAddr,
    },
}

/// Which answer a command expects and how it shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    Status,
    Ip {
        all: bool,
        verbose: bool,
    },
    Listnodes,
    /// `None`: the answering node; `Some("all")`: every node.
    Nodestatus {
        node: Option<String>,
    },
    Pnn,
    /// A command that changes something and is answered `done`.
    Action,
}

/// What a command prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub code: u8,
}

/// Runs a control command against the node on `globals.socket`, or the node daemon itself.
pub fn run(command: ControlCommand, globals: &Globals) -> anyhow::Result<ExitCode> {
    let (request, view) = match plan(&command) {
        Some(plan) => plan,
        None => {
            let ControlCommand::Node(NodeArgs { daemon, .. }) = &command else {
                anyhow::bail!("internal error: no request for {command:?}");
            };
            return crate::node_cmd::run_daemon(daemon, globals);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let answer = runtime
        .block_on(vipd::control::call(&globals.socket, &request, CALL_TIMEOUT))
        .map_err(|error| error_chain(&error));
    let output = render(&view, answer, globals.json);
    print!("{}", output.stdout);
    eprint!("{}", output.stderr);
    Ok(ExitCode::from(output.code))
}

/// The request a command sends and the view of its answer; `None` for the node daemon.
pub fn plan(command: &ControlCommand) -> Option<(Request, View)> {
    let node = |choice: &NodeChoice| choice.node.clone();
    let planned = match command {
        ControlCommand::Status => (Request::Status, View::Status),
        ControlCommand::Ip(args) => {
            let all = args.scope == Some(IpScope::All);
            let view = View::Ip {
                all,
                verbose: args.verbose,
            };
            (Request::Ip { all }, view)
        }
        ControlCommand::Moveip { address, node } => (
            Request::MoveIp {
                address: *address,
                node: node.clone(),
            },
            View::Action,
        ),
        ControlCommand::Disable(choice) => (Request::Disable { node: node(choice) }, View::Action),
        ControlCommand::Enable(choice) => (Request::Enable { node: node(choice) }, View::Action),
        ControlCommand::Ban { seconds, choice } => (
            Request::Ban {
                node: node(choice),
                seconds: *seconds,
            },
            View::Action,
        ),
        ControlCommand::Unban(choice) => (Request::Unban { node: node(choice) }, View::Action),
        ControlCommand::Listnodes => (Request::Status, View::Listnodes),
        ControlCommand::Nodestatus { node } => {
            (Request::Status, View::Nodestatus { node: node.clone() })
        }
        ControlCommand::Pnn => (Request::Status, View::Pnn),
        ControlCommand::Node(NodeArgs { command, .. }) => {
            let request = match command.as_ref()? {
                MembershipCommand::Add { name, address } => Request::NodeAdd {
                    name: name.clone(),
                    address: *address,
                },
                MembershipCommand::Remove { name } => Request::NodeRemove { name: name.clone() },
                MembershipCommand::SetAddress { name, address } => Request::NodeSetAddress {
                    name: name.clone(),
                    address: *address,
                },
            };
            (request, View::Action)
        }
    };
    Some(planned)
}

/// The printed text and exit code for `view` given the node's answer (or why there is none).
pub fn render(view: &View, answer: Result<Response, String>, json: bool) -> Output {
    let failed_code = match view {
        View::Nodestatus { .. } => EXIT_NODESTATUS_FAILED,
        _ => EXIT_FAILED,
    };
    let failure = |message: &str| Output {
        stdout: String::new(),
        stderr: format!("vipgate: {message}\n"),
        code: failed_code,
    };
    let success = |stdout: String, code: u8| Output {
        stdout,
        stderr: String::new(),
        code,
    };
    let response = match answer {
        Ok(response) => response,
        Err(message) => return failure(&message),
    };
    match (view, response) {
        (_, Response::Error { message }) => failure(&message),
        (View::Status, Response::Status(status)) => success(
            if json {
                json_line(&status)
            } else {
                format_status(&status)
            },
            0,
        ),
        (View::Ip { all, verbose }, Response::Ips(report)) => success(
            if json {
                json_line(&report)
            } else {
                format_ips(&report, *all, *verbose)
            },
            0,
        ),
        (View::Listnodes, Response::Status(status)) => success(
            if json {
                json_line(&listed_nodes(&status))
            } else {
                format_listnodes(&status)
            },
            0,
        ),
        (View::Nodestatus { node }, Response::Status(status)) => {
            let selected = match select_nodes(&status, node.as_deref()) {
                Ok(selected) => selected,
                Err(message) => return failure(&message),
            };
            let bits = selected
                .nodes
                .iter()
                .fold(0, |bits, node| bits | node.flags.bits());
            // Flag bits fit in a byte (the highest is 0x40); anything else is reported as 254
            // rather than wrapped onto a misleading value.
            let code = u8::try_from(bits).unwrap_or(254);
            let stdout = if json {
                if selected.all {
                    json_line(&selected.nodes)
                } else {
                    selected.nodes.first().map(json_line).unwrap_or_default()
                }
            } else {
                let mut text = String::new();
                if selected.all {
                    let _ = writeln!(text, "Number of nodes:{}", selected.nodes.len());
                }
                text.push_str(&format_node_lines(&selected.nodes, status.this_node));
                text
            };
            success(stdout, code)
        }
        (View::Pnn, Response::Status(status)) => {
            let name = status.this().map(|node| node.name.clone());
            let stdout = if json {
                json_line(&serde_json::json!({ "pnn": status.this_node, "name": name }))
            } else {
                format!("{}\n", status.this_node)
            };
            success(stdout, 0)
        }
        (View::Action, Response::Done { message }) => success(
            if json {
                json_line(&serde_json::json!({ "message": message }))
            } else {
                format!("{message}\n")
            },
            0,
        ),
        (_, other) => failure(&format!(
            "the node gave an unexpected answer: {}",
            answer_kind(&other)
        )),
    }
}

/// The nodes `nodestatus` shows.
struct Selected<'a> {
    nodes: Vec<&'a NodeStatus>,
    all: bool,
}

fn select_nodes<'a>(
    status: &'a ClusterStatus,
    which: Option<&str>,
) -> Result<Selected<'a>, String> {
    match which {
        Some("all") => Ok(Selected {
            nodes: status.nodes.iter().collect(),
            all: true,
        }),
        Some(which) => status
            .node(which)
            .map(|node| Selected {
                nodes: vec![node],
                all: false,
            })
            .ok_or_else(|| unknown_node(status, which)),
        None => status
            .this()
            .map(|node| Selected {
                nodes: vec![node],
                all: false,
            })
            .ok_or_else(|| {
                format!(
                    "the node reports pnn {}, which is not in its own node list",
                    status.this_node
                )
            }),
    }
}

fn unknown_node(status: &ClusterStatus, which: &str) -> String {
    let known: Vec<String> = status
        .nodes
        .iter()
        .map(|node| format!("{} {}", node.pnn, printable(&node.name)))
        .collect();
    format!(
        "unknown node {which:?}: give a name, pnn or cluster address (nodes: {})",
        known.join(", ")
    )
}

fn answer_kind(response: &Response) -> &'static str {
    match response {
        Response::Status(_) => "status",
        Response::Ips(_) => "ips",
        Response::Done { .. } => "done",
        Response::Error { .. } => "error",
    }
}

/// ```text
/// Number of nodes:3
/// pnn:0  node1  198.51.100.11  OK (THIS NODE)
/// pnn:1  node2  198.51.100.12  UNHEALTHY (volume: write probe timed out after 1s)
/// pnn:2  node3  198.51.100.13  DISCONNECTED|FENCED
/// Leader:0  Term:4  Commit index:118  Applied index:118
/// ```
pub fn format_status(status: &ClusterStatus) -> String {
    let mut text = format!("Number of nodes:{}\n", status.nodes.len());
    let nodes: Vec<&NodeStatus> = status.nodes.iter().collect();
    text.push_str(&format_node_lines(&nodes, status.this_node));
    let leader = status
        .leader
        .map_or_else(|| "none".to_owned(), |leader| leader.to_string());
    let _ = writeln!(
        text,
        "Leader:{leader}  Term:{}  Commit index:{}  Applied index:{}",
        status.term, status.commit_index, status.applied_index
    );
    text
}

/// One aligned `pnn:N  name  address  STATE…` line per node.
pub fn format_node_lines(nodes: &[&NodeStatus], this_node: u32) -> String {
    let rows = nodes
        .iter()
        .map(|node| {
            vec![
                format!("pnn:{}", node.pnn),
                printable(&node.name),
                node.cluster_address.to_string(),
                node_state(node, node.pnn == this_node),
            ]
        })
        .collect();
    align(rows, "  ")
}

/// `OK`, `UNHEALTHY (volume: …)`, `BANNED (ban ends in 30s)`, each with ` (THIS NODE)` on the
/// answering node.
fn node_state(node: &NodeStatus, this: bool) -> String {
    let mut state = node.flags.state_word();
    if !node.failing_probes.is_empty() {
        let probes: Vec<String> = node.failing_probes.iter().map(|p| printable(p)).collect();
        let _ = write!(state, " ({})", probes.join("; "));
    }
    if node.flags.banned
        && let Some(seconds) = node.ban_left_secs
    {
        let _ = write!(state, " (ban ends in {seconds}s)");
    }
    if node.raft == RaftRole::Learner {
        state.push_str(" (LEARNER: catching up, not voting yet)");
    }
    if this {
        state.push_str(" (THIS NODE)");
    }
    state
}

/// ```text
/// Public IPs on node 0
/// 192.0.2.101 0
/// 192.0.2.103 -1
/// ```
/// and with `-v`
/// ```text
/// 192.0.2.101/24 node[0]  node1 interface[eth1] epoch[3] held       lease[1.2s]
/// 192.0.2.103/24 node[-1] -     interface[-]    epoch[5] unassigned lease[-]
/// ```
pub fn format_ips(report: &IpReport, all: bool, verbose: bool) -> String {
    let mut text = if all {
        "Public IPs on ALL nodes\n".to_owned()
    } else {
        format!("Public IPs on node {}\n", report.this_node)
    };
    let owner = |ip: &IpStatus| {
        ip.owner
            .map_or_else(|| "-1".to_owned(), |pnn| pnn.to_string())
    };
    let rows = report
        .ips
        .iter()
        .map(|ip| {
            if verbose {
                vec![
                    format!("{}/{}", ip.address, ip.prefix_len),
                    format!("node[{}]", owner(ip)),
                    ip.owner_name
                        .as_deref()
                        .map_or_else(|| "-".to_owned(), printable),
                    format!(
                        "interface[{}]",
                        ip.interface
                            .as_deref()
                            .map_or_else(|| "-".to_owned(), printable)
                    ),
                    format!("epoch[{}]", ip.epoch),
                    ip.state.word().to_owned(),
                    format!(
                        "lease[{}]",
                        ip.lease_left_ms
                            .map_or_else(|| "-".to_owned(), lease_seconds)
                    ),
                ]
            } else {
                vec![ip.address.to_string(), owner(ip)]
            }
        })
        .collect();
    text.push_str(&align(rows, " "));
    text
}

/// ctdb's `listnodes`: one cluster address per line, in pnn order.
pub fn format_listnodes(status: &ClusterStatus) -> String {
    status
        .nodes
        .iter()
        .map(|node| format!("{}\n", node.cluster_address))
        .collect()
}

/// `listnodes --json`: one entry per node.
#[derive(Debug, Serialize)]
struct ListedNode<'a> {
    pnn: u32,
    name: &'a str,
    cluster_address: IpAddr,
}

fn listed_nodes(status: &ClusterStatus) -> Vec<ListedNode<'_>> {
    status
        .nodes
        .iter()
        .map(|node| ListedNode {
            pnn: node.pnn,
            name: &node.name,
            cluster_address: node.cluster_address,
        })
        .collect()
}

/// `1.2s`: a lease left, rounded down to a tenth of a second (never shown longer than it is).
fn lease_seconds(millis: u64) -> String {
    format!("{}.{}s", millis / 1000, (millis % 1000) / 100)
}

/// Rows of cells as lines, every column but the last padded to its widest cell.
fn align(rows: Vec<Vec<String>>, separator: &str) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column > 0 {
                line.push_str(separator);
            }
            line.push_str(cell);
            if column + 1 < row.len() {
                let pad = widths[column].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// `text` with control characters (newlines, terminal escapes) shown as spaces, so that a
/// strange name cannot break a line or drive the terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn json_line<T: Serialize + ?Sized>(value: &T) -> String {
    match serde_json::to_string(value) {
        Ok(json) => format!("{json}\n"),
        // Our own plain types always serialise; say so rather than print nothing.
        Err(error) => format!("{{\"error\":\"cannot encode the answer as JSON: {error}\"}}\n"),
    }
}

/// An error and its causes, `: `-separated, as `anyhow` prints `{:#}`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use vipd::control::{NodeFlags, VipPhase};

    use super::*;

    fn node(pnn: u32, name: &str, address: &str) -> NodeStatus {
        NodeStatus {
            pnn,
            name: name.into(),
            cluster_address: address.parse().unwrap(),
            flags: NodeFlags::default(),
            ban_left_secs: None,
            failing_probes: vec![],
            raft: RaftRole::Voter,
        }
    }

    /// The cluster of the issue's example.
    fn example() -> ClusterStatus {
        let mut unhealthy = node(1, "node2", "198.51.100.12");
        unhealthy.flags.unhealthy = true;
        unhealthy.failing_probes = vec!["volume: write probe timed out after 1s".into()];
        let mut gone = node(2, "node3", "198.51.100.13");
        gone.flags.disconnected = true;
        gone.flags.fenced = true;
        ClusterStatus {
            this_node: 0,
            nodes: vec![node(0, "node1", "198.51.100.11"), unhealthy, gone],
            leader: Some(0),
            term: 4,
            commit_index: 118,
            applied_index: 118,
        }
    }

    fn ips() -> IpReport {
        let ip = |address: &str, owner: Option<(u32, &str)>, epoch, state, lease| IpStatus {
            address: address.parse().unwrap(),
            prefix_len: if address.contains(':') { 64 } else { 24 },
            owner: owner.map(|(pnn, _)| pnn),
            owner_name: owner.map(|(_, name)| name.to_owned()),
            interface: owner.map(|_| "eth1".to_owned()),
            epoch,
            state,
            lease_left_ms: lease,
            connections: 0,
            live: state == VipPhase::Held,
        };
        IpReport {
            this_node: 0,
            live_serial: 0,
            ips: vec![
                ip(
                    "192.0.2.101",
                    Some((0, "node1")),
                    3,
                    VipPhase::Held,
                    Some(1234),
                ),
                ip(
                    "192.0.2.102",
                    Some((1, "node2")),
                    12,
                    VipPhase::Releasing,
                    None,
                ),
                ip("192.0.2.103", None, 5, VipPhase::Unassigned, None),
                ip(
                    "2001:db8::101",
                    Some((10, "node11")),
                    1,
                    VipPhase::Held,
                    None,
                ),
            ],
        }
    }

    fn text(view: View, response: Response) -> Output {
        render(&view, Ok(response), false)
    }

    fn ok(stdout: &str, code: u8) -> Output {
        Output {
            stdout: stdout.into(),
            stderr: String::new(),
            code,
        }
    }

    fn failed(stderr: &str, code: u8) -> Output {
        Output {
            stdout: String::new(),
            stderr: stderr.into(),
            code,
        }
    }

    #[test]
    fn status_reads_like_ctdb() {
        assert_eq!(
            text(View::Status, Response::Status(example())),
            ok(
                "Number of nodes:3\n\
                 pnn:0  node1  198.51.100.11  OK (THIS NODE)\n\
                 pnn:1  node2  198.51.100.12  UNHEALTHY (volume: write probe timed out after 1s)\n\
                 pnn:2  node3  198.51.100.13  DISCONNECTED|FENCED\n\
                 Leader:0  Term:4  Commit index:118  Applied index:118\n",
                0
            )
        );
    }

    #[test]
    fn status_columns_stay_aligned_with_uneven_cells() {
        let mut status = example();
        status.this_node = 10;
        status.leader = None;
        status.nodes[0].flags.disabled = true;
        status.nodes[1].flags = NodeFlags {
            banned: true,
            ..NodeFlags::default()
        };
        status.nodes[1].failing_probes.clear();
        status.nodes[1].ban_left_secs = Some(30);
        status.nodes[2].flags = NodeFlags {
            leaving: true,
            ..NodeFlags::default()
        };
        status
            .nodes
            .push(node(10, "gateway-eleven", "2001:db8::11"));
        status.nodes[3].raft = RaftRole::Learner;
        status.nodes[3].failing_probes = vec!["nfs: no answer".into(), "smbd:\nexited".into()];
        status.nodes[3].flags.unhealthy = true;
        assert_eq!(
            format_status(&status),
            "Number of nodes:4\n\
             pnn:0   node1           198.51.100.11  DISABLED\n\
             pnn:1   node2           198.51.100.12  BANNED (ban ends in 30s)\n\
             pnn:2   node3           198.51.100.13  LEAVING\n\
             pnn:10  gateway-eleven  2001:db8::11   UNHEALTHY (nfs: no answer; smbd: exited) (LEARNER: catching up, not voting yet) (THIS NODE)\n\
             Leader:none  Term:4  Commit index:118  Applied index:118\n"
        );
        let empty = ClusterStatus {
            nodes: vec![],
            ..example()
        };
        assert_eq!(
            format_status(&empty),
            "Number of nodes:0\nLeader:0  Term:4  Commit index:118  Applied index:118\n"
        );
    }

    #[test]
    fn ip_shows_owners_and_minus_one_for_unhosted() {
        assert_eq!(
            text(
                View::Ip {
                    all: false,
                    verbose: false
                },
                Response::Ips(ips())
            ),
            ok(
                "Public IPs on node 0\n\
                 192.0.2.101   0\n\
                 192.0.2.102   1\n\
                 192.0.2.103   -1\n\
                 2001:db8::101 10\n",
                0
            )
        );
    }

    #[test]
    fn ip_all_verbose_adds_interface_epoch_state_and_lease() {
        assert_eq!(
            text(
                View::Ip {
                    all: true,
                    verbose: true
                },
                Response::Ips(ips())
            ),
            ok(
                "Public IPs on ALL nodes\n\
                 192.0.2.101/24   node[0]  node1  interface[eth1] epoch[3]  held       lease[1.2s]\n\
                 192.0.2.102/24   node[1]  node2  interface[eth1] epoch[12] releasing  lease[-]\n\
                 192.0.2.103/24   node[-1] -      interface[-]    epoch[5]  unassigned lease[-]\n\
                 2001:db8::101/64 node[10] node11 interface[eth1] epoch[1]  held       lease[-]\n",
                0
            )
        );
        let single = IpReport {
            this_node: 0,
            live_serial: 0,
            ips: ips().ips.into_iter().take(1).collect(),
        };
        assert_eq!(
            format_ips(&single, false, true),
            "Public IPs on node 0\n\
             192.0.2.101/24 node[0] node1 interface[eth1] epoch[3] held lease[1.2s]\n"
        );
        assert_eq!(
            format_ips(
                &IpReport {
                    this_node: 2,
                    live_serial: 0,
                    ips: vec![]
                },
                false,
                false
            ),
            "Public IPs on node 2\n"
        );
    }

    #[test]
    fn leases_are_rounded_down_to_a_tenth() {
        for (millis, shown) in [
            (0, "0.0s"),
            (99, "0.0s"),
            (1234, "1.2s"),
            (1999, "1.9s"),
            (12_000, "12.0s"),
        ] {
            assert_eq!(lease_seconds(millis), shown);
        }
    }

    #[test]
    fn listnodes_pnn_and_actions() {
        let status = || Response::Status(example());
        assert_eq!(
            text(View::Listnodes, status()),
            ok("198.51.100.11\n198.51.100.12\n198.51.100.13\n", 0)
        );
        assert_eq!(text(View::Pnn, status()), ok("0\n", 0));
        let done = Response::Done {
            message: "moved 192.0.2.101 from node1 to node2".into(),
        };
        assert_eq!(
            text(View::Action, done),
            ok("moved 192.0.2.101 from node1 to node2\n", 0)
        );
    }

    #[test]
    fn nodestatus_exit_code_is_the_flag_bits() {
        let status = || Response::Status(example());
        let nodestatus = |node: Option<&str>| View::Nodestatus {
            node: node.map(str::to_owned),
        };
        let table = [
            (None, ok("pnn:0  node1  198.51.100.11  OK (THIS NODE)\n", 0)),
            (
                Some("node2"),
                ok(
                    "pnn:1  node2  198.51.100.12  UNHEALTHY (volume: write probe timed out after 1s)\n",
                    0x02,
                ),
            ),
            (
                Some("2"),
                ok("pnn:2  node3  198.51.100.13  DISCONNECTED|FENCED\n", 0x41),
            ),
            (
                Some("198.51.100.13"),
                ok("pnn:2  node3  198.51.100.13  DISCONNECTED|FENCED\n", 0x41),
            ),
            (
                Some("all"),
                ok(
                    "Number of nodes:3\n\
                     pnn:0  node1  198.51.100.11  OK (THIS NODE)\n\
                     pnn:1  node2  198.51.100.12  UNHEALTHY (volume: write probe timed out after 1s)\n\
                     pnn:2  node3  198.51.100.13  DISCONNECTED|FENCED\n",
                    0x43,
                ),
            ),
            (
                Some("node9"),
                failed(
                    "vipgate: unknown node \"node9\": give a name, pnn or cluster address \
                     (nodes: 0 node1, 1 node2, 2 node3)\n",
                    255,
                ),
            ),
        ];
        for (node, expected) in table {
            assert_eq!(text(nodestatus(node), status()), expected, "{node:?}");
        }
    }

    #[test]
    fn failures_go_to_stderr_with_their_exit_codes() {
        let refused = || Response::error("node2 may not host 192.0.2.101");
        let table = [
            (
                View::Action,
                Ok(refused()),
                failed("vipgate: node2 may not host 192.0.2.101\n", 1),
            ),
            (
                View::Status,
                Ok(refused()),
                failed("vipgate: node2 may not host 192.0.2.101\n", 1),
            ),
            (
                View::Nodestatus { node: None },
                Ok(refused()),
                failed("vipgate: node2 may not host 192.0.2.101\n", 255),
            ),
            (
                View::Nodestatus { node: None },
                Err("no vipgate node is running here".to_owned()),
                failed("vipgate: no vipgate node is running here\n", 255),
            ),
            (
                View::Pnn,
                Err("no vipgate node is running here".to_owned()),
                failed("vipgate: no vipgate node is running here\n", 1),
            ),
            (
                View::Status,
                Ok(Response::Done {
                    message: "x".into(),
                }),
                failed("vipgate: the node gave an unexpected answer: done\n", 1),
            ),
            (
                View::Action,
                Ok(Response::Status(example())),
                failed("vipgate: the node gave an unexpected answer: status\n", 1),
            ),
        ];
        for (view, answer, expected) in table {
            for json in [false, true] {
                assert_eq!(render(&view, answer.clone(), json), expected, "{view:?}");
            }
        }
        let status = ClusterStatus {
            this_node: 7,
            ..example()
        };
        assert_eq!(
            render(
                &View::Nodestatus { node: None },
                Ok(Response::Status(status)),
                false
            ),
            failed(
                "vipgate: the node reports pnn 7, which is not in its own node list\n",
                255
            )
        );
    }

    #[test]
    fn json_prints_the_payload_with_stable_field_names() {
        let json = |view: View, response: Response| {
            let output = render(&view, Ok(response), true);
            assert!(output.stdout.ends_with('\n') && output.stdout.matches('\n').count() == 1);
            (
                serde_json::from_str::<serde_json::Value>(&output.stdout).unwrap(),
                output.code,
            )
        };
        let (status, code) = json(View::Status, Response::Status(example()));
        assert_eq!(code, 0);
        assert_eq!(status, serde_json::to_value(example()).unwrap());
        assert!(
            status.get("result").is_none(),
            "the payload, not the envelope"
        );
        assert_eq!(
            status["nodes"][1]["failing_probes"][0],
            "volume: write probe timed out after 1s"
        );
        assert_eq!(status["nodes"][2]["flags"]["fenced"], true);

        let (report, _) = json(
            View::Ip {
                all: true,
                verbose: false,
            },
            Response::Ips(ips()),
        );
        assert_eq!(report["ips"][0]["address"], "192.0.2.101");
        assert_eq!(report["ips"][0]["lease_left_ms"], 1234);
        assert_eq!(report["ips"][2]["owner"], serde_json::Value::Null);
        assert_eq!(report["ips"][1]["state"], "releasing");

        let (listed, _) = json(View::Listnodes, Response::Status(example()));
        assert_eq!(
            listed,
            serde_json::json!([
                {"pnn": 0, "name": "node1", "cluster_address": "198.51.100.11"},
                {"pnn": 1, "name": "node2", "cluster_address": "198.51.100.12"},
                {"pnn": 2, "name": "node3", "cluster_address": "198.51.100.13"},
            ])
        );
        let (pnn, _) = json(View::Pnn, Response::Status(example()));
        assert_eq!(pnn, serde_json::json!({"pnn": 0, "name": "node1"}));

        let (one, code) = json(
            View::Nodestatus {
                node: Some("node3".into()),
            },
            Response::Status(example()),
        );
        assert_eq!(code, 0x41);
        assert_eq!(one["pnn"], 2);
        assert_eq!(one["flags"]["disconnected"], true);
        let (every, code) = json(
            View::Nodestatus {
                node: Some("all".into()),
            },
            Response::Status(example()),
        );
        assert_eq!(code, 0x43);
        assert_eq!(every.as_array().map(Vec::len), Some(3));

        let (done, _) = json(
            View::Action,
            Response::Done {
                message: "banned node2 for 30s".into(),
            },
        );
        assert_eq!(done, serde_json::json!({"message": "banned node2 for 30s"}));
    }

    #[test]
    fn commands_send_the_documented_requests() {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            command: ControlCommand,
        }
        let planned = |args: &[&str]| {
            let cli = Cli::try_parse_from(std::iter::once("vipgate").chain(args.iter().copied()))
                .unwrap_or_else(|error| panic!("{args:?}: {error}"));
            plan(&cli.command)
        };
        let address: IpAddr = "192.0.2.101".parse().unwrap();
        type Planned = Option<(Request, View)>;
        let table: Vec<(&[&str], Planned)> = vec![
            (&["status"], Some((Request::Status, View::Status))),
            (
                &["ip"],
                Some((
                    Request::Ip { all: false },
                    View::Ip {
                        all: false,
                        verbose: false,
                    },
                )),
            ),
            (
                &["ip", "all", "-v"],
                Some((
                    Request::Ip { all: true },
                    View::Ip {
                        all: true,
                        verbose: true,
                    },
                )),
            ),
            (
                &["ip", "-v", "all"],
                Some((
                    Request::Ip { all: true },
                    View::Ip {
                        all: true,
                        verbose: true,
                    },
                )),
            ),
            (
                &["ip", "--verbose"],
                Some((
                    Request::Ip { all: false },
                    View::Ip {
                        all: false,
                        verbose: true,
                    },
                )),
            ),
            (
                &["moveip", "192.0.2.101", "node2"],
                Some((
                    Request::MoveIp {
                        address,
                        node: "node2".into(),
                    },
                    View::Action,
                )),
            ),
            (
                &["disable"],
                Some((Request::Disable { node: None }, View::Action)),
            ),
            (
                &["enable", "--node", "2"],
                Some((
                    Request::Enable {
                        node: Some("2".into()),
                    },
                    View::Action,
                )),
            ),
            (
                &["ban", "30"],
                Some((
                    Request::Ban {
                        node: None,
                        seconds: 30,
                    },
                    View::Action,
                )),
            ),
            (
                &["ban", "30", "--node", "node3"],
                Some((
                    Request::Ban {
                        node: Some("node3".into()),
                        seconds: 30,
                    },
                    View::Action,
                )),
            ),
            (
                &["unban"],
                Some((Request::Unban { node: None }, View::Action)),
            ),
            (&["listnodes"], Some((Request::Status, View::Listnodes))),
            (
                &["nodestatus"],
                Some((Request::Status, View::Nodestatus { node: None })),
            ),
            (
                &["nodestatus", "all"],
                Some((
                    Request::Status,
                    View::Nodestatus {
                        node: Some("all".into()),
                    },
                )),
            ),
            (&["pnn"], Some((Request::Status, View::Pnn))),
            (
                &["node", "add", "node4", "198.51.100.14"],
                Some((
                    Request::NodeAdd {
                        name: "node4".into(),
                        address: "198.51.100.14".parse().unwrap(),
                    },
                    View::Action,
                )),
            ),
            (
                &["node", "remove", "node4"],
                Some((
                    Request::NodeRemove {
                        name: "node4".into(),
                    },
                    View::Action,
                )),
            ),
            (
                &["node", "set-address", "node4", "198.51.100.14"],
                Some((
                    Request::NodeSetAddress {
                        name: "node4".into(),
                        address: "198.51.100.14".parse().unwrap(),
                    },
                    View::Action,
                )),
            ),
            (&["node"], None),
            (
                &["node", "--config", "/tmp/cluster.yaml", "--name", "node1"],
                None,
            ),
        ];
        for (args, expected) in table {
            assert_eq!(planned(args), expected, "{args:?}");
        }
        for bad in [
            &["moveip", "not-an-ip", "node2"][..],
            &["ban", "0"],
            &["ban", "-5"],
            &["ip", "some"],
            &["node", "--name", "node1", "add", "node4"],
            &["node", "set-address", "node4", "nowhere"],
            &["node", "add", "node4"],
            &["node", "--join", "add", "node4", "198.51.100.14"],
        ] {
            assert!(
                Cli::try_parse_from(std::iter::once("vipgate").chain(bad.iter().copied())).is_err(),
                "{bad:?} parsed"
            );
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        crate::Cli::command().debug_assert();
    }

    #[test]
    fn node_daemon_arguments() {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            command: ControlCommand,
        }
        let cli = Cli::try_parse_from([
            "vipgate",
            "node",
            "--config",
            "/tmp/c.yaml",
            "--name",
            "node2",
        ])
        .unwrap();
        let ControlCommand::Node(NodeArgs {
            command: None,
            daemon,
        }) = cli.command
        else {
            panic!("not the daemon: {:?}", cli.command);
        };
        assert_eq!(daemon.config, PathBuf::from("/tmp/c.yaml"));
        assert_eq!(daemon.name.as_deref(), Some("node2"));
        assert!(!daemon.join);
        let cli = Cli::try_parse_from(["vipgate", "node", "--join", "--name", "node4"]).unwrap();
        let ControlCommand::Node(NodeArgs { daemon, .. }) = cli.command else {
            panic!("not the daemon");
        };
        assert!(daemon.join);
    }

    #[test]
    fn printable_hides_control_characters() {
        assert_eq!(printable("node\u{1b}[31m1\n"), "node [31m1 ");
        assert_eq!(printable("nœud-1"), "nœud-1");
    }

    #[test]
    fn error_chains_read_like_anyhow() {
        let error = vipd::control::ControlError::Connect {
            path: "/run/vipgate/vipgate.sock".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOTSOCK),
        };
        assert_eq!(
            error_chain(&error),
            "cannot connect to /run/vipgate/vipgate.sock: Socket operation on non-socket (os error 88)"
        );
    }
}
