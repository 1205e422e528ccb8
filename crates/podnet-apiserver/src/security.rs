//! Security: the cluster CA (made at first start and kept in the state
//! directory), the serving certificate signed by it, bearer tokens (admin,
//! per node, and the one the server shows to nodes), and the admin
//! kubeconfig.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Errors while making or reading credentials.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate or key could not be made.
    #[error("certificate: {0}")]
    Cert(String),
    /// A token file line is malformed.
    #[error("{path}:{line}: malformed token line")]
    Token {
        /// The file.
        path: PathBuf,
        /// Line number.
        line: usize,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SecurityError + '_ {
    move |source| SecurityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn cert_err(e: rcgen::Error) -> SecurityError {
    SecurityError::Cert(e.to_string())
}

/// Writes a file readable by its owner only, atomically (temp + rename).
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), SecurityError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "podnet-ca");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2034, 1, 1);
    p
}

/// The cluster CA: its certificate (PEM) and signing key.
pub struct Ca {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    key: KeyPair,
}

impl Ca {
    /// Loads the CA from `dir` (ca.crt, ca.key), making it on first start.
    pub fn load_or_create(dir: &Path) -> Result<Ca, SecurityError> {
        let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        if crt.exists() && key.exists() {
            let cert_pem = std::fs::read_to_string(&crt).map_err(io(&crt))?;
            let key_pem = std::fs::read_to_string(&key).map_err(io(&key))?;
            let key = KeyPair::from_pem(&key_pem).map_err(cert_err)?;
            return Ok(Ca { cert_pem, key });
        }
        let key_pair = KeyPair::generate().map_err(cert_err)?;
        let cert = ca_params().self_signed(&key_pair).map_err(cert_err)?;
        write_private(&key, key_pair.serialize_pem().as_bytes())?;
        write_private(&crt, cert.pem().as_bytes())?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key: key_pair,
        })
    }

    /// A serving certificate for `names` (DNS names or IPs): (cert PEM, key PEM).
    pub fn serving_cert(&self, names: &[String]) -> Result<(String, String), SecurityError> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "kube-apiserver");
        p.distinguished_name = dn;
        p.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName).map_err(cert_err),
            })
            .collect::<Result<_, _>>()?;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2034, 1, 1);
        let key = KeyPair::generate().map_err(cert_err)?;
        let ca_params = ca_params();
        let issuer = Issuer::from_params(&ca_params, &self.key);
        let cert = p.signed_by(&key, &issuer).map_err(cert_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Who a token belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    /// User name ("kubernetes-admin", "system:node:worker").
    pub name: String,
    /// A unique id (the token file's uid column; a ServiceAccount's uid).
    pub uid: String,
    /// Groups ("system:masters", "system:nodes").
    pub groups: Vec<String>,
    /// Extra attributes (a bound token's pod name and uid).
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

impl User {
    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// The bearer tokens the server accepts, backed by `tokens.csv` in the state
/// directory (kube-apiserver's static token file format:
/// `token,user,uid,"group1,group2"`).
#[derive(Clone)]
pub struct Tokens {
    path: PathBuf,
    map: Arc<RwLock<HashMap<String, User>>>,
}

fn random_token() -> String {
    let b: [u8; 24] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn parse_tokens(path: &Path) -> Result<HashMap<String, User>, SecurityError> {
    let mut map = HashMap::new();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(map),
        Err(e) => {
            return Err(SecurityError::Io {
                path: path.to_path_buf(),
                source: e,
            });
        }
    };
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(4, ',');
        let (Some(tok), Some(user), Some(uid)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SecurityError::Token {
                path: path.to_path_buf(),
                line: n + 1,
            });
        };
        let groups = parts
            .next()
            .unwrap_or("")
            .trim_matches('"')
            .split(',')
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect();
        map.insert(
            tok.to_string(),
            User {
                name: user.to_string(),
                uid: uid.to_string(),
                groups,
                extra: Default::default(),
            },
        );
    }
    Ok(map)
}

impl Tokens {
    /// Loads `dir/tokens.csv`, adding an admin token on first start.
    pub fn load_or_create(dir: &Path) -> Result<Tokens, SecurityError> {
        let path = dir.join("tokens.csv");
        let map = parse_tokens(&path)?;
        let t = Tokens {
            path,
            map: Arc::new(RwLock::new(map)),
        };
        if t.token_of("kubernetes-admin").is_none() {
            t.issue("kubernetes-admin", &["system:masters"])?;
        }
        Ok(t)
    }

    /// The user of a token, re-reading the file for tokens issued by
    /// another process (e.g. `podnet-apiserver issue-token`).
    pub fn check(&self, token: &str) -> Option<User> {
        if let Some(u) = self.map.read().expect("tokens lock").get(token) {
            return Some(u.clone());
        }
        let fresh = parse_tokens(&self.path).ok()?;
        let u = fresh.get(token).cloned();
        *self.map.write().expect("tokens lock") = fresh;
        u
    }

    /// The token of a user, if any.
    pub fn token_of(&self, user: &str) -> Option<String> {
        self.map
            .read()
            .expect("tokens lock")
            .iter()
            .find(|(_, u)| u.name == user)
            .map(|(t, _)| t.clone())
    }

    /// Issues (or returns the existing) token of a user.
    pub fn issue(&self, user: &str, groups: &[&str]) -> Result<String, SecurityError> {
        if let Some(t) = self.token_of(user) {
            return Ok(t);
        }
        let mut map = self.map.write().expect("tokens lock");
        let token = random_token();
        map.insert(
            token.clone(),
            User {
                name: user.to_string(),
                uid: user.to_string(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                extra: Default::default(),
            },
        );
        let mut text = String::new();
        for (t, u) in map.iter() {
            text.push_str(&format!(
                "{t},{},{},\"{}\"\n",
                u.name,
                u.name,
                u.groups.join(",")
            ));
        }
        write_private(&self.path, text.as_bytes())?;
        Ok(token)
    }

    /// Issues the token of node `name` (user `system:node:<name>`).
    pub fn issue_node(&self, name: &str) -> Result<String, SecurityError> {
        self.issue(&format!("system:node:{name}"), &["system:nodes"])
    }
}

/// Writes a kubeconfig for `server` with the CA and a token.
pub fn write_kubeconfig(
    path: &Path,
    cluster: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    token: &str,
) -> Result<(), SecurityError> {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: {server}\n  name: {cluster}\ncontexts:\n- context:\n    cluster: {cluster}\n    user: {user}\n  name: {user}@{cluster}\ncurrent-context: {user}@{cluster}\npreferences: {{}}\nusers:\n- name: {user}\n  user:\n    token: {token}\n"
    );
    write_private(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_persists_and_tokens_reload() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let again = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(ca.cert_pem, again.cert_pem);
        let (cert, _) = again
            .serving_cert(&["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        let t = Tokens::load_or_create(dir.path()).unwrap();
        let admin = t.token_of("kubernetes-admin").unwrap();
        let other = Tokens::load_or_create(dir.path()).unwrap();
        let node = other.issue_node("worker").unwrap();
        assert_eq!(t.check(&node).unwrap().name, "system:node:worker");
        assert_eq!(
            t.check(&admin).unwrap().groups,
            vec!["system:masters".to_string()]
        );
        assert!(t.check("nope").is_none());
    }
}
