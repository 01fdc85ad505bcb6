//! `vipgate samba-config` prints (or writes) the `smb.conf` a node runs smbd with, rendered from
//! the cluster file; `vipgate smb-user add|delete|list` manages the SMB users of this node's own
//! passdb through Samba's `smbpasswd` and `pdbedit`, with the same rendered configuration, so
//! the users land where the node's smbd looks for them. Passwords are per node: run the same
//! command on every node.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use cluster_config::ClusterConfig;
use gateway::smb::supervise::{create_directories, find_program, write_if_changed};
use gateway::smb::users::{check_user_name, password_from, unix_account, update_username_map};
use gateway::smb::{SambaPaths, render};

use crate::{DEFAULT_CONFIG, Globals};

/// Where the cluster file and the node's local data are.
#[derive(Debug, Args)]
pub struct SambaLocation {
    /// The cluster file.
    #[arg(long, env = "VIPGATE_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// This node's local data directory; overrides the cluster file's `data_dir`. Samba's
    /// state lives in its `samba` subdirectory.
    #[arg(long, env = "VIPGATE_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SambaConfigArgs {
    #[command(flatten)]
    location: SambaLocation,
    /// Write the configuration to this file (atomically) instead of standard output, and
    /// create the state directories it names, so that smbd can run with it.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SmbUserArgs {
    #[command(flatten)]
    location: SambaLocation,
    #[command(subcommand)]
    command: SmbUserCommand,
}

#[derive(Debug, Subcommand)]
pub enum SmbUserCommand {
    /// Add an SMB user to this node, or change its password; reads the password from the first
    /// line of standard input. Repeat on every node.
    Add {
        /// The name SMB clients log in with.
        name: String,
        /// The unix account the user acts as (default: the account of the same name). It must
        /// exist on this node.
        #[arg(long)]
        unix_user: Option<String>,
    },
    /// Remove an SMB user from this node.
    Delete {
        /// The name SMB clients log in with.
        name: String,
    },
    /// List the SMB users of this node and the unix accounts they act as.
    List,
}

/// The cluster file, this node's Samba directory and the rendered configuration.
struct Rendered {
    paths: SambaPaths,
    text: String,
}

fn rendered(location: &SambaLocation) -> anyhow::Result<Rendered> {
    let config: ClusterConfig = cluster_config::load(&location.config)
        .with_context(|| format!("cannot use the cluster file {}", location.config.display()))?;
    let data_dir = location
        .data_dir
        .clone()
        .unwrap_or_else(|| config.cluster.data_dir.clone());
    let paths = SambaPaths::under(&data_dir);
    let text = render(&config, &paths)
        .with_context(|| format!("cannot render smb.conf from {}", location.config.display()))?;
    Ok(Rendered { paths, text })
}

pub fn run_config(args: SambaConfigArgs, _globals: &Globals) -> anyhow::Result<ExitCode> {
    let Rendered { text, paths } = rendered(&args.location)?;
    match args.output {
        Some(path) => {
            create_directories(&paths)?;
            write_if_changed(&path, &text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        None => {
            std::io::stdout()
                .write_all(text.as_bytes())
                .context("cannot write to standard output")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_user(args: SmbUserArgs, _globals: &Globals) -> anyhow::Result<ExitCode> {
    let Rendered { paths, text } = rendered(&args.location)?;
    // The tools read the same file the node's smbd runs with: same passdb, same private dir.
    create_directories(&paths)?;
    let config = paths.config();
    write_if_changed(&config, &text)
        .with_context(|| format!("cannot write {}", config.display()))?;
    let map_path = paths.username_map();
    let map = std::fs::read_to_string(&map_path)
        .with_context(|| format!("cannot read {}", map_path.display()))?;
    match args.command {
        SmbUserCommand::Add { name, unix_user } => {
            check_user_name(&name)?;
            let unix = unix_user.unwrap_or_else(|| name.clone());
            check_user_name(&unix)?;
            match nix::unistd::User::from_name(&unix) {
                Ok(Some(_)) => {}
                Ok(None) => bail!(
                    "there is no unix account {unix:?} on this node; smbd needs one for every SMB \
                     user (create it on every node, or act as an existing one with --unix-user)"
                ),
                Err(error) => bail!("cannot look up the unix account {unix:?}: {error}"),
            }
            let mut input = String::new();
            std::io::stdin()
                .take(4096)
                .read_to_string(&mut input)
                .context("cannot read the password from standard input")?;
            let password = password_from(&input)?;
            smbpasswd(
                &config,
                &["-s", "-a", &unix],
                &format!("{password}\n{password}\n"),
            )?;
            write_map(&map_path, &update_username_map(&map, &name, Some(&unix)))?;
            let acting = if unix == name {
                String::new()
            } else {
                format!(", acting as unix account {unix}")
            };
            eprintln!("SMB user {name} is set on this node{acting}; set it on every node");
        }
        SmbUserCommand::Delete { name } => {
            check_user_name(&name)?;
            let unix = unix_account(&map, &name).to_owned();
            smbpasswd(&config, &["-x", &unix], "")?;
            write_map(&map_path, &update_username_map(&map, &name, None))?;
        }
        SmbUserCommand::List => {
            let output = std::process::Command::new(find_program("pdbedit")?)
                .arg(format!("--configfile={}", config.display()))
                .arg("--list")
                .output()
                .context("cannot run pdbedit")?;
            if !output.status.success() {
                bail!(
                    "pdbedit failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                let Some((unix, _)) = line.split_once(':') else {
                    continue;
                };
                let names: Vec<&str> = map
                    .lines()
                    .filter_map(|line| line.split_once('='))
                    .filter(|(left, _)| left.trim() == unix)
                    .map(|(_, right)| right.trim())
                    .collect();
                if names.is_empty() {
                    println!("{unix}");
                } else {
                    println!("{} (unix account {unix})", names.join(" "));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_map(path: &Path, text: &str) -> anyhow::Result<()> {
    write_if_changed(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Runs `smbpasswd -c CONFIG ARGS` with `input` on its standard input.
fn smbpasswd(config: &Path, args: &[&str], input: &str) -> anyhow::Result<()> {
    let program = find_program("smbpasswd")?;
    let mut child = std::process::Command::new(&program)
        .arg("-c")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", program.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .context("cannot hand smbpasswd the password")?;
    }
    let output = child.wait_with_output().context("smbpasswd failed")?;
    if !output.status.success() {
        let mut message = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if message.is_empty() {
            message = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        }
        bail!(
            "smbpasswd {} failed ({}): {message}",
            args.join(" "),
            output.status
        );
    }
    Ok(())
}
