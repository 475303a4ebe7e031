//! A persistent map from config strings (path segments, host names, route ids) to values: a
//! hash array mapped trie whose branches are shared between versions.
//!
//! Cloning a map is one reference count; changing a clone copies only the branches on the way
//! to the changed key (at most 32 slots each, about log₃₂ n of them) and shares the rest. That
//! is what lets the next config version's router be the previous one patched: a change costs
//! the same whether a tree node has ten children or ten thousand, and freeing the old version
//! frees only what the change replaced. A lookup hashes the key once (FNV-1a, as the rest of
//! the router: several lookups per request on keys of a few bytes, where SipHash's setup would
//! dominate; the keys come from the admin's config, a client can only look them up) and tests
//! one bit per level.

use std::hash::Hasher as _;
use std::sync::Arc;

/// Hash bits consumed per level: 32 slots per branch.
const BITS: u32 = 5;

/// A persistent string-keyed map. `Clone` is cheap; every version stays valid and unchanged.
#[derive(Debug)]
pub(super) struct PMap<V> {
    /// `None` while empty, so the many empty maps of a tree cost no allocation.
    root: Option<Arc<Branch<V>>>,
    len: usize,
}

impl<V> Default for PMap<V> {
    fn default() -> Self {
        PMap { root: None, len: 0 }
    }
}

impl<V> Clone for PMap<V> {
    fn clone(&self) -> Self {
        PMap {
            root: self.root.clone(),
            len: self.len,
        }
    }
}

#[derive(Debug)]
struct Branch<V> {
    /// Bit `i` is set when the slot for hash digit `i` is present; `slots` holds the present
    /// ones in digit order.
    bitmap: u32,
    slots: Vec<Slot<V>>,
}

// By hand: a derive would ask `V: Clone` of the map too.
impl<V: Clone> Clone for Branch<V> {
    fn clone(&self) -> Self {
        Branch {
            bitmap: self.bitmap,
            slots: self.slots.clone(),
        }
    }
}

#[derive(Clone, Debug)]
enum Slot<V> {
    One(Item<V>),
    /// Keys whose whole 64-bit hashes are equal (two or more).
    Collision(Vec<Item<V>>),
    Sub(Arc<Branch<V>>),
}

#[derive(Clone, Debug)]
struct Item<V> {
    hash: u64,
    /// Shared, so copying a branch copies no string.
    key: Arc<str>,
    value: V,
}

fn hash(key: &str) -> u64 {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(key.as_bytes());
    hasher.finish()
}

/// The slot bit of `hash` at `shift`, and the slot's position among the present ones.
fn locate(bitmap: u32, hash: u64, shift: u32) -> (u32, usize) {
    let bit = 1u32 << ((hash >> shift) & 31);
    (bit, (bitmap & (bit - 1)).count_ones() as usize)
}

impl<V> PMap<V> {
    /// The number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map has no key.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        // Empty maps (most of a tree's) answer before hashing.
        let mut branch = self.root.as_deref()?;
        let hash = hash(key);
        let mut shift = 0;
        loop {
            let (bit, position) = locate(branch.bitmap, hash, shift);
            if branch.bitmap & bit == 0 {
                return None;
            }
            match branch.slots.get(position)? {
                Slot::One(item) => {
                    return (item.hash == hash && &*item.key == key).then_some(&item.value);
                }
                Slot::Collision(items) => {
                    return items
                        .iter()
                        .find(|item| item.hash == hash && &*item.key == key)
                        .map(|item| &item.value);
                }
                Slot::Sub(sub) => {
                    branch = sub;
                    shift += BITS;
                }
            }
        }
    }

    /// Calls `f` on every entry, in no particular order.
    pub fn for_each<'a>(&'a self, mut f: impl FnMut(&'a str, &'a V)) {
        fn walk<'a, V>(branch: &'a Branch<V>, f: &mut impl FnMut(&'a str, &'a V)) {
            for slot in &branch.slots {
                match slot {
                    Slot::One(item) => f(&item.key, &item.value),
                    Slot::Collision(items) => {
                        for item in items {
                            f(&item.key, &item.value);
                        }
                    }
                    Slot::Sub(sub) => walk(sub, f),
                }
            }
        }
        if let Some(root) = &self.root {
            walk(root, &mut f);
        }
    }
}

