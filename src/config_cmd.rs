//! `vipgate config`: check a cluster file, or print the commented example.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::{DEFAULT_CONFIG, Globals};

/// The commented example cluster file, shipped as `deploy/examples/cluster.yaml`.
const EXAMPLE: &str = include_str!("../deploy/examples/cluster.yaml");

/// Exit code of `config check` for an invalid file, as `ctdb` and most checkers use for "bad input".
const EXIT_INVALID: u8 = 2;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Parse and validate a cluster file; print a summary, or every problem with its line.
    Check {
        /// The cluster file.
        #[arg(env = "VIPGATE_CONFIG", default_value = DEFAULT_CONFIG)]
        file: PathBuf,
    },
    /// Print a commented example cluster file that `config check` accepts.
    Example,
}

pub fn run(command: ConfigCommand, globals: &Globals) -> anyhow::Result<ExitCode> {
    match command {
        ConfigCommand::Example => {
            print!("{EXAMPLE}");
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::Check { file } => match cluster_config::load(&file) {
            Ok(config) => {
                if globals.json {
                    let report = serde_json::json!({
                        "file": file,
                        "ok": true,
                        "summary": config.summary(),
                        "errors": [],
                    });
                    println!("{report}");
                } else {
                    println!("ok: {}", config.summary());
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(error) => {
                if globals.json {
                    let errors: Vec<_> = error
                        .diagnostics()
                        .iter()
                        .map(|diagnostic| {
                            serde_json::json!({
                                "file": diagnostic.file,
                                "line": diagnostic.line,
                                "column": diagnostic.column,
                                "path": diagnostic.path,
                                "message": diagnostic.message,
                            })
                        })
                        .collect();
                    let report = serde_json::json!({ "file": file, "ok": false, "errors": errors });
                    println!("{report}");
                } else {
                    eprintln!("{error}");
                }
                Ok(ExitCode::from(EXIT_INVALID))
            }
        },
    }
}
