//! The path index: a radix tree over path segments, with a compressed byte trie at each node
//! for the literal tails of prefix patterns.
//!
//! Each edge of the segment tree is one whole path segment: a literal (looked up by hash) or
//! a named segment (one per node, matching any non-empty segment). A pattern ends at a node
//! either exactly (`/users/:id`) or with a prefix tail (`/static/*`, `/api*`): the tail is the
//! text between the pattern's last `/` and its `*`, so it holds no `/` and is matched against
//! the start of the request's next segment by walking that node's tail trie byte by byte.
//!
//! A lookup walks the request path once per branch: every node is reached by one sequence of
//! edges, so a request visits each node at most once, and only nodes whose literal edges spell
//! the request's segments. Its cost depends on the path, not on how many routes there are.

use std::collections::HashMap;

/// A hash map keyed by short strings from the config: path segments and host names.
///
/// FNV-1a instead of the default SipHash: several lookups per request, on keys of a few bytes,
/// where SipHash's setup dominates. SipHash's flooding resistance is not needed here: the keys
/// come from the admin's config, and a client can only look them up, never add colliding ones.
pub(super) type ConfigMap<V> = HashMap<Box<str>, V, fnv::FnvBuildHasher>;

/// Identifies one set of equally shaped patterns (the same segments and the same end).
pub(super) type LeafId = u32;

/// How specific a path pattern is; greater is more specific.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Specificity {
    /// 2 exact, 1 named segments, 0 prefix.
    pub class: u8,
    /// Full segments before the end (or the `*`).
    pub depth: usize,
    /// Literal segments among them.
    pub literals: usize,
    /// Bytes of literal text, the prefix's tail included.
    pub literal_bytes: usize,
}

/// A parsed path pattern.
#[derive(Debug)]
pub(super) struct Pattern {
    segments: Vec<Segment>,
    /// `Some(tail)` for a prefix pattern: the text between the last `/` and the `*`.
    tail: Option<Box<str>>,
    /// The names of the named segments, in order.
    pub names: Vec<Box<str>>,
    /// How specific the pattern is.
    pub specificity: Specificity,
}

#[derive(Debug)]
enum Segment {
    Literal(Box<str>),
    Param,
}

impl Pattern {
    /// Parses a route path: `/exact`, `/users/:id`, `/static/*`, `/api*`, `/files/:user/*`.
    pub fn parse(path: &str) -> Result<Pattern, String> {
        // The snapshot was validated already; checking again keeps a hand-built snapshot (or a
        // validator bug) from producing a pattern this parser misreads.
        gateway_proto::schema::check_path(path)?;
        let rest = path
            .strip_prefix('/')
            .ok_or_else(|| "a path starts with \"/\"".to_owned())?;
        let (stem, prefix) = match rest.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (rest, false),
        };
        let mut parts: Vec<&str> = stem.split('/').collect();
        let tail = if prefix {
            // `split` yields at least one part, so there is always a tail (maybe empty).
            let tail = parts.pop().unwrap_or_default();
            if tail.contains(':') {
                return Err(format!("a named segment cannot end in \"*\": {path}"));
            }
            Some(Box::<str>::from(tail))
        } else {
            None
        };
        let mut segments = Vec::with_capacity(parts.len());
        let mut names = Vec::new();
        let (mut literals, mut literal_bytes) = (0, 0);
        for part in parts {
            match part.strip_prefix(':') {
                Some(name) => {
                    names.push(name.into());
                    segments.push(Segment::Param);
                }
                None => {
                    literals += 1;
                    literal_bytes += part.len();
                    segments.push(Segment::Literal(part.into()));
                }
            }
        }
        let class = match &tail {
            Some(tail) => {
                literal_bytes += tail.len();
                0
            }
            None if names.is_empty() => 2,
            None => 1,
        };
        let specificity = Specificity {
            class,
            depth: segments.len(),
            literals,
            literal_bytes,
        };
        Ok(Pattern {
            segments,
            tail,
            names,
            specificity,
        })
    }
}

/// A lookup's hits, kept on the stack: a path matches a handful of pattern sets (the exact
/// one, a parameter or two, a prefix), and this list was one of the four allocations of a
/// proxied request.
pub(super) type Hits = smallvec::SmallVec<[Hit; 8]>;

/// One pattern set matched by a lookup, with the values of its named segments.
#[derive(Debug)]
pub(super) struct Hit {
    /// Which pattern set.
    pub leaf: LeafId,
    /// Where its captured values are in the lookup's value list.
    pub start: usize,
    /// How many values.
    pub len: usize,
}

/// The segment tree. Node 0 is the root once anything is inserted.
#[derive(Debug, Default)]
pub(super) struct PathTree {
    nodes: Vec<Node>,
    leaves: u32,
}

