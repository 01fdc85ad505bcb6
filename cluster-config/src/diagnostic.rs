//! Problems found in a cluster file, each tied to a file, a position and a field path, and the
//! error type that carries all of them at once so an operator fixes the whole file in one pass.

use std::fmt;

/// One problem in a cluster file.
///
/// Displayed as `FILE:LINE:COL: field.path: message`, the form editors and terminals turn into
/// links. `line` and `column` are 1-based; both are 0 when the problem has no position in the
/// text (the file could not be read), and the position is then left out of the display. `path`
/// is empty when the problem concerns the file as a whole (a YAML syntax error, for instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name as given to [`crate::parse`] or the path given to [`crate::load`].
    pub file: String,
    /// 1-based line, or 0 when the problem has no position.
    pub line: usize,
    /// 1-based column (in characters), or 0 when the problem has no position.
    pub column: usize,
    /// Field path such as `nodes[2].cluster_address`; empty for the whole file.
    pub path: String,
    /// Lower-case sentence saying what is wrong, naming the offending value.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.file)?;
        if self.line > 0 {
            write!(f, "{}:{}:", self.line, self.column)?;
        }
        if !self.path.is_empty() {
            write!(f, " {}:", self.path)?;
        }
        write!(f, " {}", self.message)
    }
}

/// Why a cluster file was rejected: every problem found, in file order.
///
/// Never empty. Displayed as one diagnostic per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    diagnostics: Vec<Diagnostic>,
}

impl ConfigError {
    /// Builds an error from diagnostics, sorted by position so the display reads top to bottom.
    pub(crate) fn new(mut diagnostics: Vec<Diagnostic>) -> ConfigError {
        // A stable sort keeps problems found at one position in the order the checks ran.
        diagnostics.sort_by_key(|diagnostic| (diagnostic.line, diagnostic.column));
        ConfigError { diagnostics }
    }

    /// The problems found, in file order.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, diagnostic) in self.diagnostics.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagnostic(line: usize, column: usize, path: &str, message: &str) -> Diagnostic {
        Diagnostic {
            file: "cluster.yaml".to_owned(),
            line,
            column,
            path: path.to_owned(),
            message: message.to_owned(),
        }
    }

    #[test]
    fn display_forms() {
        assert_eq!(
            diagnostic(14, 14, "public_addresses[1].address", "bad").to_string(),
            "cluster.yaml:14:14: public_addresses[1].address: bad"
        );
        assert_eq!(
            diagnostic(3, 1, "", "bad").to_string(),
            "cluster.yaml:3:1: bad"
        );
        assert_eq!(
            diagnostic(0, 0, "", "cannot read").to_string(),
            "cluster.yaml: cannot read"
        );
    }

    #[test]
    fn error_sorts_by_position_and_prints_one_per_line() {
        let error = ConfigError::new(vec![
            diagnostic(9, 3, "b", "second"),
            diagnostic(2, 7, "a", "first"),
        ]);
        assert_eq!(error.diagnostics()[0].message, "first");
        assert_eq!(
            error.to_string(),
            "cluster.yaml:2:7: a: first\ncluster.yaml:9:3: b: second"
        );
    }
}
