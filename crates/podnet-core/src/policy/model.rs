//! The NetworkPolicy semantics of `networking.k8s.io/v1`, read straight from
//! the API: which pods a policy selects, which peers and ports a rule admits,
//! and the verdict for one connection. The planner compiles the same objects
//! into sets; this module is the reference it is held against, and the model
//! behind `expected_matrix`.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::PolicyError;
pub use super::labels::{LabelSource, Labels, intern};

/// The label every namespace carries with its own name (set by the API server).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A transport protocol a NetworkPolicy port can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Proto {
    /// TCP (the API's default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP (rules are built; this kernel cannot carry it).
    Sctp,
}

impl Proto {
    /// Parses the API spelling (`TCP`, `UDP`, `SCTP`); absent means TCP.
    pub fn parse(s: Option<&str>) -> Result<Self, PolicyError> {
        match s.unwrap_or("TCP") {
            "TCP" => Ok(Proto::Tcp),
            "UDP" => Ok(Proto::Udp),
            "SCTP" => Ok(Proto::Sctp),
            other => Err(PolicyError::Invalid(format!("unknown protocol {other:?}"))),
        }
    }

    /// The nft keyword (`tcp`, `udp`, `sctp`).
    pub fn nft(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        })
    }
}

/// The direction a policy isolates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Direction {
    /// Traffic arriving at the selected pod.
    Ingress,
    /// Traffic leaving the selected pod.
    Egress,
}

impl Direction {
    /// Lower-case name, as used in nft set names and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// `namespace/name` of a pod: how matrices and metrics name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct PodKey {
    /// The pod's namespace (interned: shared by its pods).
    #[serde(serialize_with = "serialize_str")]
    pub namespace: Arc<str>,
    /// The pod's name (shared with the world's index).
    #[serde(serialize_with = "serialize_str")]
    pub name: Arc<str>,
}

fn serialize_str<S: serde::Serializer>(s: &Arc<str>, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s)
}

impl PodKey {
    /// The key of `namespace/name`.
    pub fn new(namespace: &str, name: &str) -> Self {
        PodKey {
            namespace: intern(namespace),
            name: Arc::from(name),
        }
    }
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A container port with a name, the target of a named policy port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    /// The port's name (`IANA_SVC_NAME`), interned.
    pub name: Arc<str>,
    /// Its protocol.
    pub proto: Proto,
    /// Its number.
    pub port: u16,
}

/// The facts of a pod that policy depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    /// Namespace and name.
    pub key: PodKey,
    /// The pod's labels.
    pub labels: Labels,
    /// Its IPv4 address, once it has one.
    pub ip: Option<Ipv4Addr>,
    /// The node it runs on (interned).
    pub node: Option<Arc<str>>,
    /// hostNetwork pods are never selected and never matched as pod peers.
    pub host_network: bool,
    /// Named container ports, for named policy ports.
    pub named_ports: Vec<NamedPort>,
}

impl PodFacts {
    /// Extracts the facts from a Pod object.
    pub fn from_pod(pod: &Pod) -> Self {
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let ip = status.and_then(|s| {
            let mut ips: Vec<&str> = s.pod_ip.iter().map(String::as_str).collect();
            if let Some(list) = &s.pod_ips {
                ips.extend(list.iter().map(|p| p.ip.as_str()));
            }
            ips.into_iter().find_map(|s| s.parse::<Ipv4Addr>().ok())
        });
        let mut named_ports = Vec::new();
        for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
            for p in c.ports.as_deref().unwrap_or_default() {
                if let (Some(name), Ok(proto), Ok(port)) = (
                    &p.name,
                    Proto::parse(p.protocol.as_deref()),
                    u16::try_from(p.container_port),
                ) {
                    named_ports.push(NamedPort {
                        name: intern(name),
                        proto,
                        port,
                    });
                }
            }
        }
        named_ports.shrink_to_fit();
        PodFacts {
            key: PodKey::new(
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                pod.metadata.name.as_deref().unwrap_or_default(),
            ),
            labels: pod
                .metadata
                .labels
                .as_ref()
                .map(Labels::from_map)
                .unwrap_or_default(),
            ip,
            node: spec.and_then(|s| s.node_name.as_deref()).map(intern),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            named_ports,
        }
    }

    /// The numbers a named port resolves to on this pod for `proto`.
    pub fn resolve(&self, name: &str, proto: Proto) -> Option<u16> {
        self.named_ports
            .iter()
            .find(|p| &*p.name == name && p.proto == proto)
            .map(|p| p.port)
    }

    /// Whether this pod can be a pod peer or a policy target at all.
    fn is_policy_pod(&self) -> bool {
        !self.host_network && self.ip.is_some()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

/// A compiled label selector (`matchLabels` AND `matchExpressions`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    labels: Vec<(String, String)>,
    exprs: Vec<(String, Op)>,
}

