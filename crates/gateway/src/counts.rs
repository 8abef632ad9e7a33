//! Counts per key that hold only the keys with a count: a map bounded by what is live now.

use std::collections::HashMap;

/// One fewer; the entry goes at zero (the maps hold only who has a place now).
pub fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}
