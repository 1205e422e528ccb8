//! The object store: every object as JSON in memory for fast reads, persisted in
//! redb with group commit, a monotonic resourceVersion and a bounded event log
//! so watches resume (also across a restart) without losing an event.
//!
//! Writes are serialised by one mutex: the mutation is checked and applied to
//! the in-memory map and assigned the next resourceVersion, then handed to the
//! committer thread, which writes many mutations in one redb transaction
//! (one fsync) and only then publishes the events to watchers and answers the
//! writers. A writer therefore never gets a success for a write that is not on
//! disk, and watchers never see an event that could be lost by a crash.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// How many recent events are kept (in memory and on disk) for watches that
/// resume from an older resourceVersion; older ones get 410 Gone.
pub const EVENT_LOG_LEN: usize = 50_000;

/// Errors of the store, mapped to HTTP statuses by the API layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist.
    #[error("not found")]
    NotFound,
    /// The object already exists.
    #[error("already exists")]
    AlreadyExists,
    /// The caller's resourceVersion is not the current one.
    #[error(
        "the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict,
    /// The database failed.
    #[error("storage: {0}")]
    Db(String),
    /// A check made while holding the write lock refused the change.
    #[error("{0}")]
    Rejected(String),
}

macro_rules! db {
    ($e:expr) => {
        $e.map_err(|e| StoreError::Db(e.to_string()))
    };
}

/// One stored object: its JSON value and its serialised bytes (kept so a LIST
/// of thousands of objects is a concatenation, not a re-serialisation).
#[derive(Debug)]
pub struct Obj {
    /// The object, with metadata.resourceVersion set.
    pub value: Value,
    /// `value` serialised.
    pub json: Bytes,
    /// Its resourceVersion as a number.
    pub rv: u64,
}

impl Obj {
    fn new(value: Value, rv: u64) -> Arc<Obj> {
        let json = Bytes::from(serde_json::to_vec(&value).expect("json values serialise"));
        Arc::new(Obj { value, json, rv })
    }
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl EventType {
    /// The watch event type string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
    fn parse(s: &str) -> Option<EventType> {
        Some(match s {
            "ADDED" => EventType::Added,
            "MODIFIED" => EventType::Modified,
            "DELETED" => EventType::Deleted,
            _ => return None,
        })
    }
}

/// One change, as watchers see it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The resourceVersion of the change.
    pub rv: u64,
    /// The kind of change.
    pub kind: EventType,
    /// The resource id ("pods", "apps/deployments").
    pub resource: Arc<str>,
    /// The object after the change (before it, with the new rv, for deletes).
    pub obj: Arc<Obj>,
    /// The object before the change (None for creates and after a restart).
    pub prev: Option<Arc<Obj>>,
}

/// What a mutation decides.
pub enum Change {
    /// Store this value (create or replace).
    Put(Value),
    /// Remove the object.
    Delete,
    /// Leave it as it is (a no-op update: no new resourceVersion).
    Keep,
}

impl Event {
    /// The object's namespace ("" for cluster-scoped objects).
    pub fn namespace(&self) -> &str {
        self.obj.value["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
    }
}

/// A watch asked for events older than the log keeps (410 Gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooOld;

/// (namespace, name)
pub type ObjKey = (String, String);

struct State {
    rv: u64,
    objects: HashMap<Arc<str>, BTreeMap<ObjKey, Arc<Obj>>>,
}

struct Log {
    /// All events with rv > `start` are in `events`.
    start: u64,
    events: VecDeque<Event>,
    /// The rv of the last event published.
    published: u64,
}

struct Pending {
    event: Event,
    key: String,
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// The store; cheap to clone-share through `Arc`.
pub struct Store {
    log_len: usize,
    state: Mutex<State>,
    log: Mutex<Log>,
    tx: broadcast::Sender<Event>,
    commit_tx: std::sync::mpsc::Sender<Pending>,
}

/// A consistent read of the store taken under its lock: a list and a
/// subscription with nothing missed or doubled between them.
pub struct WatchStart {
    /// Events to send first (replayed from the log), rv ascending.
    pub replay: Vec<Event>,
    /// Live events; skip those with rv <= the last one sent.
    pub rx: broadcast::Receiver<Event>,
    /// The resourceVersion the watch is at after `replay`.
    pub rv: u64,
}

fn obj_key(resource: &str, ns: &str, name: &str) -> String {
    format!("{resource}/{ns}/{name}")
}

impl Store {
    /// Opens (or creates) the store in `dir/store.redb` and loads it.
    pub fn open(dir: &Path) -> Result<Arc<Store>, StoreError> {
        Store::open_with(dir, EVENT_LOG_LEN)
    }