impl Selector {
    /// Compiles a selector; an unknown operator is an error (fail closed).
    pub fn compile(sel: &LabelSelector) -> Result<Self, PolicyError> {
        let labels = sel
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut exprs = Vec::new();
        for e in sel.match_expressions.iter().flatten() {
            let mut values = e.values.clone().unwrap_or_default();
            values.sort();
            let op = match e.operator.as_str() {
                "In" => Op::In(values),
                "NotIn" => Op::NotIn(values),
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => {
                    return Err(PolicyError::Invalid(format!(
                        "unknown selector operator {other:?}"
                    )));
                }
            };
            exprs.push((e.key.clone(), op));
        }
        Ok(Selector { labels, exprs })
    }

    /// One `key=value` every selected object must carry, if any: lets a
    /// planner index selectors instead of trying each one.
    pub fn required_label(&self) -> Option<(&str, &str)> {
        self.labels.first().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether `labels` satisfy every requirement (empty selects all).
    pub fn matches(&self, labels: &impl LabelSource) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| labels.label(k) == Some(v.as_str()))
            && self.exprs.iter().all(|(k, op)| match op {
                Op::In(vs) => labels.label(k).is_some_and(|v| vs.iter().any(|x| x == v)),
                Op::NotIn(vs) => labels.label(k).is_none_or(|v| !vs.iter().any(|x| x == v)),
                Op::Exists => labels.label(k).is_some(),
                Op::DoesNotExist => labels.label(k).is_none(),
            })
    }
}

/// Which namespaces a pod peer draws from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NsMatch {
    /// Only the policy's own namespace (no namespaceSelector).
    Same(String),
    /// Every namespace whose labels match.
    Labels(Selector),
}

/// One compiled `NetworkPolicyPeer`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Pods chosen by namespace and pod selectors (AND).
    Pods {
        /// Which namespaces.
        ns: NsMatch,
        /// Which pods in them.
        pods: Selector,
    },
    /// An address block minus its exceptions.
    Block {
        /// The block.
        cidr: Ipv4Net,
        /// Holes in it.
        except: Vec<Ipv4Net>,
    },
    /// A peer that can never match (an IPv6 block on this IPv4 dataplane,
    /// or an empty peer).
    Nothing,
}

/// A compiled policy port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortMatch {
    /// Every port of the protocol.
    Any,
    /// `port` .. `endPort` (a single port when equal).
    Range(u16, u16),
    /// A container port name, resolved on the destination pod.
    Named(String),
}

/// A compiled `NetworkPolicyPort`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    /// Protocol.
    pub proto: Proto,
    /// Port(s).
    pub port: PortMatch,
}

/// One compiled ingress or egress rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// `None`: every peer (the field was empty or missing).
    pub peers: Option<Vec<Peer>>,
    /// `None`: every port and protocol.
    pub ports: Option<Vec<PortSpec>>,
}

/// A NetworkPolicy compiled once for repeated evaluation.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    /// Namespace of the policy (and of the pods it selects).
    pub namespace: String,
    /// The policy's name.
    pub name: String,
    /// `spec.podSelector`.
    pub selector: Selector,
    /// `Some(rules)` when the policy isolates for ingress (empty: deny all).
    pub ingress: Option<Vec<Rule>>,
    /// `Some(rules)` when the policy isolates for egress (empty: deny all).
    pub egress: Option<Vec<Rule>>,
}

