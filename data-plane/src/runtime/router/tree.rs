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
//!
//! The tree is persistent: nodes, tail tries and leaves sit behind `Arc`s, and a change copies
//! only what lies on the changed pattern's way from the root (each node's literal edges are a
//! [`PMap`], so a wide node costs the same as a narrow one) and shares the rest with the
//! version it was cloned from.

use std::sync::Arc;

use super::pmap::PMap;

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
pub(super) type Hits<'t, L> = smallvec::SmallVec<[Hit<'t, L>; 8]>;

/// One pattern set matched by a lookup, with the values of its named segments.
#[derive(Debug)]
pub(super) struct Hit<'t, L> {
    /// The pattern set's leaf.
    pub leaf: &'t L,
    /// Where its captured values are in the lookup's value list.
    pub start: usize,
    /// How many values.
    pub len: usize,
}

/// The segment tree, with leaves of type `L`: one per set of equally shaped patterns (the same
/// literal segments, named segments at the same places, the same end). `Clone` shares every
/// node with the original.
#[derive(Debug)]
pub(super) struct PathTree<L> {
    root: Option<Arc<Node<L>>>,
}

impl<L> Default for PathTree<L> {
    fn default() -> Self {
        PathTree { root: None }
    }
}

impl<L> Clone for PathTree<L> {
    fn clone(&self) -> Self {
        PathTree {
            root: self.root.clone(),
        }
    }
}

#[derive(Debug)]
struct Node<L> {
    literals: PMap<Arc<Node<L>>>,
    param: Option<Arc<Node<L>>>,
    /// Patterns that end exactly here (no `*`).
    end: Option<Arc<L>>,
    /// Prefix patterns whose segments end here, by tail; `None` while there are none.
    tails: Option<Arc<TailNode<L>>>,
}

impl<L> Default for Node<L> {
    fn default() -> Self {
        Node {
            literals: PMap::default(),
            param: None,
            end: None,
            tails: None,
        }
    }
}

// By hand: a derive would ask `L: Clone`, where only `Arc<L>`s are copied.
impl<L> Clone for Node<L> {
    fn clone(&self) -> Self {
        Node {
            literals: self.literals.clone(),
            param: self.param.clone(),
            end: self.end.clone(),
            tails: self.tails.clone(),
        }
    }
}

impl<L> Node<L> {
    fn is_empty(&self) -> bool {
        self.literals.is_empty()
            && self.param.is_none()
            && self.end.is_none()
            && self.tails.is_none()
    }
}

impl<L: Clone> PathTree<L> {
    /// The leaf of `pattern`'s shape, made by `make` if there is none yet, to change in place:
    /// every node on its way that another version shares is copied first. `None` only if the
    /// tree broke its own invariant.
    pub fn leaf_mut(&mut self, pattern: &Pattern, make: impl FnOnce() -> L) -> Option<&mut L> {
        let mut node = Arc::make_mut(self.root.get_or_insert_with(Arc::default));
        for segment in &pattern.segments {
            let child = match segment {
                Segment::Literal(literal) => {
                    if node.literals.get(literal).is_none() {
                        node.literals.insert(literal, Arc::default());
                    }
                    // INVARIANT: inserted just above if it was missing.
                    node.literals.get_mut(literal)?
                }
                Segment::Param => node.param.get_or_insert_with(Arc::default),
            };
            node = Arc::make_mut(child);
        }
        Some(match &pattern.tail {
            None => Arc::make_mut(node.end.get_or_insert_with(|| Arc::new(make()))),
            Some(tail) => {
                let root = Arc::make_mut(node.tails.get_or_insert_with(Arc::default));
                root.leaf_mut(tail.as_bytes(), make)
            }
        })
    }

    /// Calls `change` on the leaf of `pattern`'s shape, if there is one, and removes the leaf
    /// (and the nodes left holding nothing) when `change` says it is empty now.
    pub fn change_leaf(&mut self, pattern: &Pattern, change: impl FnOnce(&mut L) -> bool) {
        let Some(root) = &mut self.root else {
            return;
        };
        let root = Arc::make_mut(root);
        change_in(root, &pattern.segments, pattern.tail.as_deref(), change);
        if root.is_empty() {
            self.root = None;
        }
    }
}

