//! Where each field of a cluster file sits in the text.
//!
//! `yaml_serde` locates syntax and type errors but keeps no spans on the values it produces, so
//! semantic checks could not say where a bad value is written. This module parses the same text
//! once more with `yaml-rust2`'s marked event parser and records, for every field path
//! (`nodes[2].cluster_address`), the line and column where its value starts. A check that reports
//! a field absent from the file (a defaulted one) is placed at its nearest recorded ancestor.

use std::collections::{HashMap, HashSet};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A 1-based line and column, as editors show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) line: usize,
    pub(crate) column: usize,
}

impl Position {
    /// The start of the file, used when nothing better is known.
    pub(crate) const START: Position = Position { line: 1, column: 1 };

    fn from_marker(marker: Marker) -> Position {
        // yaml-rust2 counts lines from 1 but columns from 0.
        Position {
            line: marker.line().max(1),
            column: marker.col() + 1,
        }
    }
}

/// Field path → position of its value, plus the duplicate keys met on the way.
#[derive(Debug, Default)]
pub(crate) struct PositionIndex {
    values: HashMap<String, Position>,
    duplicate_keys: Vec<(String, Position)>,
    document_is_empty: bool,
}

impl PositionIndex {
    /// Indexes `source`. Text that does not parse yields a partial index (everything up to the
    /// error), which is all the locating a syntax error needs.
    pub(crate) fn build(source: &str) -> PositionIndex {
        let mut builder = IndexBuilder::default();
        // A parse error is reported by yaml_serde with its own position; the partial index
        // collected up to it is still useful, so the error itself is dropped here.
        let _ = Parser::new_from_str(source).load(&mut builder, false);
        builder.index.document_is_empty = !builder.root_seen || builder.root_is_null;
        builder.index
    }

    /// The position of `path`'s value, or of its nearest ancestor that is written in the file.
    pub(crate) fn locate(&self, path: &str) -> Position {
        let mut path = path;
        loop {
            if let Some(position) = self.values.get(path) {
                return *position;
            }
            match parent_path(path) {
                Some(parent) => path = parent,
                None => return Position::START,
            }
        }
    }

    /// The first key written twice in one mapping: the path it would have and where the second
    /// occurrence is.
    pub(crate) fn first_duplicate_key(&self) -> Option<&(String, Position)> {
        self.duplicate_keys.first()
    }

    /// Whether the document holds no value at all (an empty file or only comments).
    pub(crate) fn document_is_empty(&self) -> bool {
        self.document_is_empty
    }
}

/// `nodes[2].name` → `nodes[2]` → `nodes` → `` → none.
fn parent_path(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = if path.ends_with(']') {
        path.rfind('[')
    } else {
        path.rfind('.')
    };
    Some(cut.map_or("", |cut| &path[..cut]))
}

fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

#[derive(Debug)]
enum Frame {
    /// A mapping; `path` is `None` inside complex keys, which are never indexed.
    Mapping {
        path: Option<String>,
        awaiting: Awaiting,
        keys_seen: HashSet<String>,
        first_key_pending: bool,
    },
    Sequence {
        path: Option<String>,
        next_index: usize,
    },
}

#[derive(Debug)]
enum Awaiting {
    Key,
    /// The value of this key (`None` when the key is not a plain string), and where the key is.
    Value(Option<String>, Position),
}

#[derive(Debug, Default)]
struct IndexBuilder {
    stack: Vec<Frame>,
    index: PositionIndex,
    root_seen: bool,
    root_is_null: bool,
}

impl IndexBuilder {
    /// Handles a node event (scalar, alias, start of a collection): records it as a key or as a
    /// value and returns the path the node has, if it is an indexed value. `is_empty` marks an
    /// empty plain scalar (`nodes:` with nothing after it), whose mark lies on the next token.
    fn place_node(
        &mut self,
        scalar_key: Option<&str>,
        is_empty: bool,
        position: Position,
    ) -> NodeRole {
        let Some(top) = self.stack.last_mut() else {
            self.root_seen = true;
            self.index.values.entry(String::new()).or_insert(position);
            return NodeRole::Value(Some(String::new()));
        };
        match top {
            Frame::Mapping {
                path,
                awaiting: awaiting @ Awaiting::Key,
                keys_seen,
                first_key_pending,
            } => {
                let key = scalar_key.map(str::to_owned);
                if let (Some(mapping_path), Some(key)) = (path.as_deref(), key.as_deref()) {
                    if *first_key_pending {
                        // A block mapping's start mark lies after its first key; the key itself
                        // is where a reader looks for the mapping.
                        self.index.values.insert(mapping_path.to_owned(), position);
                    }
                    if !keys_seen.insert(key.to_owned()) {
                        let duplicate = child_path(mapping_path, key);
                        self.index.duplicate_keys.push((duplicate, position));
                    }
                }
                *first_key_pending = false;
                *awaiting = Awaiting::Value(key, position);
                NodeRole::Key
            }
            Frame::Mapping { path, awaiting, .. } => {
                let (value_path, position) = match (path.as_deref(), &*awaiting) {
                    (Some(parent), Awaiting::Value(Some(key), key_position)) => {
                        // An empty value is best shown at its key.
                        let position = if is_empty { *key_position } else { position };
                        (Some(child_path(parent, key)), position)
                    }
                    _ => (None, position),
                };
                *awaiting = Awaiting::Key;
                self.record(value_path, position)
            }
            Frame::Sequence { path, next_index } => {
                let value_path = path
                    .as_deref()
                    .map(|parent| format!("{parent}[{next_index}]"));
                *next_index += 1;
                self.record(value_path, position)
            }
        }
    }