impl CompiledPolicy {
    /// Compiles a NetworkPolicy, applying the API's `policyTypes` default.
    pub fn compile(np: &NetworkPolicy) -> Result<Self, PolicyError> {
        let namespace = np
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = np.metadata.name.clone().unwrap_or_default();
        let ctx = |e: PolicyError| PolicyError::Invalid(format!("policy {namespace}/{name}: {e}"));
        let spec = np.spec.clone().unwrap_or_default();
        let selector =
            Selector::compile(&spec.pod_selector.clone().unwrap_or_default()).map_err(ctx)?;
        let types: Vec<String> = match &spec.policy_types {
            Some(t) if !t.is_empty() => t.clone(),
            _ => {
                let mut t = vec!["Ingress".to_string()];
                if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                    t.push("Egress".into());
                }
                t
            }
        };
        for t in &types {
            if t != "Ingress" && t != "Egress" {
                return Err(ctx(PolicyError::Invalid(format!(
                    "unknown policyType {t:?}"
                ))));
            }
        }
        let ingress = if types.iter().any(|t| t == "Ingress") {
            let mut rules = Vec::new();
            for r in spec.ingress.iter().flatten() {
                rules.push(
                    compile_rule(&namespace, r.from.as_deref(), r.ports.as_deref()).map_err(ctx)?,
                );
            }
            Some(rules)
        } else {
            None
        };
        let egress = if types.iter().any(|t| t == "Egress") {
            let mut rules = Vec::new();
            for r in spec.egress.iter().flatten() {
                rules.push(
                    compile_rule(&namespace, r.to.as_deref(), r.ports.as_deref()).map_err(ctx)?,
                );
            }
            Some(rules)
        } else {
            None
        };
        Ok(CompiledPolicy {
            namespace,
            name,
            selector,
            ingress,
            egress,
        })
    }

    /// `namespace/name`, how drop counters name the policy.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The rules for `dir`, if this policy isolates in that direction.
    pub fn rules(&self, dir: Direction) -> Option<&[Rule]> {
        match dir {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    /// Whether the policy selects `pod` (same namespace, selector matches,
    /// not hostNetwork).
    pub fn selects(&self, pod: &PodFacts) -> bool {
        *pod.key.namespace == *self.namespace
            && !pod.host_network
            && self.selector.matches(&pod.labels)
    }
}

fn compile_rule(
    namespace: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
) -> Result<Rule, PolicyError> {
    let peers = match peers {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .map(|p| compile_peer(namespace, p))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let ports = match ports {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .map(compile_port)
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(Rule { peers, ports })
}

fn compile_peer(namespace: &str, p: &NetworkPolicyPeer) -> Result<Peer, PolicyError> {
    if let Some(b) = &p.ip_block {
        if b.cidr.contains(':') {
            return Ok(Peer::Nothing);
        }
        let cidr: Ipv4Net = b
            .cidr
            .parse()
            .map_err(|_| PolicyError::Invalid(format!("bad ipBlock cidr {:?}", b.cidr)))?;
        let mut except = Vec::new();
        for e in b.except.iter().flatten() {
            if e.contains(':') {
                continue;
            }
            except.push(
                e.parse::<Ipv4Net>()
                    .map_err(|_| PolicyError::Invalid(format!("bad ipBlock except {e:?}")))?
                    .trunc(),
            );
        }
        except.sort();
        return Ok(Peer::Block {
            cidr: cidr.trunc(),
            except,
        });
    }
    let ns = match &p.namespace_selector {
        Some(s) => NsMatch::Labels(Selector::compile(s)?),
        None => NsMatch::Same(namespace.to_string()),
    };
    match (&p.pod_selector, &p.namespace_selector) {
        (None, None) => Ok(Peer::Nothing),
        (pods, _) => Ok(Peer::Pods {
            ns,
            pods: Selector::compile(&pods.clone().unwrap_or_default())?,
        }),
    }
}

fn compile_port(p: &NetworkPolicyPort) -> Result<PortSpec, PolicyError> {
    let proto = Proto::parse(p.protocol.as_deref())?;
    let port = match (&p.port, p.end_port) {
        (None, _) => PortMatch::Any,
        (Some(IntOrString::Int(n)), end) => {
            let lo = u16::try_from(*n)
                .map_err(|_| PolicyError::Invalid(format!("port {n} out of range")))?;
            let hi = match end {
                Some(e) => u16::try_from(e)
                    .ok()
                    .filter(|e| *e >= lo)
                    .ok_or_else(|| PolicyError::Invalid(format!("endPort {e} below port {lo}")))?,
                None => lo,
            };
            PortMatch::Range(lo, hi)
        }
        (Some(IntOrString::String(s)), _) => match s.parse::<u16>() {
            Ok(n) => PortMatch::Range(n, n),
            Err(_) => PortMatch::Named(s.clone()),
        },
    };
    Ok(PortSpec { proto, port })
}

/// The cluster as policy sees it: pods, namespace labels, compiled policies.
#[derive(Clone, Debug)]
pub struct PolicyWorld {
    /// Every pod.
    pub pods: Vec<PodFacts>,
    /// Labels of every namespace by name (with the name label).
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Every policy.
    pub policies: Vec<CompiledPolicy>,
    /// Where each pod is in `pods` (the first of a key), so an event
    /// costs a lookup, not a scan of every pod.
    index: HashMap<PodKey, usize>,
}

/// Why a connection is allowed or denied in one direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No policy selects the pod for this direction.
    Open,
    /// Isolated, and a rule of these policies admits the connection.
    Allowed(Vec<String>),
    /// Isolated by these policies, and none admits it.
    Denied(Vec<String>),
}

impl Verdict {
    /// Whether the connection passes this direction.
    pub fn allows(&self) -> bool {
        !matches!(self, Verdict::Denied(_))
    }
}

impl PolicyWorld {
    /// Builds the world from API objects; a policy the API could not have
    /// accepted is an error, so the caller keeps its last good state.
    pub fn new(
        pods: &[Pod],
        namespaces: &[Namespace],
        policies: &[NetworkPolicy],
    ) -> Result<Self, PolicyError> {
        let mut ns = BTreeMap::new();
        for n in namespaces {
            let name = n.metadata.name.clone().unwrap_or_default();
            let mut labels = n.metadata.labels.clone().unwrap_or_default();
            labels
                .entry(NAMESPACE_NAME_LABEL.to_string())
                .or_insert_with(|| name.clone());
            ns.insert(name, labels);
        }
        let pods: Vec<PodFacts> = pods.iter().map(PodFacts::from_pod).collect();
        for p in &pods {
            ns.entry(p.key.namespace.to_string()).or_insert_with(|| {
                BTreeMap::from([(
                    NAMESPACE_NAME_LABEL.to_string(),
                    p.key.namespace.to_string(),
                )])
            });
        }
        let mut index = HashMap::with_capacity(pods.len());
        for (i, p) in pods.iter().enumerate() {
            index.entry(p.key.clone()).or_insert(i);
        }
        Ok(PolicyWorld {
            pods,
            index,
            namespaces: ns,
            policies: policies
                .iter()
                .map(CompiledPolicy::compile)
                .collect::<Result<_, _>>()?,
        })
    }

    /// Adds or replaces a pod (a watch event), keyed by namespace/name.
    /// Returns whether the plan can differ: most pod updates are status
    /// (conditions, container states) and change none of its facts, and a
    /// pod without an address is in no rule and no set, so changes before
    /// it has one do not count either.
    pub fn upsert_pod(&mut self, pod: &Pod) -> bool {
        self.upsert_pod_facts(PodFacts::from_pod(pod))
    }

    /// [`PolicyWorld::upsert_pod`] with the pod's facts already taken (a
    /// watcher can keep only these, not the whole Pod).
    pub fn upsert_pod_facts(&mut self, facts: PodFacts) -> bool {
        if !self.namespaces.contains_key(&*facts.key.namespace) {
            self.namespaces.insert(
                facts.key.namespace.to_string(),
                BTreeMap::from([(
                    NAMESPACE_NAME_LABEL.to_string(),
                    facts.key.namespace.to_string(),
                )]),
            );
        }
        match self.index.get(&facts.key) {
            Some(&i) => {
                let p = &mut self.pods[i];
                let matters = *p != facts && (p.ip.is_some() || facts.ip.is_some());
                *p = facts;
                matters
            }
            None => {
                let matters = facts.ip.is_some();
                self.index.insert(facts.key.clone(), self.pods.len());
                self.pods.push(facts);
                matters
            }
        }
    }

    /// Forgets a deleted pod; returns whether the plan can differ.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> bool {
        let key = PodKey::new(namespace, name);
        let Some(i) = self.index.remove(&key) else {
            return false;
        };
        // The pods keep their order (plans iterate them in it).
        let gone = self.pods.remove(i);
        for j in self.index.values_mut() {
            if *j > i {
                *j -= 1;
            }
        }
        let mut matters = gone.ip.is_some();
        // A key given twice to `new` (never by events): the others go too.
        if self.pods.iter().any(|p| p.key == key) {
            self.pods.retain(|p| {
                let dup = p.key == key;
                matters |= dup && p.ip.is_some();
                !dup
            });
            self.index.clear();
            for (j, p) in self.pods.iter().enumerate() {
                self.index.entry(p.key.clone()).or_insert(j);
            }
        }
        matters
    }

    /// Adds or replaces a namespace's labels (with its name label); returns
    /// whether they changed.
    pub fn upsert_namespace(&mut self, ns: &Namespace) -> bool {
        let name = ns.metadata.name.clone().unwrap_or_default();
        let mut labels = ns.metadata.labels.clone().unwrap_or_default();
        labels
            .entry(NAMESPACE_NAME_LABEL.to_string())
            .or_insert_with(|| name.clone());
        self.namespaces.insert(name, labels.clone()) != Some(labels)
    }

    /// Forgets a deleted namespace (its pods, if any remain, keep its name).
    pub fn remove_namespace(&mut self, name: &str) {
        if self.pods.iter().any(|p| &*p.key.namespace == name) {
            self.namespaces.insert(
                name.to_string(),
                BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), name.to_string())]),
            );
        } else {
            self.namespaces.remove(name);
        }
    }

    /// Adds or replaces a policy; an invalid one is an error and leaves the
    /// world as it was.
    pub fn upsert_policy(&mut self, np: &NetworkPolicy) -> Result<(), PolicyError> {
        let c = CompiledPolicy::compile(np)?;
        match self
            .policies
            .iter_mut()
            .find(|p| p.namespace == c.namespace && p.name == c.name)
        {
            Some(p) => *p = c,
            None => self.policies.push(c),
        }
        Ok(())
    }

    /// Forgets a deleted policy.
    pub fn remove_policy(&mut self, namespace: &str, name: &str) {
        self.policies
            .retain(|p| !(p.namespace == namespace && p.name == name));
    }

    /// Labels of `namespace` (every pod's namespace is present: one the
    /// API did not list carries only its name label).
    pub fn namespace_labels(&self, namespace: &str) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.namespaces.get(namespace).unwrap_or(&EMPTY)
    }

    /// Whether `peer` admits the address `addr` (which is `pod`'s, if a pod).
    pub fn peer_matches(&self, peer: &Peer, addr: Ipv4Addr, pod: Option<&PodFacts>) -> bool {
        match peer {
            Peer::Nothing => false,
            Peer::Block { cidr, except } => {
                cidr.contains(&addr) && !except.iter().any(|e| e.contains(&addr))
            }
            Peer::Pods { ns, pods } => {
                let Some(pod) = pod.filter(|p| p.is_policy_pod()) else {
                    return false;
                };
                let ns_ok = match ns {
                    NsMatch::Same(n) => **n == *pod.key.namespace,
                    NsMatch::Labels(sel) => sel.matches(self.namespace_labels(&pod.key.namespace)),
                };
                ns_ok && pods.matches(&pod.labels)
            }
        }
    }

    /// The verdict of `dir` for a connection from `src` to `dst` on
    /// `proto`/`port`; the isolated side is `dst` for ingress and `src` for
    /// egress, and named ports resolve on the destination pod.
    pub fn verdict(
        &self,
        dir: Direction,
        src: (Ipv4Addr, Option<&PodFacts>),
        dst: (Ipv4Addr, Option<&PodFacts>),
        proto: Proto,
        port: u16,
    ) -> Verdict {
        self.explain(dir, src, dst, proto, port).verdict()
    }
}

