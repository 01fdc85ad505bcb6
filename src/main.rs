//! The `vipgate` command: one binary, one subcommand per job. Library code lives in the member
//! crates and in this package's library (the lab); this file only parses arguments, sets up
//! logging and maps results to exit codes.

mod config_cmd;
mod ctl_cmd;
mod demo_cmd;
mod dns_cmd;
mod nfs_cmd;
mod node_cmd;
mod samba_cmd;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Default path of the cluster file.
pub const DEFAULT_CONFIG: &str = "/etc/vipgate/cluster.yaml";
/// Default path of the local node's control socket.
pub const DEFAULT_SOCKET: &str = "/run/vipgate/vipgate.sock";

/// NFS and SMB gateway cluster with Raft-coordinated virtual-IP failover.
#[derive(Debug, Parser)]
#[command(name = "vipgate", version, propagate_version = true)]
struct Cli {
    /// Control socket of the local node.
    #[arg(long, global = true, env = "VIPGATE_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// More log output (-d info, -dd debug, -ddd trace); RUST_LOG overrides.
    // Not `-v`: that is `ip -v`, as in ctdb, whose own debug level is `-d` too.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    debug: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check or print cluster files.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Run an isolated multi-node lab on this machine (needs root).
    Demo(demo_cmd::DemoArgs),
    #[command(flatten)]
    Control(ctl_cmd::ControlCommand),
    /// Show what each DNS name of the cluster answers now (asks the local node).
    Dns(dns_cmd::DnsArgs),
    /// Serve the cluster file's NFS exports from this machine until SIGTERM/SIGINT.
    Nfs(nfs_cmd::NfsArgs),
    /// Print the smb.conf this node runs smbd with, rendered from the cluster file.
    SambaConfig(samba_cmd::SambaConfigArgs),
    /// Manage this node's SMB users (passwords are per node: repeat on every node).
    SmbUser(samba_cmd::SmbUserArgs),
}

/// Global options every subcommand may use.
#[derive(Debug, Clone)]
pub struct Globals {
    pub socket: PathBuf,
    pub json: bool,
}

/// Logs to stderr: colours and terse layout on a terminal, plain text otherwise.
fn init_tracing(debug: u8) {
    let default_level = match debug {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let terminal = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(terminal)
        .with_target(!terminal)
        .init();
}

/// Restores the default SIGPIPE action, so that `vipgate … | head` ends quietly as other Unix
/// tools do instead of panicking on a closed stdout. (Rust ignores SIGPIPE by default; a future
/// long-running daemon command must keep it ignored so a closed socket is an error, not a kill.)
fn restore_default_sigpipe() {
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    restore_default_sigpipe();
    let cli = Cli::parse();
    init_tracing(cli.debug);
    let globals = Globals {
        socket: cli.socket,
        json: cli.json,
    };
    let result = match cli.command {
        Command::Config(command) => config_cmd::run(command, &globals),
        Command::Demo(args) => demo_cmd::run(args, &globals),
        Command::Control(command) => ctl_cmd::run(command, &globals),
        Command::Nfs(args) => nfs_cmd::run(args, &globals),
        Command::SambaConfig(args) => samba_cmd::run_config(args, &globals),
        Command::SmbUser(args) => samba_cmd::run_user(args, &globals),
        Command::Dns(args) => dns_cmd::run(&args, &globals),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("vipgate: {error:#}");
            ExitCode::FAILURE
        }
    }
}
