//! Label selectors (the `?labelSelector=` string grammar and the
//! `LabelSelector` object) and field selectors.

use serde_json::{Map, Value};

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Req {
    /// key = v / key == v / key in (v...)
    In(String, Vec<String>),
    /// key != v / key notin (v...)
    NotIn(String, Vec<String>),
    /// key
    Exists(String),
    /// !key
    NotExists(String),
    /// key > n
    Gt(String, i64),
    /// key < n
    Lt(String, i64),
}

/// A parsed label selector: all requirements must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Req>);

/// A selector that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn check_key(k: &str) -> Result<String, SelectorError> {
    let k = k.trim();
    if k.is_empty() || k.contains(|c: char| c.is_whitespace() || "=!(),<>".contains(c)) {
        return Err(SelectorError(format!("invalid label key \"{k}\"")));
    }
    Ok(k.to_string())
}

fn check_value(v: &str) -> Result<String, SelectorError> {
    let v = v.trim();
    if v.contains(|c: char| c.is_whitespace() || "=!(),<>".contains(c)) {
        return Err(SelectorError(format!("invalid label value: \"{v}\"")));
    }
    Ok(v.to_string())
}

fn set_values(rest: &str) -> Result<Vec<String>, SelectorError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| SelectorError(format!("found '{rest}', expected: '('")))?;
    inner.split(',').map(check_value).collect()
}

impl LabelSelector {
    /// Parses `a=b,c!=d,e in (f,g),h notin (i),j,!k,l>1`.
    pub fn parse(s: &str) -> Result<LabelSelector, SelectorError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top(s) {
            let p = part.trim();
            if p.is_empty() {
                return Err(SelectorError("found '', expected: identifier".into()));
            }
            let words: Vec<&str> = p
                .splitn(3, char::is_whitespace)
                .filter(|w| !w.is_empty())
                .collect();
            if let Some(k) = p.strip_prefix('!') {
                reqs.push(Req::NotExists(check_key(k)?));
            } else if let Some((k, v)) = p.split_once("!=") {
                reqs.push(Req::NotIn(check_key(k)?, vec![check_value(v)?]));
            } else if let Some((k, v)) = p.split_once("==") {
                reqs.push(Req::In(check_key(k)?, vec![check_value(v)?]));
            } else if let Some((k, v)) = p.split_once('=') {
                reqs.push(Req::In(check_key(k)?, vec![check_value(v)?]));
            } else if let Some((k, v)) = p.split_once('>') {
                let n = v.trim().parse().map_err(|_| {
                    SelectorError(format!(
                        "for 'Gt', 'Lt' operators, the value must be an integer: {p}"
                    ))
                })?;
                reqs.push(Req::Gt(check_key(k)?, n));
            } else if let Some((k, v)) = p.split_once('<') {
                let n = v.trim().parse().map_err(|_| {
                    SelectorError(format!(
                        "for 'Gt', 'Lt' operators, the value must be an integer: {p}"
                    ))
                })?;
                reqs.push(Req::Lt(check_key(k)?, n));
            } else if words.len() >= 2 && words[1] == "in" {
                let rest = p[p.find(" in").map(|i| i + 3).unwrap_or(p.len())..].to_string();
                reqs.push(Req::In(check_key(words[0])?, set_values(&rest)?));
            } else if words.len() >= 2 && words[1] == "notin" {
                let rest = p[p.find(" notin").map(|i| i + 6).unwrap_or(p.len())..].to_string();
                reqs.push(Req::NotIn(check_key(words[0])?, set_values(&rest)?));
            } else if words.len() == 1 {
                reqs.push(Req::Exists(check_key(p)?));
            } else {
                return Err(SelectorError(p.to_string()));
            }
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether labels satisfy every requirement.
    pub fn matches(&self, labels: &Map<String, Value>) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Req::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            Req::NotIn(k, vs) => get(k).is_none_or(|v| !vs.iter().any(|x| x == v)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
            Req::Gt(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            Req::Lt(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        })
    }
}

/// Whether labels match a `LabelSelector` object (matchLabels and
/// matchExpressions). An empty selector matches everything.
pub fn label_selector_matches(sel: &Value, labels: &Map<String, Value>) -> bool {
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    let ml = sel["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| get(k) == v.as_str());
    let me = sel["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let k = e["key"].as_str().unwrap_or("");
            let vals: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e["operator"].as_str().unwrap_or("") {
                "In" => get(k).is_some_and(|v| vals.contains(&v)),
                "NotIn" => get(k).is_none_or(|v| !vals.contains(&v)),
                "Exists" => get(k).is_some(),
                "DoesNotExist" => get(k).is_none(),
                _ => false,
            }
        });
    ml && me
}

/// The string form of a `LabelSelector` object, as kubectl prints it.
pub fn label_selector_string(sel: &Value) -> String {
    let mut parts: Vec<String> = sel["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let k = e["key"].as_str().unwrap_or("");
        let vals: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(match e["operator"].as_str().unwrap_or("") {
            "In" => format!("{k} in ({})", vals.join(",")),
            "NotIn" => format!("{k} notin ({})", vals.join(",")),
            "Exists" => k.to_string(),
            "DoesNotExist" => format!("!{k}"),
            _ => continue,
        });
    }
    parts.join(",")
}

/// A parsed field selector: `f=v`, `f==v`, `f!=v`, comma separated.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(pub Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses a field selector; (field, equal?, value).
    pub fn parse(s: &str) -> Result<FieldSelector, SelectorError> {
        let mut out = Vec::new();
        for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (f, eq, v) = if let Some((f, v)) = p.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = p.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = p.split_once('=') {
                (f, true, v)
            } else {
                return Err(SelectorError(format!(
                    "invalid selector: '{p}'; can't understand '{p}'"
                )));
            };
            out.push((f.trim().to_string(), eq, v.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn every_operator() {
        let l = labels(json!({"app": "web", "tier": "front", "n": "5"}));
        for (sel, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app in (web,db)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("missing!=x", true),
            ("n>4", true),
            ("n<5", false),
            ("app=web,tier in (front, back)", true),
            ("app=web,tier=back", false),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&l),
                want,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("a in x").is_err());
        assert!(LabelSelector::parse("a=b c").is_err());
        assert!(LabelSelector::parse(",").is_err());
    }

    #[test]
    fn selector_objects() {
        let l = labels(json!({"app": "web"}));
        let sel = json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]});
        assert!(label_selector_matches(&sel, &l));
        assert_eq!(label_selector_string(&sel), "app=web,!x");
        assert!(!label_selector_matches(
            &json!({"matchLabels": {"app": "db"}}),
            &l
        ));
    }
}