/// Which policies decide one direction of a connection, down to the rule:
/// what `podnet trace` and `podnet doctor` print, so an operator learns not
/// only the verdict but the policy and rule behind it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Explanation {
    /// The policies that isolate the subject pod in this direction
    /// (`namespace/name`); empty: not isolated, the connection is open.
    pub isolating: Vec<String>,
    /// `(policy, rule index)` of every rule that admits the connection
    /// (index into `spec.ingress` or `spec.egress`).
    pub admitting: Vec<(String, usize)>,
}

impl Explanation {
    /// The same verdict [`PolicyWorld::verdict`] gives.
    pub fn verdict(&self) -> Verdict {
        if self.isolating.is_empty() {
            Verdict::Open
        } else if self.admitting.is_empty() {
            Verdict::Denied(self.isolating.clone())
        } else {
            let mut names: Vec<String> = self.admitting.iter().map(|(p, _)| p.clone()).collect();
            names.dedup();
            Verdict::Allowed(names)
        }
    }
}

impl PolicyWorld {
    /// [`PolicyWorld::verdict`], with the admitting rules named.
    pub fn explain(
        &self,
        dir: Direction,
        src: (Ipv4Addr, Option<&PodFacts>),
        dst: (Ipv4Addr, Option<&PodFacts>),
        proto: Proto,
        port: u16,
    ) -> Explanation {
        let (subject, remote) = match dir {
            Direction::Ingress => (dst.1, src),
            Direction::Egress => (src.1, dst),
        };
        let mut out = Explanation::default();
        let Some(subject) = subject.filter(|p| !p.host_network) else {
            return out;
        };
        for pol in &self.policies {
            let Some(rules) = pol.rules(dir) else {
                continue;
            };
            if !pol.selects(subject) {
                continue;
            }
            out.isolating.push(pol.id());
            for (i, r) in rules.iter().enumerate() {
                let peer_ok = r.peers.as_ref().is_none_or(|peers| {
                    peers
                        .iter()
                        .any(|p| self.peer_matches(p, remote.0, remote.1))
                });
                let port_ok = r
                    .ports
                    .as_ref()
                    .is_none_or(|ports| ports.iter().any(|s| port_matches(s, proto, port, dst.1)));
                if peer_ok && port_ok {
                    out.admitting.push((pol.id(), i));
                }
            }
        }
        out
    }
}

