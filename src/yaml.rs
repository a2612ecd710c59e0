//! A small YAML document tree that keeps the position of every node, so that
//! config errors can name `file:line:column` for semantic problems too (a bad
//! cron spec, a target string), not only for syntax errors.
//!
//! Built from `yaml-rust2`'s marked event stream. Scalars keep their style so
//! that `"true"` (a string) and `true` (a boolean) can be told apart.

use std::fmt;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// 1-based line and column of a node in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

impl From<Marker> for Pos {
    fn from(m: Marker) -> Self {
        Pos {
            line: m.line().max(1),
            col: m.col() + 1,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Kind {
    /// A scalar with its text and whether it was quoted or a block scalar
    /// (then it is always a string).
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Key/value pairs in document order; keys are nodes for their position.
    Map(Vec<(Node, Node)>),
    /// An alias (`*anchor`); resolved when built.
    Null,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub pos: Pos,
    pub kind: Kind,
}

impl Node {
    /// A short word for error messages: "a string", "a list", ...
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            Kind::Scalar { text, plain } => {
                if !*plain {
                    "a string"
                } else if is_null(text) {
                    "null"
                } else if parse_bool(text).is_some() {
                    "a boolean"
                } else if text.parse::<i64>().is_ok() || text.parse::<f64>().is_ok() {
                    "a number"
                } else {
                    "a string"
                }
            }
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
            Kind::Null => "null",
        }
    }

    pub fn is_null(&self) -> bool {
        match &self.kind {
            Kind::Null => true,
            Kind::Scalar { text, plain } => *plain && is_null(text),
            _ => false,
        }
    }

    /// The scalar's text, whatever its implicit type (numbers and booleans
    /// are returned as written).
    pub fn scalar(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// A scalar meant as a string: quoted, or plain and not null/bool.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, plain } => {
                if *plain && (is_null(text) || parse_bool(text).is_some()) {
                    None
                } else {
                    Some(text)
                }
            }
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match &self.kind {
            Kind::Scalar { text, plain: true } => parse_bool(text),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match &self.kind {
            Kind::Scalar { text, plain: true } => text.replace('_', "").parse().ok(),
            _ => None,
        }
    }
}

fn is_null(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// The most nodes aliases may add to a document (each `*alias` copies
/// its anchor's subtree). Far beyond any jobs file sharing settings by
/// anchors; a "billion laughs" file (aliases of aliases, 9^n nodes) stops
/// here with an error instead of exhausting memory.
pub const MAX_ALIAS_NODES: usize = 100_000;

/// Nodes in a subtree (the node itself included).
fn count(n: &Node) -> usize {
    match &n.kind {
        Kind::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        Kind::Map(pairs) => {
            1 + pairs
                .iter()
                .map(|(k, v)| count(k) + count(v))
                .sum::<usize>()
        }
        _ => 1,
    }
}

struct Builder {
    /// Open containers: (node under construction, pending key for maps).
    stack: Vec<(Node, Option<Node>)>,
    /// anchored nodes with the size of their subtree
    anchors: std::collections::HashMap<usize, (Node, usize)>,
    /// nodes added by aliases so far (see [`MAX_ALIAS_NODES`])
    alias_nodes: usize,
    /// the alias that went over the budget
    over_budget: Option<Pos>,
    /// Anchor ids of the open containers, parallel to `stack`.
    anchor_ids: Vec<usize>,
    root: Option<Node>,
    docs: usize,
}

impl Builder {
    fn push_value(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some((parent, pending)) => match &mut parent.kind {
                Kind::Seq(items) => items.push(node),
                Kind::Map(pairs) => match pending.take() {
                    None => *pending = Some(node),
                    Some(key) => pairs.push((key, node)),
                },
                _ => unreachable!("only containers are pushed on the stack"),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from(mark);
        match ev {
            Event::DocumentStart => self.docs += 1,
            Event::Scalar(text, style, anchor, _tag) => {
                let node = Node {
                    pos,
                    kind: Kind::Scalar {
                        text,
                        plain: style == TScalarStyle::Plain,
                    },
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, (node.clone(), 1));
                }
                self.push_value(node);
            }
            Event::Alias(id) => {
                let kind = match self.anchors.get(&id) {
                    Some((n, size)) if self.alias_nodes + size <= MAX_ALIAS_NODES => {
                        self.alias_nodes += size;
                        n.kind.clone()
                    }
                    Some(_) => {
                        self.over_budget.get_or_insert(pos);
                        Kind::Null
                    }
                    None => Kind::Null,
                };
                self.push_value(Node { pos, kind });
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push((
                    Node {
                        pos,
                        kind: Kind::Seq(Vec::new()),
                    },
                    None,
                ));
                self.anchor_ids.push(anchor);
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push((
                    Node {
                        pos,
                        kind: Kind::Map(Vec::new()),
                    },
                    None,
                ));
                self.anchor_ids.push(anchor);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _)) = self.stack.pop() {
                    let anchor = self.anchor_ids.pop().unwrap_or(0);
                    if anchor > 0 {
                        self.anchors.insert(anchor, (node.clone(), count(&node)));
                    }
                    self.push_value(node);
                }
            }
            _ => {}
        }
    }
}