/// [`PathTree::change_leaf`] below `node`, `segments` the pattern's segments still to follow.
fn change_in<L: Clone>(
    node: &mut Node<L>,
    segments: &[Segment],
    tail: Option<&str>,
    change: impl FnOnce(&mut L) -> bool,
) {
    match segments.split_first() {
        Some((Segment::Literal(literal), rest)) => {
            let Some(child) = node.literals.get_mut(literal) else {
                return;
            };
            let child = Arc::make_mut(child);
            change_in(child, rest, tail, change);
            if child.is_empty() {
                node.literals.remove(literal);
            }
        }
        Some((Segment::Param, rest)) => {
            let Some(child) = &mut node.param else {
                return;
            };
            let child = Arc::make_mut(child);
            change_in(child, rest, tail, change);
            if child.is_empty() {
                node.param = None;
            }
        }
        None => match tail {
            None => {
                if let Some(leaf) = &mut node.end
                    && change(Arc::make_mut(leaf))
                {
                    node.end = None;
                }
            }
            Some(tail) => {
                let Some(root) = &mut node.tails else {
                    return;
                };
                let root = Arc::make_mut(root);
                root.change_leaf(tail.as_bytes(), change);
                if root.leaf.is_none() && root.children.is_empty() {
                    node.tails = None;
                }
            }
        },
    }
}

impl<L> PathTree<L> {
    /// Every leaf whose patterns match `path_rest` (the request path after its leading `/`),
    /// in no particular order. Captured segment values go to `values`, each hit naming its
    /// range there.
    pub fn find<'t, 'p>(
        &'t self,
        path_rest: &'p str,
        hits: &mut Hits<'t, L>,
        values: &mut Vec<&'p str>,
    ) {
        let Some(root) = &self.root else {
            return;
        };
        let mut stack = Vec::new();
        walk(root, Some(path_rest), &mut stack, hits, values);
    }
}

/// Visits `node` with `rest` the path still to match: `Some` text after the segments consumed
/// so far (maybe empty: a trailing `/` leaves one empty segment), or `None` when the path ended
/// with the last consumed segment.
fn walk<'t, 'p, L>(
    node: &'t Node<L>,
    rest: Option<&'p str>,
    stack: &mut Vec<&'p str>,
    hits: &mut Hits<'t, L>,
    values: &mut Vec<&'p str>,
) {
    let Some(rest) = rest else {
        if let Some(leaf) = &node.end {
            emit(hits, values, leaf, stack);
        }
        // `/static/*` also matches `/static`: people who write it mean "the static tree",
        // root included.
        if let Some(leaf) = node.tails.as_ref().and_then(|root| root.leaf.as_ref()) {
            emit(hits, values, leaf, stack);
        }
        return;
    };
    // A byte search: `split_once('/')`'s char searcher costs more than the walk's own work.
    let (segment, after) = match rest.bytes().position(|b| b == b'/') {
        Some(slash) => (&rest[..slash], Some(&rest[slash + 1..])),
        None => (rest, None),
    };
    if let Some(root) = &node.tails {
        root.find(segment.as_bytes(), |leaf| emit(hits, values, leaf, stack));
    }
    if let Some(child) = node.literals.get(segment) {
        walk(child, after, stack, hits, values);
    }
    if let Some(child) = &node.param
        && !segment.is_empty()
    {
        stack.push(segment);
        walk(child, after, stack, hits, values);
        stack.pop();
    }
}