/// Whether a port spec admits `proto`/`port` towards `dst` (named ports
/// resolve on `dst`; a non-pod destination has no names).
pub fn port_matches(spec: &PortSpec, proto: Proto, port: u16, dst: Option<&PodFacts>) -> bool {
    spec.proto == proto
        && match &spec.port {
            PortMatch::Any => true,
            PortMatch::Range(lo, hi) => (*lo..=*hi).contains(&port),
            PortMatch::Named(name) => dst.and_then(|d| d.resolve(name, proto)) == Some(port),
        }
}

/// One probe of a truth table: a protocol and a destination port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Probe {
    /// Protocol.
    pub proto: Proto,
    /// Destination port.
    pub port: u16,
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.proto)
    }
}

/// A reachability truth table: for each (from, to, probe), allowed or not.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Matrix {
    /// Rows and columns, in order.
    pub pods: Vec<PodKey>,
    /// The probes of each cell, in order.
    pub probes: Vec<Probe>,
    /// `cells[(from * pods + to) * probes + probe]`.
    pub cells: Vec<bool>,
}

/// A cell where two matrices disagree.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Mismatch {
    /// Client pod.
    pub from: PodKey,
    /// Server pod.
    pub to: PodKey,
    /// Protocol and port.
    pub probe: Probe,
    /// This matrix's value.
    pub left: bool,
    /// The other matrix's value.
    pub right: bool,
}

