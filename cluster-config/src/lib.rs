//! The vipgate cluster file: typed schema, strict parsing, semantic validation, and the validated
//! runtime model every other crate reads.
//!
//! One YAML file describes a whole cluster (nodes, virtual IPs, the shared volume, NFS exports,
//! SMB shares, DNS names, timings). [`load`] and [`parse`] run it through three stages, in order:
//!
//! 1. **Syntax and types** — `yaml_serde` deserializes into private serde types that refuse
//!    unknown fields and unknown enum values. This stage stops at the first error, located by
//!    `yaml_serde` itself.
//! 2. **Positions** — the same text is indexed with `yaml-rust2`'s marked event parser, so every
//!    field path (`nodes[2].cluster_address`) has a line and column.
//! 3. **Semantics** — every rule is checked and every problem collected, each as a
//!    [`Diagnostic`] `FILE:LINE:COL: field.path: message`; if there is none, the result is
//!    converted into [`ClusterConfig`] with defaults applied and references resolved.
//!
//! Callers get either a [`ClusterConfig`] that needs no further checking or a [`ConfigError`]
//! listing everything wrong. This crate does no I/O beyond reading the file (and, on request,
//! the secret file); it knows nothing about sockets, Raft or NFS.
//!
//! ```
//! let text = "
//! cluster: {name: gw1, secret: 0123456789abcdef, data_dir: /var/lib/vipgate}
//! nodes: [{name: node1, cluster_address: 198.51.100.11, public_interfaces: [eth1]}]
//! public_addresses: [{address: 192.0.2.101/24}]
//! volume: {path: /mnt/volume}
//! ";
//! let config = cluster_config::parse(text, "cluster.yaml").unwrap();
//! assert_eq!(config.summary(), "1 node, 1 public address, 0 exports, 0 shares");
//! ```

mod diagnostic;
mod duration;
mod model;
mod positions;
mod rules;
mod schema;
mod validate;

use std::fs::File;
use std::io::Read;
use std::path::Path;

pub use diagnostic::{ConfigError, Diagnostic};
pub use model::{
    Access, ClientMatch, Cluster, ClusterConfig, DEFAULT_PORT, Dns, DnsName, Export, HandleScheme,
    MAX_HEALTH_TIMEOUT, MAX_NODES, MIN_SECRET_LEN, Nfs, NfsVersion, Node, NodeId, PublicAddress,
    SecretSource, Share, Smb, Squash, Timings, Volume,
};

use positions::{Position, PositionIndex};
use schema::RawConfig;

/// A cluster file larger than this is refused unread; real ones are a few kilobytes.
const MAX_FILE_LEN: u64 = 1 << 20;

/// Reads and validates the cluster file at `path`.
///
/// A file that cannot be read is a [`ConfigError`] too: its one diagnostic has the path as
/// `file`, no position (line and column 0) and the I/O error in its message.
pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
    let file_name = path.display().to_string();
    let source = read_source(path).map_err(|message| {
        ConfigError::new(vec![Diagnostic {
            file: file_name.clone(),
            line: 0,
            column: 0,
            path: String::new(),
            message,
        }])
    })?;
    parse(&source, &file_name)
}

fn read_source(path: &Path) -> Result<String, String> {
    let file = File::open(path).map_err(|error| format!("cannot read the file: {error}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| format!("cannot read the file: {error}"))?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(format!(
            "the file is larger than {} KiB; this is not a cluster file",
            MAX_FILE_LEN / 1024
        ));
    }
    String::from_utf8(bytes).map_err(|error| {
        format!(
            "the file is not UTF-8 text (invalid byte at offset {})",
            error.utf8_error().valid_up_to()
        )
    })
}

/// Validates cluster file text; `file_name` is only used to label diagnostics.
pub fn parse(source: &str, file_name: &str) -> Result<ClusterConfig, ConfigError> {
    let positions = PositionIndex::build(source);
    let raw: RawConfig = match yaml_serde::from_str(source) {
        Ok(raw) => raw,
        Err(error) => {
            let diagnostic = syntax_diagnostic(&error, &positions, file_name);
            return Err(ConfigError::new(vec![diagnostic]));
        }
    };
    validate::validate(&raw, &positions, file_name).map_err(ConfigError::new)
}