impl<V: Clone> PMap<V> {
    /// Sets `key` to `value`; returns the value it replaces.
    pub fn insert(&mut self, key: &str, value: V) -> Option<V> {
        let item = Item {
            hash: hash(key),
            key: key.into(),
            value,
        };
        let root = self.root.get_or_insert_with(|| {
            Arc::new(Branch {
                bitmap: 0,
                slots: Vec::new(),
            })
        });
        let replaced = insert(Arc::make_mut(root), 0, item);
        if replaced.is_none() {
            self.len += 1;
        }
        replaced
    }

    /// The value of `key`, to change in place: the branches leading to it are copied first if
    /// another version shares them.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        // Checked first, so that looking for a missing key copies nothing.
        self.get(key)?;
        get_mut(Arc::make_mut(self.root.as_mut()?), 0, hash(key), key)
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        self.get(key)?;
        let root = self.root.as_mut()?;
        let removed = remove(Arc::make_mut(root), 0, hash(key), key);
        if removed.is_some() {
            self.len -= 1;
            if self.len == 0 {
                self.root = None;
            }
        }
        removed
    }
}

fn insert<V: Clone>(branch: &mut Branch<V>, shift: u32, item: Item<V>) -> Option<V> {
    let (bit, position) = locate(branch.bitmap, item.hash, shift);
    if branch.bitmap & bit == 0 {
        branch.bitmap |= bit;
        branch.slots.insert(position, Slot::One(item));
        return None;
    }
    let slot = branch.slots.get_mut(position)?;
    match slot {
        Slot::Sub(sub) => return insert(Arc::make_mut(sub), shift + BITS, item),
        Slot::One(one) if one.key == item.key => {
            return Some(std::mem::replace(&mut one.value, item.value));
        }
        Slot::Collision(items) if items.first().map(|i| i.hash) == Some(item.hash) => {
            if let Some(same) = items.iter_mut().find(|i| i.key == item.key) {
                return Some(std::mem::replace(&mut same.value, item.value));
            }
            items.push(item);
            return None;
        }
        Slot::One(one) if one.hash == item.hash => {
            let one = one.clone();
            *slot = Slot::Collision(vec![one, item]);
            return None;
        }
        Slot::One(_) | Slot::Collision(_) => {}
    }
    // Another hash shares this slot's digit: both go one level down, where their next digits
    // tell them apart (or, equal again, another level: two distinct 64-bit hashes differ by the
    // last level at the latest).
    let below = std::mem::replace(
        slot,
        Slot::Sub(Arc::new(Branch {
            bitmap: 0,
            slots: Vec::new(),
        })),
    );
    let Slot::Sub(sub) = slot else {
        return None;
    };
    let sub = Arc::make_mut(sub);
    let below_hash = match &below {
        Slot::One(one) => one.hash,
        Slot::Collision(items) => items.first().map_or(0, |i| i.hash),
        Slot::Sub(_) => 0,
    };
    let (below_bit, _) = locate(0, below_hash, shift + BITS);
    sub.bitmap = below_bit;
    sub.slots.push(below);
    insert(sub, shift + BITS, item)
}

fn get_mut<'a, V: Clone>(
    branch: &'a mut Branch<V>,
    shift: u32,
    hash: u64,
    key: &str,
) -> Option<&'a mut V> {
    let (bit, position) = locate(branch.bitmap, hash, shift);
    if branch.bitmap & bit == 0 {
        return None;
    }
    match branch.slots.get_mut(position)? {
        Slot::One(item) => (&*item.key == key).then_some(&mut item.value),
        Slot::Collision(items) => items
            .iter_mut()
            .find(|item| &*item.key == key)
            .map(|item| &mut item.value),
        Slot::Sub(sub) => get_mut(Arc::make_mut(sub), shift + BITS, hash, key),
    }
}