impl Matrix {
    /// An all-`false` matrix to fill in (e.g. with live probes).
    pub fn new(pods: Vec<PodKey>, probes: Vec<Probe>) -> Self {
        let cells = vec![false; pods.len() * pods.len() * probes.len()];
        Matrix {
            pods,
            probes,
            cells,
        }
    }

    fn index(&self, from: usize, to: usize, probe: usize) -> usize {
        (from * self.pods.len() + to) * self.probes.len() + probe
    }

    /// The cell by indices.
    pub fn get(&self, from: usize, to: usize, probe: usize) -> bool {
        self.cells[self.index(from, to, probe)]
    }

    /// Sets the cell by indices.
    pub fn set(&mut self, from: usize, to: usize, probe: usize, allowed: bool) {
        let i = self.index(from, to, probe);
        self.cells[i] = allowed;
    }

    /// Every cell where `other` (same pods and probes) differs.
    pub fn mismatches(&self, other: &Matrix) -> Vec<Mismatch> {
        let mut out = Vec::new();
        if self.pods != other.pods || self.probes != other.probes {
            return vec![];
        }
        for f in 0..self.pods.len() {
            for t in 0..self.pods.len() {
                for p in 0..self.probes.len() {
                    let (l, r) = (self.get(f, t, p), other.get(f, t, p));
                    if l != r {
                        out.push(Mismatch {
                            from: self.pods[f].clone(),
                            to: self.pods[t].clone(),
                            probe: self.probes[p],
                            left: l,
                            right: r,
                        });
                    }
                }
            }
        }
        out
    }