    /// Opens the store keeping `log_len` events for resuming watches.
    pub fn open_with(dir: &Path, log_len: usize) -> Result<Arc<Store>, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Db(e.to_string()))?;
        // A bounded page cache: objects are served from memory, redb is for durability.
        let db = db!(redb::Builder::new()
            .set_cache_size(16 << 20)
            .create(dir.join("store.redb")))?;
        {
            let w = db!(db.begin_write())?;
            db!(w.open_table(OBJECTS))?;
            db!(w.open_table(EVENTS))?;
            db!(w.open_table(META))?;
            db!(w.commit())?;
        }
        let mut objects: HashMap<Arc<str>, BTreeMap<ObjKey, Arc<Obj>>> = HashMap::new();
        let mut resources: HashMap<String, Arc<str>> = HashMap::new();
        let r = db!(db.begin_read())?;
        let rv = db!(r.open_table(META))?
            .get("rv")
            .map_err(|e| StoreError::Db(e.to_string()))?
            .map(|v| v.value())
            .unwrap_or(0);
        let mut intern = |res: &str| -> Arc<str> {
            resources
                .entry(res.to_string())
                .or_insert_with(|| Arc::from(res))
                .clone()
        };
        for item in db!(db!(r.open_table(OBJECTS))?.iter())? {
            let (k, v) = db!(item)?;
            let key = k.value();
            let mut parts = key.rsplitn(3, '/');
            let (name, ns, res) = match (parts.next(), parts.next(), parts.next()) {
                (Some(n), Some(ns), Some(r)) => (n, ns, r),
                _ => continue,
            };
            let value: Value =
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Db(e.to_string()))?;
            let orv = value["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            objects
                .entry(intern(res))
                .or_default()
                .insert((ns.to_string(), name.to_string()), Obj::new(value, orv));
        }
        let mut events = VecDeque::new();
        for item in db!(db!(r.open_table(EVENTS))?.iter())? {
            let (k, v) = db!(item)?;
            let rec: Value =
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Db(e.to_string()))?;
            let (Some(kind), Some(res)) = (
                rec["type"].as_str().and_then(EventType::parse),
                rec["resource"].as_str(),
            ) else {
                continue;
            };
            let erv = k.value();
            events.push_back(Event {
                rv: erv,
                kind,
                resource: intern(res),
                obj: Obj::new(rec["object"].clone(), erv),
                prev: None,
            });
        }
        drop(r);
        let start = events.front().map(|e| e.rv - 1).unwrap_or(rv);
        let (tx, _) = broadcast::channel(16_384);
        let (commit_tx, commit_rx) = std::sync::mpsc::channel::<Pending>();
        let store = Arc::new(Store {
            log_len,
            state: Mutex::new(State { rv, objects }),
            log: Mutex::new(Log {
                start,
                events,
                published: rv,
            }),
            tx,
            commit_tx,
        });
        let weak = Arc::downgrade(&store);
        std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || committer(db, commit_rx, weak))
            .map_err(|e| StoreError::Db(e.to_string()))?;
        Ok(store)
    }

    /// The current resourceVersion (of the last write accepted).
    pub fn rv(&self) -> u64 {
        self.state.lock().expect("store lock").rv
    }

    /// One object.
    pub fn get(&self, resource: &str, ns: &str, name: &str) -> Option<Arc<Obj>> {
        let st = self.state.lock().expect("store lock");
        st.objects
            .get(resource)?
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// All objects of a resource (in one namespace when `ns` is given), in key
    /// order, with the resourceVersion of the snapshot.
    pub fn list(&self, resource: &str, ns: Option<&str>) -> (Vec<Arc<Obj>>, u64) {
        let st = self.state.lock().expect("store lock");
        let Some(m) = st.objects.get(resource) else {
            return (Vec::new(), st.rv);
        };
        let items = match ns {
            Some(ns) => m
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, o)| o.clone())
                .collect(),
            None => m.values().cloned().collect(),
        };
        (items, st.rv)
    }

    /// Visits the objects of a resource in key order, after `after` (a
    /// continue key) and within `ns` when given, under the store lock, until
    /// `visit` returns false. A page of a paginated LIST then costs its own
    /// length: no snapshot of the whole collection for every page (which made
    /// listing 150,000 pods in pages of 500 quadratic). Returns the
    /// resourceVersion the visit saw.
    pub fn scan(
        &self,
        resource: &str,
        ns: Option<&str>,
        after: Option<&ObjKey>,
        mut visit: impl FnMut(&ObjKey, &Arc<Obj>) -> bool,
    ) -> u64 {
        use std::ops::Bound;
        let st = self.state.lock().expect("store lock");
        let Some(m) = st.objects.get(resource) else {
            return st.rv;
        };
        let start = match (after, ns) {
            (Some(a), Some(ns)) if a.0.as_str() < ns => {
                Bound::Included((ns.to_string(), String::new()))
            }
            (Some(a), _) => Bound::Excluded(a.clone()),
            (None, Some(ns)) => Bound::Included((ns.to_string(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        for (k, o) in m.range((start, Bound::Unbounded)) {
            if ns.is_some_and(|ns| k.0 != ns) || !visit(k, o) {
                break;
            }
        }
        st.rv
    }

    /// The resources that hold objects in a namespace (for cascading deletes).
    pub fn resources(&self) -> Vec<Arc<str>> {
        self.state
            .lock()
            .expect("store lock")
            .objects
            .keys()
            .cloned()
            .collect()
    }

    /// Starts a watch: a list snapshot (when `from` is None) or a replay from
    /// the log (when `from` is a resourceVersion), and a live subscription.
    /// Returns `TooOld` when `from` is older than the log (410 Gone).
    pub fn watch(
        &self,
        resource: &str,
        ns: Option<&str>,
        from: Option<u64>,
    ) -> Result<(Vec<Arc<Obj>>, WatchStart), TooOld> {
        let st = self.state.lock().expect("store lock");
        let rx = self.tx.subscribe();
        let log = self.log.lock().expect("log lock");
        match from {
            None => {
                drop(log);
                let rv = st.rv;
                let items = match st.objects.get(resource) {
                    None => Vec::new(),
                    Some(m) => match ns {
                        Some(ns) => m
                            .range((ns.to_string(), String::new())..)
                            .take_while(|((n, _), _)| n == ns)
                            .map(|(_, o)| o.clone())
                            .collect(),
                        None => m.values().cloned().collect(),
                    },
                };
                Ok((
                    items,
                    WatchStart {
                        replay: Vec::new(),
                        rx,
                        rv,
                    },
                ))
            }
            Some(from) => {
                if from < log.start {
                    return Err(TooOld);
                }
                let replay: Vec<Event> = log
                    .events
                    .iter()
                    .filter(|e| {
                        e.rv > from
                            && &*e.resource == resource
                            && ns.is_none_or(|n| e.namespace() == n)
                    })
                    .cloned()
                    .collect();
                drop(st);
                Ok((
                    Vec::new(),
                    WatchStart {
                        replay,
                        rx,
                        rv: from,
                    },
                ))
            }
        }
    }

    /// The rv of the last event published to watchers (for bookmarks).
    pub fn published_rv(&self) -> u64 {
        self.log.lock().expect("log lock").published
    }

    /// Applies a change under the write lock: `f` gets the current object (or
    /// None) and decides. A stored object gets the next resourceVersion. Returns
    /// once the change is on disk: the new object (None when deleted) and the
    /// one it replaced. With `dry_run`, everything is checked and nothing kept.
    pub async fn mutate<F, E>(
        &self,
        resource: &str,
        ns: &str,
        name: &str,
        dry_run: bool,
        f: F,
    ) -> Result<(Option<Arc<Obj>>, Option<Arc<Obj>>), E>
    where
        F: FnOnce(Option<&Arc<Obj>>, &StoreTxn) -> Result<Change, E>,
        E: From<StoreError>,
    {
        let (rx, result, prev) = {
            let mut st = self.state.lock().expect("store lock");
            let key = (ns.to_string(), name.to_string());
            let cur = st.objects.get(resource).and_then(|m| m.get(&key)).cloned();
            let change = {
                let txn = StoreTxn {
                    objects: &st.objects,
                };
                f(cur.as_ref(), &txn)?
            };
            let (kind, value) = match (change, &cur) {
                (Change::Keep, c) => return Ok((c.clone(), c.clone())),
                (Change::Put(v), None) => (EventType::Added, v),
                (Change::Put(v), Some(_)) => (EventType::Modified, v),
                (Change::Delete, Some(c)) => (EventType::Deleted, c.value.clone()),
                (Change::Delete, None) => return Err(StoreError::NotFound.into()),
            };
            let rv = st.rv + 1;
            let mut value = value;
            if dry_run {
                if kind != EventType::Deleted {
                    if let Some(c) = &cur {
                        value["metadata"]["resourceVersion"] = Value::String(c.rv.to_string());
                    }
                    return Ok((
                        Some(Obj::new(value, cur.as_ref().map(|c| c.rv).unwrap_or(0))),
                        cur,
                    ));
                }
                return Ok((None, cur));
            }
            st.rv = rv;
            value["metadata"]["resourceVersion"] = Value::String(rv.to_string());
            let obj = Obj::new(value, rv);
            let res: Arc<str> = st
                .objects
                .keys()
                .find(|k| &***k == resource)
                .cloned()
                .unwrap_or_else(|| Arc::from(resource));
            let m = st.objects.entry(res.clone()).or_default();
            if kind == EventType::Deleted {
                m.remove(&key);
            } else {
                m.insert(key, obj.clone());
            }
            let (done_tx, done_rx) = oneshot::channel();
            let event = Event {
                rv,
                kind,
                resource: res,
                obj: obj.clone(),
                prev: cur.clone(),
            };
            self.commit_tx
                .send(Pending {
                    event,
                    key: obj_key(resource, ns, name),
                    done: Some(done_tx),
                })
                .map_err(|_| StoreError::Db("store is closed".into()))?;
            (
                done_rx,
                if kind == EventType::Deleted {
                    None
                } else {
                    Some(obj)
                },
                cur,
            )
        };
        rx.await
            .map_err(|_| StoreError::Db("store committer stopped".into()))??;
        Ok((result, prev))
    }
}

/// What a mutation may look at while it holds the write lock (to check
/// uniqueness, e.g. of a ClusterIP, against every object).
pub struct StoreTxn<'a> {
    objects: &'a HashMap<Arc<str>, BTreeMap<ObjKey, Arc<Obj>>>,
}

impl StoreTxn<'_> {
    /// All objects of a resource.
    pub fn all(&self, resource: &str) -> impl Iterator<Item = &Arc<Obj>> {
        self.objects
            .get(resource)
            .into_iter()
            .flat_map(|m| m.values())
    }
}

fn committer(db: Database, rx: std::sync::mpsc::Receiver<Pending>, store: std::sync::Weak<Store>) {
    let mut log_len = {
        let r = db.begin_read().ok();
        r.and_then(|r| r.open_table(EVENTS).ok())
            .and_then(|t| t.len().ok())
            .unwrap_or(0) as usize
    };
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let keep = store.upgrade().map(|s| s.log_len).unwrap_or(EVENT_LOG_LEN);
        let res = write_batch(&db, &batch, &mut log_len, keep);
        let Some(store) = store.upgrade() else { return };
        match res {
            Ok(()) => {
                let mut log = store.log.lock().expect("log lock");
                for p in &batch {
                    log.events.push_back(p.event.clone());
                    log.published = p.event.rv;
                    let _ = store.tx.send(p.event.clone());
                }
                while log.events.len() > store.log_len {
                    if let Some(e) = log.events.pop_front() {
                        log.start = e.rv;
                    }
                }
                drop(log);
                for p in &mut batch {
                    if let Some(d) = p.done.take() {
                        let _ = d.send(Ok(()));
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed");
                for p in &mut batch {
                    if let Some(d) = p.done.take() {
                        let _ = d.send(Err(StoreError::Db(e.to_string())));
                    }
                }
            }
        }
    }
}

fn write_batch(
    db: &Database,
    batch: &[Pending],
    log_len: &mut usize,
    keep: usize,
) -> Result<(), StoreError> {
    let w = db!(db.begin_write())?;
    {
        let mut objects = db!(w.open_table(OBJECTS))?;
        let mut events = db!(w.open_table(EVENTS))?;
        let mut meta = db!(w.open_table(META))?;
        for p in batch {
            let e = &p.event;
            if e.kind == EventType::Deleted {
                db!(objects.remove(p.key.as_str()))?;
            } else {
                db!(objects.insert(p.key.as_str(), &e.obj.json[..]))?;
            }
            let rec = format!(
                "{{\"type\":\"{}\",\"resource\":{},\"object\":{}}}",
                e.kind.as_str(),
                serde_json::to_string(&*e.resource).expect("string"),
                std::str::from_utf8(&e.obj.json).expect("json is utf-8")
            );
            db!(events.insert(e.rv, rec.as_bytes()))?;
            *log_len += 1;
        }
        if let Some(last) = batch.last() {
            db!(meta.insert("rv", last.event.rv))?;
        }
        if *log_len > keep + keep.min(4096) {
            let cut = *log_len - keep;
            let first = db!(events.first())?.map(|(k, _)| k.value());
            if let Some(first) = first {
                let upto = first + cut as u64;
                db!(events.retain_in(..upto, |_, _| false))?;
                *log_len = db!(events.len())? as usize;
            }
        }
    }
    db!(w.commit())?;
    Ok(())
}
