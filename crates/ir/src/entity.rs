//! Typed dense indices and side tables keyed by them, after Cranelift's `cranelift-entity`
//! (`EntityRef`, `SecondaryMap`) and regalloc2's `define_index!`.
//!
//! An id type ([`TensorId`](crate::TensorId), [`NodeId`](crate::NodeId), or one declared with
//! [`define_index!`](crate::define_index)) is a `u32` newtype; a [`SecondaryMap`] maps ids to
//! values in a dense `Vec`, so a table of per-tensor facts can only be indexed by a tensor id.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Index, IndexMut};

/// A dense index type: a newtype over a `u32` position.
pub trait EntityRef: Copy + Eq {
    /// The id of position `index`.
    ///
    /// # Panics
    /// If `index` does not fit in a `u32`.
    fn new(index: usize) -> Self;
    /// The position this id stands for.
    fn index(self) -> usize;
}

/// Declares a `u32` index newtype implementing [`EntityRef`], in one line:
///
/// ```
/// lowmem_ir::define_index!(
///     /// A block of a schedule.
///     pub struct BlockId;
/// );
/// let b = BlockId::new(3);
/// assert_eq!(b.index(), 3);
/// assert_eq!(format!("{b}"), "3");
/// ```
#[macro_export]
macro_rules! define_index {
    ($(#[$attr:meta])* $vis:vis struct $name:ident;) => {
        $(#[$attr])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis struct $name(pub u32);

        impl $name {
            /// The id of position `index`.
            ///
            /// # Panics
            /// If `index` does not fit in a `u32`.
            #[inline]
            pub fn new(index: usize) -> Self {
                $name(u32::try_from(index).expect(concat!(stringify!($name), " out of range")))
            }
            /// The position this id stands for.
            #[inline]
            pub fn index(self) -> usize {
                self.0 as usize
            }
        }

        impl $crate::EntityRef for $name {
            #[inline]
            fn new(index: usize) -> Self {
                $name::new(index)
            }
            #[inline]
            fn index(self) -> usize {
                $name::index(self)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                ::std::fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

/// A side table from ids `K` to values `V`, stored densely. Reading an id past the end yields
/// the map's default value; writing one grows the table (filling with the default), as in
/// Cranelift's `SecondaryMap`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SecondaryMap<K: EntityRef, V: Clone> {
    elems: Vec<V>,
    default: V,
    unused: PhantomData<K>,
}

impl<K: EntityRef, V: Clone + Default> SecondaryMap<K, V> {
    /// An empty map whose default is `V::default()`.
    pub fn new() -> Self {
        Self::with_default(V::default())
    }

    /// `n` entries, all `V::default()`.
    pub fn with_len(n: usize) -> Self {
        Self::filled(n, V::default())
    }
}

impl<K: EntityRef, V: Clone + Default> Default for SecondaryMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: EntityRef, V: Clone> SecondaryMap<K, V> {
    /// An empty map with the given default.
    pub fn with_default(default: V) -> Self {
        SecondaryMap {
            elems: Vec::new(),
            default,
            unused: PhantomData,
        }
    }

    /// `n` entries equal to `value`, which is also the default.
    pub fn filled(n: usize, value: V) -> Self {
        SecondaryMap {
            elems: vec![value.clone(); n],
            default: value,
            unused: PhantomData,
        }
    }

    /// The entries of `elems` keyed by position, with the given default.
    pub fn from_vec(elems: Vec<V>, default: V) -> Self {
        SecondaryMap {
            elems,
            default,
            unused: PhantomData,
        }
    }

    /// The value of `k` if it is stored.
    pub fn get(&self, k: K) -> Option<&V> {
        self.elems.get(k.index())
    }

    /// The number of stored entries.
    pub fn len(&self) -> usize {
        self.elems.len()
    }

    pub fn is_empty(&self) -> bool {
        self.elems.is_empty()
    }

    /// Grows or shrinks to `n` entries, filling with the default.
    pub fn resize(&mut self, n: usize) {
        self.elems.resize(n, self.default.clone());
    }

    /// The stored entries, in id order.
    pub fn as_slice(&self) -> &[V] {
        &self.elems
    }

    pub fn as_mut_slice(&mut self) -> &mut [V] {
        &mut self.elems
    }

    /// The ids of the stored entries.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = K> + ExactSizeIterator + use<K, V> {
        (0..self.elems.len()).map(K::new)
    }

    pub fn values(&self) -> std::slice::Iter<'_, V> {
        self.elems.iter()
    }

    /// `(id, &value)` for every stored entry, in id order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (K, &V)> + ExactSizeIterator {
        self.elems.iter().enumerate().map(|(i, v)| (K::new(i), v))
    }

    /// `(id, &mut value)` for every stored entry, in id order.
    pub fn iter_mut(&mut self) -> impl DoubleEndedIterator<Item = (K, &mut V)> + ExactSizeIterator {
        self.elems
            .iter_mut()
            .enumerate()
            .map(|(i, v)| (K::new(i), v))
    }

    /// The stored entries.
    pub fn into_vec(self) -> Vec<V> {
        self.elems
    }
}

impl<K: EntityRef, V: Clone> Index<K> for SecondaryMap<K, V> {
    type Output = V;
    fn index(&self, k: K) -> &V {
        self.elems.get(k.index()).unwrap_or(&self.default)
    }
}

impl<K: EntityRef, V: Clone> IndexMut<K> for SecondaryMap<K, V> {
    fn index_mut(&mut self, k: K) -> &mut V {
        let i = k.index();
        if i >= self.elems.len() {
            self.resize(i + 1);
        }
        &mut self.elems[i]
    }
}

impl<K: EntityRef + fmt::Debug, V: Clone + fmt::Debug> fmt::Debug for SecondaryMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'a, K: EntityRef, V: Clone> IntoIterator for &'a SecondaryMap<K, V> {
    type Item = (K, &'a V);
    type IntoIter = std::iter::Map<
        std::iter::Enumerate<std::slice::Iter<'a, V>>,
        fn((usize, &'a V)) -> (K, &'a V),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.elems.iter().enumerate().map(|(i, v)| (K::new(i), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeId, TensorId};

    crate::define_index!(
        /// A test id.
        struct Thing;
    );

    #[test]
    fn ids_round_trip_and_display() {
        let t = Thing::new(7);
        assert_eq!(t.index(), 7);
        assert_eq!(<Thing as EntityRef>::new(7), t);
        assert_eq!(t.to_string(), "7");
        assert_eq!(<TensorId as EntityRef>::new(4), TensorId(4));
        assert_eq!(EntityRef::index(NodeId(5)), 5);
    }

    #[test]
    fn secondary_map_reads_default_past_the_end_and_grows_on_write() {
        let mut m: SecondaryMap<Thing, Option<u64>> = SecondaryMap::new();
        assert!(m.is_empty());
        assert_eq!(m[Thing(3)], None);
        m[Thing(2)] = Some(9);
        assert_eq!(m.len(), 3);
        assert_eq!(m.as_slice(), &[None, None, Some(9)]);
        assert_eq!(m.get(Thing(2)), Some(&Some(9)));
        assert_eq!(m.get(Thing(3)), None);
        let pairs: Vec<(Thing, Option<u64>)> = m.iter().map(|(k, &v)| (k, v)).collect();
        assert_eq!(pairs[2], (Thing(2), Some(9)));
        assert_eq!(
            m.keys().collect::<Vec<_>>(),
            vec![Thing(0), Thing(1), Thing(2)]
        );
        let mut k: SecondaryMap<Thing, char> = SecondaryMap::with_default('a');
        k.resize(2);
        k[Thing(0)] = 'b';
        assert_eq!(k.as_slice(), &['b', 'a']);
        assert_eq!(k[Thing(10)], 'a');
        let f: SecondaryMap<Thing, u8> = SecondaryMap::filled(2, 1);
        assert_eq!(f.into_vec(), vec![1, 1]);
    }
}