    /// A plain-text table per probe (rows from, columns to; `.` allowed,
    /// `X` denied), as the upstream e2e suite prints its truth tables.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let width = self
            .pods
            .iter()
            .map(|p| p.to_string().len())
            .max()
            .unwrap_or(1);
        for (pi, probe) in self.probes.iter().enumerate() {
            s.push_str(&format!("{probe}\n{:width$}", ""));
            for to in &self.pods {
                s.push_str(&format!(" {to:>width$}"));
            }
            s.push('\n');
            for (f, from) in self.pods.iter().enumerate() {
                s.push_str(&format!("{from:width$}"));
                for t in 0..self.pods.len() {
                    let c = if self.get(f, t, pi) { "." } else { "X" };
                    s.push_str(&format!(" {c:>width$}"));
                }
                s.push('\n');
            }
        }
        s
    }
}

/// The expected truth table: for every pair of `pods` that have an address
/// and every probe, whether the API's semantics allow the connection
/// (source egress AND destination ingress; a pod always reaches itself).
/// `pods` may be a subset of the cluster: a verdict depends only on the
/// two ends, the namespaces and the policies.
pub fn expected_matrix(
    pods: &[Pod],
    namespaces: &[Namespace],
    policies: &[NetworkPolicy],
    probes: &[Probe],
) -> Result<Matrix, PolicyError> {
    let world = PolicyWorld::new(pods, namespaces, policies)?;
    let members: Vec<&PodFacts> = world.pods.iter().filter(|p| p.ip.is_some()).collect();
    let mut m = Matrix::new(
        members.iter().map(|p| p.key.clone()).collect(),
        probes.to_vec(),
    );
    for (f, from) in members.iter().enumerate() {
        for (t, to) in members.iter().enumerate() {
            for (pi, probe) in probes.iter().enumerate() {
                let allowed = f == t || {
                    let src = (from.ip.expect("filtered"), Some(*from));
                    let dst = (to.ip.expect("filtered"), Some(*to));
                    world
                        .verdict(Direction::Egress, src, dst, probe.proto, probe.port)
                        .allows()
                        && world
                            .verdict(Direction::Ingress, src, dst, probe.proto, probe.port)
                            .allows()
                };
                m.set(f, t, pi, allowed);
            }
        }
    }
    Ok(m)
}