/// Parse one YAML document. An empty document gives `Ok(None)`.
pub fn parse(text: &str) -> Result<Option<Node>, SyntaxError> {
    let mut b = Builder {
        stack: Vec::new(),
        anchors: Default::default(),
        alias_nodes: 0,
        over_budget: None,
        anchor_ids: Vec::new(),
        root: None,
        docs: 0,
    };
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut b, true) {
        return Err(SyntaxError {
            pos: Pos::from(*e.marker()),
            message: e.info().to_string(),
        });
    }
    if let Some(pos) = b.over_budget {
        return Err(SyntaxError {
            pos,
            message: format!(
                "aliases expand to more than {MAX_ALIAS_NODES} nodes (aliases of aliases, as in a \"billion laughs\" file); refused"
            ),
        });
    }
    if b.docs > 1 {
        return Err(SyntaxError {
            pos: Pos { line: 1, col: 1 },
            message: "the jobs file must hold exactly one YAML document (found several `---`)"
                .into(),
        });
    }
    Ok(b.root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let root = parse("jobs:\n  web:\n    source: /a\n").unwrap().unwrap();
        let Kind::Map(pairs) = &root.kind else {
            panic!()
        };
        assert_eq!(pairs[0].0.pos, Pos { line: 1, col: 1 });
        let Kind::Map(jobs) = &pairs[0].1.kind else {
            panic!()
        };
        assert_eq!(jobs[0].0.pos, Pos { line: 2, col: 3 });
        let Kind::Map(job) = &jobs[0].1.kind else {
            panic!()
        };
        assert_eq!(job[0].1.pos, Pos { line: 3, col: 13 });
        assert_eq!(job[0].1.as_str(), Some("/a"));
    }

    #[test]
    fn quoted_true_is_a_string() {
        let root = parse("a: \"true\"\nb: true\n").unwrap().unwrap();
        let Kind::Map(pairs) = &root.kind else {
            panic!()
        };
        assert_eq!(pairs[0].1.as_str(), Some("true"));
        assert_eq!(pairs[0].1.as_bool(), None);
        assert_eq!(pairs[1].1.as_bool(), Some(true));
    }

    #[test]
    fn syntax_error_has_position() {
        let e = parse("jobs:\n  web: [a, b\n").unwrap_err();
        assert!(e.pos.line >= 2, "{e:?}");
    }

    #[test]
    fn alias_expansion_is_budgeted() {
        // ordinary sharing by anchors works
        let root = parse("a: &s {x: 1, y: 2}\nb: *s\n").unwrap().unwrap();
        let Kind::Map(pairs) = &root.kind else {
            panic!()
        };
        assert!(matches!(&pairs[1].1.kind, Kind::Map(m) if m.len() == 2));
        // a billion laughs: 9 levels of 9 aliases = 9^9 nodes
        let mut y = String::from("l0: &l0 [lol]\n");
        for i in 1..=9 {
            let refs = vec![format!("*l{}", i - 1); 9].join(", ");
            y.push_str(&format!("l{i}: &l{i} [{refs}]\n"));
        }
        let t = std::time::Instant::now();
        let e = parse(&y).unwrap_err();
        assert!(e.message.contains("aliases expand"), "{e:?}");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn empty_document_is_none() {
        assert!(parse("").unwrap().is_none());
        assert!(parse("# only a comment\n").unwrap().is_none());
    }
}