fn remove<V: Clone>(branch: &mut Branch<V>, shift: u32, hash: u64, key: &str) -> Option<V> {
    let (bit, position) = locate(branch.bitmap, hash, shift);
    if branch.bitmap & bit == 0 {
        return None;
    }
    let slot = branch.slots.get_mut(position)?;
    match slot {
        Slot::One(item) if &*item.key == key => {}
        Slot::One(_) => return None,
        Slot::Collision(items) => {
            let at = items.iter().position(|item| &*item.key == key)?;
            let removed = items.remove(at);
            if items.len() == 1
                && let Some(last) = items.pop()
            {
                *slot = Slot::One(last);
            }
            return Some(removed.value);
        }
        Slot::Sub(sub) => {
            let sub = Arc::make_mut(sub);
            let removed = remove(sub, shift + BITS, hash, key)?;
            // A branch left with one key (or one collision) folds into its parent's slot, so
            // depth follows what the map holds now, not what it once held.
            if sub.slots.len() == 1
                && !matches!(sub.slots.first(), Some(Slot::Sub(_)))
                && let Some(only) = sub.slots.pop()
            {
                *slot = only;
            }
            return Some(removed);
        }
    }
    branch.bitmap &= !bit;
    match branch.slots.remove(position) {
        Slot::One(item) => Some(item.value),
        Slot::Collision(_) | Slot::Sub(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Random inserts and removals on versions that share branches: every version answers like
    /// a `HashMap` given the same operations, and changing one never changes another.
    #[test]
    fn versions_agree_with_a_hash_map_and_stay_unchanged() {
        for seed in 0..200u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let keys: Vec<String> = (0..rng.usize(1..300)).map(|i| format!("k{i}")).collect();
            let mut map = PMap::default();
            let mut model = HashMap::new();
            let mut versions: Vec<(PMap<u32>, HashMap<String, u32>)> = Vec::new();
            for step in 0..400u32 {
                let key = &keys[rng.usize(..keys.len())];
                match rng.u8(..4) {
                    0 => assert_eq!(map.remove(key), model.remove(key)),
                    1 => {
                        if let Some(value) = map.get_mut(key) {
                            *value += 1000;
                        }
                        if let Some(value) = model.get_mut(key) {
                            *value += 1000;
                        }
                    }
                    _ => assert_eq!(map.insert(key, step), model.insert(key.clone(), step)),
                }
                assert_eq!(map.len(), model.len());
                if rng.u8(..16) == 0 {
                    versions.push((map.clone(), model.clone()));
                }
            }
            versions.push((map, model));
            for (map, model) in &versions {
                for key in &keys {
                    assert_eq!(map.get(key), model.get(key), "seed {seed} key {key}");
                }
                let mut seen = HashMap::new();
                map.for_each(|k, v| {
                    seen.insert(k.to_owned(), *v);
                });
                assert_eq!(&seen, model);
            }
        }
    }

    #[test]
    fn keys_with_one_hash_live_side_by_side() {
        // Distinct keys, one hash: built by hand, since FNV-1a collisions are hard to find.
        let mut map: PMap<u32> = PMap::default();
        let mut root = Branch {
            bitmap: 0,
            slots: Vec::new(),
        };
        for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
            insert(
                &mut root,
                0,
                Item {
                    hash: 7,
                    key: key.into(),
                    value: i as u32,
                },
            );
        }
        assert!(matches!(root.slots.as_slice(), [Slot::Collision(items)] if items.len() == 3));
        assert_eq!(remove(&mut root, 0, 7, "b"), Some(1));
        assert_eq!(get_mut(&mut root, 0, 7, "c").copied(), Some(2));
        assert_eq!(remove(&mut root, 0, 7, "a"), Some(0));
        assert!(matches!(root.slots.as_slice(), [Slot::One(item)] if &*item.key == "c"));
        map.root = Some(Arc::new(root));
        map.len = 1;
        assert_eq!(map.len(), 1);
    }
}