    fn record(&mut self, path: Option<String>, position: Position) -> NodeRole {
        if let Some(path) = &path {
            self.index.values.entry(path.clone()).or_insert(position);
        }
        NodeRole::Value(path)
    }
}

enum NodeRole {
    Key,
    Value(Option<String>),
}

impl NodeRole {
    /// The path children of a collection started here get: none for keys and unindexed values.
    fn into_collection_path(self) -> Option<String> {
        match self {
            NodeRole::Key => None,
            NodeRole::Value(path) => path,
        }
    }
}

impl MarkedEventReceiver for IndexBuilder {
    fn on_event(&mut self, event: Event, marker: Marker) {
        let position = Position::from_marker(marker);
        match event {
            Event::Scalar(value, style, _, _) => {
                let is_root = self.stack.is_empty();
                let is_empty = value.is_empty() && style == TScalarStyle::Plain;
                self.place_node(Some(&value), is_empty, position);
                if is_root {
                    self.root_is_null = style == TScalarStyle::Plain
                        && matches!(value.as_str(), "" | "~" | "null" | "Null" | "NULL");
                }
            }
            Event::Alias(_) => {
                self.place_node(None, false, position);
            }
            Event::MappingStart(_, _) => {
                let path = self
                    .place_node(None, false, position)
                    .into_collection_path();
                self.stack.push(Frame::Mapping {
                    path,
                    awaiting: Awaiting::Key,
                    keys_seen: HashSet::new(),
                    first_key_pending: true,
                });
            }
            Event::SequenceStart(_, _) => {
                let path = self
                    .place_node(None, false, position)
                    .into_collection_path();
                self.stack.push(Frame::Sequence {
                    path,
                    next_index: 0,
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize, column: usize) -> Position {
        Position { line, column }
    }

    const TEXT: &str = "\
cluster:
  name: gw1
nodes:
  - name: node1
    public_interfaces: [eth1, 'eth2']
  -   name: node2
public_addresses: []
volume: {path: /mnt/volume}
";

    #[test]
    fn values_are_located_where_they_start() {
        let index = PositionIndex::build(TEXT);
        assert_eq!(index.locate("cluster"), at(2, 3));
        assert_eq!(index.locate("cluster.name"), at(2, 9));
        assert_eq!(index.locate("nodes"), at(4, 3));
        assert_eq!(index.locate("nodes[0]"), at(4, 5));
        assert_eq!(index.locate("nodes[0].name"), at(4, 11));
        assert_eq!(index.locate("nodes[0].public_interfaces"), at(5, 24));
        assert_eq!(index.locate("nodes[0].public_interfaces[0]"), at(5, 25));
        assert_eq!(index.locate("nodes[0].public_interfaces[1]"), at(5, 31));
        assert_eq!(index.locate("nodes[1].name"), at(6, 13));
        assert_eq!(index.locate("public_addresses"), at(7, 19));
        assert_eq!(index.locate("volume.path"), at(8, 16));
        assert!(!index.document_is_empty());
    }

    #[test]
    fn missing_paths_fall_back_to_the_nearest_ancestor() {
        let index = PositionIndex::build(TEXT);
        assert_eq!(index.locate("nodes[1].cluster_address"), at(6, 7));
        assert_eq!(index.locate("nodes[7].name"), at(4, 3));
        assert_eq!(index.locate("nfs.exports[0].path"), at(1, 1));
    }

    #[test]
    fn empty_values_are_located_at_their_key() {
        let index = PositionIndex::build("nodes:\n  # none yet\nvolume:\n  path:\n");
        assert_eq!(index.locate("nodes"), at(1, 1));
        assert_eq!(index.locate("volume.path"), at(4, 3));
    }

    #[test]
    fn duplicate_keys_are_recorded_at_the_second_occurrence() {
        let index = PositionIndex::build("cluster:\n  name: a\n  name: b\n");
        assert_eq!(
            index.first_duplicate_key(),
            Some(&("cluster.name".to_owned(), at(3, 3)))
        );
    }

    #[test]
    fn empty_documents_are_recognised() {
        for text in ["", "# only a comment\n", "~\n", "---\n...\n"] {
            assert!(PositionIndex::build(text).document_is_empty(), "{text:?}");
        }
        assert!(!PositionIndex::build("'~'").document_is_empty());
    }

    #[test]
    fn broken_text_yields_a_partial_index() {
        let index = PositionIndex::build("cluster:\n  name: gw1\nnodes: [\n");
        assert_eq!(index.locate("cluster.name"), at(2, 9));
    }

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        let text = "[".repeat(200_000);
        let index = PositionIndex::build(&text);
        assert_eq!(index.locate("a.b"), at(1, 1));
    }
}