#[derive(Debug, Default)]
struct Node {
    literals: ConfigMap<u32>,
    param: Option<u32>,
    /// Patterns that end exactly here (no `*`).
    end: Option<LeafId>,
    /// Prefix patterns whose segments end here, by tail.
    tails: TailTrie,
}

impl PathTree {
    /// Adds a pattern; returns its leaf, shared with every pattern of the same shape (same
    /// literal segments, named segments at the same places, same end). A new leaf gets the next
    /// id, so ids are dense.
    pub fn insert(&mut self, pattern: &Pattern) -> LeafId {
        if self.nodes.is_empty() {
            self.nodes.push(Node::default());
        }
        let mut node = 0usize;
        for segment in &pattern.segments {
            let next = self.nodes.len() as u32;
            let child = match segment {
                Segment::Literal(literal) => self.nodes[node]
                    .literals
                    .entry(literal.clone())
                    .or_insert(next),
                Segment::Param => self.nodes[node].param.get_or_insert(next),
            };
            let child = *child;
            if child == next {
                self.nodes.push(Node::default());
            }
            node = child as usize;
        }
        let leaves = &mut self.leaves;
        let mut new_leaf = || {
            let leaf = *leaves;
            *leaves += 1;
            leaf
        };
        match &pattern.tail {
            None => *self.nodes[node].end.get_or_insert_with(new_leaf),
            Some(tail) => self.nodes[node]
                .tails
                .insert(tail.as_bytes(), &mut new_leaf),
        }
    }

    /// The number of leaves.
    pub fn leaves(&self) -> usize {
        self.leaves as usize
    }

    /// Every leaf whose patterns match `path_rest` (the request path after its leading `/`),
    /// in no particular order. Captured segment values go to `values`, each hit naming its
    /// range there.
    pub fn find<'p>(&self, path_rest: &'p str, hits: &mut Hits, values: &mut Vec<&'p str>) {
        if self.nodes.is_empty() {
            return;
        }
        let mut stack = Vec::new();
        self.walk(0, Some(path_rest), &mut stack, hits, values);
    }

    /// Visits `node` with `rest` the path still to match: `Some` text after the segments
    /// consumed so far (maybe empty: a trailing `/` leaves one empty segment), or `None` when
    /// the path ended with the last consumed segment.
    fn walk<'p>(
        &self,
        node: usize,
        rest: Option<&'p str>,
        stack: &mut Vec<&'p str>,
        hits: &mut Hits,
        values: &mut Vec<&'p str>,
    ) {
        let Some(node) = self.nodes.get(node) else {
            return;
        };
        let Some(rest) = rest else {
            if let Some(leaf) = node.end {
                emit(hits, values, leaf, stack);
            }
            // `/static/*` also matches `/static`: people who write it mean "the static tree",
            // root included.
            if let Some(leaf) = node.tails.empty_tail() {
                emit(hits, values, leaf, stack);
            }
            return;
        };
        // A byte search: `split_once('/')`'s char searcher costs more than the walk's own work.
        let (segment, after) = match rest.bytes().position(|b| b == b'/') {
            Some(slash) => (&rest[..slash], Some(&rest[slash + 1..])),
            None => (rest, None),
        };
        node.tails
            .find(segment.as_bytes(), |leaf| emit(hits, values, leaf, stack));
        if let Some(&child) = node.literals.get(segment) {
            self.walk(child as usize, after, stack, hits, values);
        }
        if let Some(child) = node.param
            && !segment.is_empty()
        {
            stack.push(segment);
            self.walk(child as usize, after, stack, hits, values);
            stack.pop();
        }
    }
}

/// Records a hit on `leaf` with the values captured so far.
fn emit<'p>(hits: &mut Hits, values: &mut Vec<&'p str>, leaf: LeafId, stack: &[&'p str]) {
    hits.push(Hit {
        leaf,
        start: values.len(),
        len: stack.len(),
    });
    values.extend_from_slice(stack);
}

/// A compressed byte trie of prefix tails: every edge carries a non-empty label, siblings
/// differ in their first byte. Node 0 is the root (the empty tail) once anything is inserted.
#[derive(Debug, Default)]
struct TailTrie {
    nodes: Vec<TailNode>,
}

#[derive(Debug, Default)]
struct TailNode {
    label: Box<[u8]>,
    /// Sorted by the first byte of their labels.
    children: Vec<u32>,
    leaf: Option<LeafId>,
}

