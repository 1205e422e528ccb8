//! Pod facts held compactly: every agent keeps the policy facts of every
//! pod in the cluster (150,000 at the scalability envelope), and most of
//! their strings repeat: namespaces, node names, label keys and values,
//! port names. Held as shared [`Arc<str>`]s from one interner, and labels
//! as a sorted slice rather than a `BTreeMap` (whose node alone is ~540
//! bytes), a pod's facts fall from ~1.3 KiB to ~0.4 KiB
//! (`bench/agent-scale`).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

/// The shared copy of `s`. Copies no pod holds any more are dropped once
/// the interner has doubled since its last sweep, so churning label values
/// (a new `pod-template-hash` per rollout) do not pile up.
pub fn intern(s: &str) -> Arc<str> {
    let mut guard = INTERNER.lock().unwrap_or_else(|e| e.into_inner());
    let i = guard.get_or_insert_with(|| Interner {
        set: HashSet::new(),
        swept_at: 1024,
    });
    if let Some(a) = i.set.get(s) {
        return a.clone();
    }
    if i.set.len() >= 2 * i.swept_at {
        i.set.retain(|a| Arc::strong_count(a) > 1);
        i.swept_at = i.set.len().max(1024);
    }
    let a: Arc<str> = Arc::from(s);
    i.set.insert(a.clone());
    a
}

struct Interner {
    set: HashSet<Arc<str>>,
    swept_at: usize,
}

static INTERNER: Mutex<Option<Interner>> = Mutex::new(None);

/// What a label selector reads: a label's value by key.
pub trait LabelSource {
    /// The value of label `key`, if set.
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelSource for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// A pod's labels: sorted by key, keys and values interned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(Box<[(Arc<str>, Arc<str>)]>);

impl Labels {
    /// The labels of an API object's metadata.
    pub fn from_map(map: &BTreeMap<String, String>) -> Self {
        // A BTreeMap iterates sorted by key already.
        Labels(map.iter().map(|(k, v)| (intern(k), intern(v))).collect())
    }

    /// `key=value` pairs, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// As the API's map (for tools that print or compare maps).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl LabelSource for Labels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_read_as_the_map_they_came_from() {
        let map = BTreeMap::from([
            ("tier".to_string(), "web".to_string()),
            ("app".to_string(), "a".to_string()),
            ("z".to_string(), String::new()),
        ]);
        let l = Labels::from_map(&map);
        for (k, v) in &map {
            assert_eq!(l.get(k), Some(v.as_str()));
        }
        assert_eq!(l.get("missing"), None);
        assert_eq!(l.get("ap"), None);
        assert_eq!(l.to_map(), map);
    }

    #[test]
    fn interned_strings_are_shared_and_unheld_ones_are_swept() {
        let a = intern("podnet-intern-test-shared");
        let b = intern("podnet-intern-test-shared");
        assert!(Arc::ptr_eq(&a, &b));
        // Enough unheld strings to force sweeps: the held one survives
        // them, and stays the one handed out.
        for i in 0..10_000 {
            intern(&format!("podnet-intern-test-churn-{i}"));
        }
        let c = intern("podnet-intern-test-shared");
        assert!(Arc::ptr_eq(&a, &c));
        // The unheld ones were swept: the interner holds far fewer than
        // the 10,000 made (other tests of this process intern a few too).
        let held = INTERNER.lock().unwrap().as_ref().map_or(0, |i| i.set.len());
        assert!(
            held < 4096,
            "the interner holds {held} strings after 10,000 unheld ones"
        );
    }
}