/// Records a hit on `leaf` with the values captured so far.
fn emit<'t, 'p, L>(
    hits: &mut Hits<'t, L>,
    values: &mut Vec<&'p str>,
    leaf: &'t L,
    stack: &[&'p str],
) {
    hits.push(Hit {
        leaf,
        start: values.len(),
        len: stack.len(),
    });
    values.extend_from_slice(stack);
}

/// A compressed byte trie of prefix tails: every edge carries a non-empty label, siblings
/// differ in their first byte. The root (the empty tail) has an empty label. A node has at
/// most 256 children, so a change copies a bounded amount per node on its way.
#[derive(Debug)]
struct TailNode<L> {
    label: Box<[u8]>,
    /// Sorted by the first byte of their labels.
    children: Vec<Arc<TailNode<L>>>,
    leaf: Option<Arc<L>>,
}

impl<L> Default for TailNode<L> {
    fn default() -> Self {
        TailNode {
            label: Box::default(),
            children: Vec::new(),
            leaf: None,
        }
    }
}

impl<L> Clone for TailNode<L> {
    fn clone(&self) -> Self {
        TailNode {
            label: self.label.clone(),
            children: self.children.clone(),
            leaf: self.leaf.clone(),
        }
    }
}

impl<L> TailNode<L> {
    /// The child whose label starts with `byte`: `Ok(position)` in `children`, or
    /// `Err(position)` where it would go.
    fn child(&self, byte: u8) -> Result<usize, usize> {
        self.children
            .binary_search_by_key(&byte, |c| c.label.first().copied().unwrap_or(0))
    }

    /// Calls `emit` with the leaf of every tail that `segment` starts with, shortest first.
    fn find<'t>(&'t self, segment: &[u8], mut emit: impl FnMut(&'t L)) {
        if let Some(leaf) = &self.leaf {
            emit(leaf);
        }
        let mut node = self;
        let mut rest = segment;
        while let Some(&first) = rest.first() {
            let Ok(position) = node.child(first) else {
                return;
            };
            let child = &node.children[position];
            let Some(after) = rest.strip_prefix(&*child.label) else {
                return;
            };
            if let Some(leaf) = &child.leaf {
                emit(leaf);
            }
            rest = after;
            node = child;
        }
    }
}

impl<L: Clone> TailNode<L> {
    /// The leaf of `tail` below this node, made by `make` if there is none yet, to change in
    /// place (nodes on its way shared with another version are copied first).
    fn leaf_mut(&mut self, tail: &[u8], make: impl FnOnce() -> L) -> &mut L {
        let Some(&first) = tail.first() else {
            return Arc::make_mut(self.leaf.get_or_insert_with(|| Arc::new(make())));
        };
        match self.child(first) {
            Err(position) => {
                self.children.insert(
                    position,
                    Arc::new(TailNode {
                        label: tail.into(),
                        children: Vec::new(),
                        leaf: None,
                    }),
                );
                Arc::make_mut(&mut self.children[position]).leaf_mut(&[], make)
            }
            Ok(position) => {
                let child = Arc::make_mut(&mut self.children[position]);
                let common = child
                    .label
                    .iter()
                    .zip(tail)
                    .take_while(|(a, b)| a == b)
                    .count();
                if common < child.label.len() {
                    // Split the edge: this child keeps the common part, a new node below it
                    // takes the rest of its label with its leaf and children.
                    let below = TailNode {
                        label: child.label[common..].into(),
                        children: std::mem::take(&mut child.children),
                        leaf: child.leaf.take(),
                    };
                    child.label = child.label[..common].into();
                    child.children = vec![Arc::new(below)];
                }
                child.leaf_mut(&tail[common..], make)
            }
        }
    }

    /// Calls `change` on the leaf of `tail` below this node, if there is one, and removes the
    /// leaf when `change` says it is empty, with the nodes left holding nothing.
    fn change_leaf(&mut self, tail: &[u8], change: impl FnOnce(&mut L) -> bool) {
        let Some(&first) = tail.first() else {
            if let Some(leaf) = &mut self.leaf
                && change(Arc::make_mut(leaf))
            {
                self.leaf = None;
            }
            return;
        };
        let Ok(position) = self.child(first) else {
            return;
        };
        let child = Arc::make_mut(&mut self.children[position]);
        let Some(rest) = tail.strip_prefix(&*child.label) else {
            return;
        };
        child.change_leaf(rest, change);
        if child.leaf.is_none() && child.children.is_empty() {
            self.children.remove(position);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_trie_finds_every_tail_that_starts_a_segment() {
        // Leaves are the tails' own text; inserted in an order that forces edge splits.
        let mut trie = TailNode::<&str>::default();
        let tails = ["apiary", "api", "ap", "b", "", "apix"];
        for tail in tails {
            trie.leaf_mut(tail.as_bytes(), || tail);
        }
        assert_eq!(
            *trie.leaf_mut(b"api", || "again"),
            "api",
            "same tail, same leaf"
        );
        let found = |trie: &TailNode<&'static str>, segment: &str| {
            let mut out = Vec::new();
            trie.find(segment.as_bytes(), |leaf| out.push(*leaf));
            out
        };
        assert_eq!(found(&trie, "apiary"), ["", "ap", "api", "apiary"]);
        assert_eq!(found(&trie, "apia"), ["", "ap", "api"]);
        assert_eq!(found(&trie, "apixy"), ["", "ap", "api", "apix"]);
        assert_eq!(found(&trie, "bb"), ["", "b"]);
        assert_eq!(found(&trie, "a"), [""]);
        assert_eq!(found(&trie, ""), [""]);

        // A copy shares the trie; emptying a leaf in it leaves the original whole.
        let mut copy = trie.clone();
        copy.change_leaf(b"api", |_| true);
        copy.change_leaf(b"", |_| true);
        assert_eq!(found(&copy, "apiary"), ["ap", "apiary"]);
        assert_eq!(found(&trie, "apiary"), ["", "ap", "api", "apiary"]);
        copy.change_leaf(b"apiary", |_| true);
        copy.change_leaf(b"apix", |_| true);
        copy.change_leaf(b"ap", |_| true);
        assert_eq!(found(&copy, "apiary"), Vec::<&str>::new());
        assert_eq!(found(&copy, "bb"), ["b"]);
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