/// Turns a `yaml_serde` error into a diagnostic with the same shape as the semantic ones: the
/// field path moved out of the message and the trailing "at line L column C" dropped.
fn syntax_diagnostic(
    error: &yaml_serde::Error,
    positions: &PositionIndex,
    file: &str,
) -> Diagnostic {
    if positions.document_is_empty() {
        return Diagnostic {
            file: file.to_owned(),
            line: 1,
            column: 1,
            path: String::new(),
            message: "the file is empty; it needs at least the cluster, nodes, \
                      public_addresses and volume sections"
                .to_owned(),
        };
    }
    let text = strip_locations(&error.to_string());
    let (mut path, message) = split_path(&text);
    // yaml_serde reports a duplicate key without a position; the index knows where it is.
    let mut position = error
        .location()
        .map(|location| Position {
            line: location.line(),
            column: location.column(),
        })
        .filter(|position| *position != Position::START);
    if message.starts_with("duplicate field") {
        if let Some((duplicate_path, duplicate_position)) = positions.first_duplicate_key() {
            path = duplicate_path.clone();
            position = Some(*duplicate_position);
        }
    }
    let position = position.unwrap_or_else(|| positions.locate(&path));
    Diagnostic {
        file: file.to_owned(),
        line: position.line,
        column: position.column,
        path,
        message,
    }
}

/// Removes every " at line L column C" and " at position N" that yaml_serde appends.
fn strip_locations(text: &str) -> String {
    let mut result = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(" at ") {
        result.push_str(&rest[..start]);
        let after = &rest[start + " at ".len()..];
        match location_length(after) {
            Some(length) => rest = &after[length..],
            None => {
                result.push_str(" at ");
                rest = after;
            }
        }
    }
    result.push_str(rest);
    result
}

/// The length of a leading "line L column C" or "position N" in `text`.
fn location_length(text: &str) -> Option<usize> {
    let digits = |text: &str| text.bytes().take_while(u8::is_ascii_digit).count();
    if let Some(after_line) = text.strip_prefix("line ") {
        let line_digits = digits(after_line);
        let after_digits = &after_line[line_digits..];
        let after_column = after_digits.strip_prefix(" column ")?;
        let column_digits = digits(after_column);
        if line_digits == 0 || column_digits == 0 {
            return None;
        }
        return Some(text.len() - after_column.len() + column_digits);
    }
    let after_position = text.strip_prefix("position ")?;
    let position_digits = digits(after_position);
    (position_digits > 0).then(|| text.len() - after_position.len() + position_digits)
}

/// Splits yaml_serde's "field.path: message" into its parts; messages without a path (syntax
/// errors, problems at the root) come back with an empty path.
fn split_path(text: &str) -> (String, String) {
    if let Some((path, message)) = text.split_once(": ") {
        let looks_like_path = !path.is_empty()
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.[]?".contains(c));
        if looks_like_path {
            return (path.to_owned(), message.to_owned());
        }
    }
    (String::new(), text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_stripped() {
        assert_eq!(
            strip_locations("nodes[0]: unknown field `foo`, expected `name` at line 5 column 5"),
            "nodes[0]: unknown field `foo`, expected `name`"
        );
        assert_eq!(
            strip_locations(
                "did not find expected key at line 3 column 3, while parsing a block mapping at line 1 column 1"
            ),
            "did not find expected key, while parsing a block mapping"
        );
        assert_eq!(strip_locations("bad at position 12"), "bad");
        assert_eq!(strip_locations("look at line x"), "look at line x");
        assert_eq!(strip_locations("at line 3 column 4"), "at line 3 column 4");
    }

    #[test]
    fn paths_are_split_off() {
        assert_eq!(
            split_path("nodes[0].port: invalid type: string \"x\", expected u16"),
            (
                "nodes[0].port".to_owned(),
                "invalid type: string \"x\", expected u16".to_owned()
            )
        );
        assert_eq!(
            split_path("invalid type: map, expected a sequence"),
            (
                String::new(),
                "invalid type: map, expected a sequence".to_owned()
            )
        );
    }
}