impl TailTrie {
    fn insert(&mut self, tail: &[u8], new_leaf: &mut impl FnMut() -> LeafId) -> LeafId {
        if self.nodes.is_empty() {
            self.nodes.push(TailNode::default());
        }
        let mut node = 0usize;
        let mut rest = tail;
        loop {
            let Some(&first) = rest.first() else {
                return *self.nodes[node].leaf.get_or_insert_with(new_leaf);
            };
            match self.child(node, first) {
                Err(position) => {
                    let leaf = new_leaf();
                    let child = self.nodes.len() as u32;
                    self.nodes.push(TailNode {
                        label: rest.into(),
                        children: Vec::new(),
                        leaf: Some(leaf),
                    });
                    self.nodes[node].children.insert(position, child);
                    return leaf;
                }
                Ok(position) => {
                    let child = self.nodes[node].children[position] as usize;
                    let label = &self.nodes[child].label;
                    let common = label.iter().zip(rest).take_while(|(a, b)| a == b).count();
                    if common < label.len() {
                        // Split the edge: a new node takes the common part, the old child
                        // keeps the rest of its label below it.
                        let middle = self.nodes.len() as u32;
                        let (head, below) = label.split_at(common);
                        let (head, below) = (Box::from(head), Box::from(below));
                        self.nodes[child].label = below;
                        self.nodes.push(TailNode {
                            label: head,
                            children: vec![child as u32],
                            leaf: None,
                        });
                        self.nodes[node].children[position] = middle;
                        node = middle as usize;
                    } else {
                        node = child;
                    }
                    rest = &rest[common..];
                }
            }
        }
    }

    /// The child of `node` whose label starts with `byte`: `Ok(position)` in its children, or
    /// `Err(position)` where it would go.
    fn child(&self, node: usize, byte: u8) -> Result<usize, usize> {
        self.nodes[node].children.binary_search_by_key(&byte, |&c| {
            self.nodes[c as usize].label.first().copied().unwrap_or(0)
        })
    }

    /// The leaf of the empty tail (`/static/*`, `/*`), if any.
    fn empty_tail(&self) -> Option<LeafId> {
        self.nodes.first().and_then(|root| root.leaf)
    }

    /// Calls `emit` with the leaf of every tail that `segment` starts with, shortest first.
    fn find(&self, segment: &[u8], mut emit: impl FnMut(LeafId)) {
        let Some(root) = self.nodes.first() else {
            return;
        };
        if let Some(leaf) = root.leaf {
            emit(leaf);
        }
        let mut node = 0usize;
        let mut rest = segment;
        while let Some(&first) = rest.first() {
            let Ok(position) = self.child(node, first) else {
                return;
            };
            let child = self.nodes[node].children[position] as usize;
            let label = &self.nodes[child].label;
            let Some(after) = rest.strip_prefix(&**label) else {
                return;
            };
            if let Some(leaf) = self.nodes[child].leaf {
                emit(leaf);
            }
            rest = after;
            node = child;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_trie_finds_every_tail_that_starts_a_segment() {
        let mut trie = TailTrie::default();
        let mut next = 0;
        let mut new_leaf = || {
            next += 1;
            next - 1
        };
        // Inserted in an order that forces edge splits.
        let tails = ["apiary", "api", "ap", "b", "", "apix"];
        let leaves: Vec<LeafId> = tails
            .iter()
            .map(|t| trie.insert(t.as_bytes(), &mut new_leaf))
            .collect();
        assert_eq!(
            trie.insert(b"api", &mut new_leaf),
            leaves[1],
            "same tail, same leaf"
        );
        let found = |segment: &str| {
            let mut out = Vec::new();
            trie.find(segment.as_bytes(), |leaf| out.push(tails[leaf as usize]));
            out
        };
        assert_eq!(found("apiary"), ["", "ap", "api", "apiary"]);
        assert_eq!(found("apia"), ["", "ap", "api"]);
        assert_eq!(found("apixy"), ["", "ap", "api", "apix"]);
        assert_eq!(found("bb"), ["", "b"]);
        assert_eq!(found("a"), [""]);
        assert_eq!(found(""), [""]);
        assert_eq!(trie.empty_tail(), Some(leaves[4]));
    }

    #[test]
    fn fnv1a_matches_its_reference_vectors() {
        use std::hash::Hasher as _;
        let hash = |bytes: &[u8]| {
            let mut hasher = fnv::FnvHasher::default();
            hasher.write(bytes);
            hasher.finish()
        };
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn specificity_orders_patterns() {
        let spec = |path| Pattern::parse(path).unwrap().specificity;
        let ordered = [
            "/a/b/c",
            "/a/:x/c",
            "/a/:x/:y",
            "/static/img/*",
            "/static/im*",
            "/static/*",
            "/static*",
            "/*",
        ];
        for pair in ordered.windows(2) {
            assert!(
                spec(pair[0]) > spec(pair[1]),
                "{} should beat {}",
                pair[0],
                pair[1]
            );
        }
    }
}
