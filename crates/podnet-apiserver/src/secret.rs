//! Secrets as kube-apiserver keeps them: `stringData` folded into `data`
//! (base64) on every write and dropped, `data` values checked to be base64
//! (a 422 naming `data[key]`, not a decoding error, so the client learns
//! which key is wrong), the keys each type requires, and `immutable`.

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::kinds::FieldError;

/// The type of a Secret that does not say.
pub const OPAQUE: &str = "Opaque";
/// The annotation a `kubernetes.io/service-account-token` Secret must carry.
pub const SA_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
/// The most a Secret's data may hold (kube-apiserver's `MaxSecretSize`).
pub const MAX_SIZE: usize = 1024 * 1024;

const REDACTED: &str = "<secret contents redacted>";

fn decode(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    // Go's decoder skips line breaks inside the text, and so do we.
    let clean: String = s.chars().filter(|c| *c != '\r' && *c != '\n').collect();
    base64::engine::general_purpose::STANDARD.decode(clean)
}

/// Folds `stringData` into `data` (its values win, as in kube-apiserver's
/// conversion), removes it, and checks that every `data` value is base64
/// (re-encoded canonically). Errors name the field; nothing is changed
/// when there are any.
pub fn normalize(obj: &mut Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut data: Map<String, Value> = Map::new();
    match &obj["data"] {
        Value::Null => {}
        Value::Object(m) => {
            for (k, v) in m {
                match v {
                    Value::Null => {
                        data.insert(k.clone(), json!(""));
                    }
                    Value::String(s) => match decode(s) {
                        Ok(b) => {
                            data.insert(
                                k.clone(),
                                json!(base64::engine::general_purpose::STANDARD.encode(b)),
                            );
                        }
                        Err(e) => errs.push(FieldError {
                            reason: "FieldValueInvalid",
                            field: format!("data[{k}]"),
                            message: format!(
                                "Invalid value: \"{REDACTED}\": illegal base64 data: {e}"
                            ),
                        }),
                    },
                    other => errs.push(FieldError {
                        reason: "FieldValueInvalid",
                        field: format!("data[{k}]"),
                        message: format!(
                            "Invalid value: \"{REDACTED}\": must be a base64 string, not {}",
                            json_type(other)
                        ),
                    }),
                }
            }
        }
        other => errs.push(FieldError {
            reason: "FieldValueInvalid",
            field: "data".into(),
            message: format!(
                "Invalid value: \"{REDACTED}\": must be a map of base64 strings, not {}",
                json_type(other)
            ),
        }),
    }
    match &obj["stringData"] {
        Value::Null => {}
        Value::Object(m) => {
            for (k, v) in m {
                match v {
                    Value::String(s) => {
                        data.insert(
                            k.clone(),
                            json!(base64::engine::general_purpose::STANDARD.encode(s)),
                        );
                    }
                    Value::Null => {
                        data.insert(k.clone(), json!(""));
                    }
                    other => errs.push(FieldError {
                        reason: "FieldValueInvalid",
                        field: format!("stringData[{k}]"),
                        message: format!(
                            "Invalid value: \"{REDACTED}\": must be a string, not {}",
                            json_type(other)
                        ),
                    }),
                }
            }
        }
        other => errs.push(FieldError {
            reason: "FieldValueInvalid",
            field: "stringData".into(),
            message: format!(
                "Invalid value: \"{REDACTED}\": must be a map of strings, not {}",
                json_type(other)
            ),
        }),
    }
    if !errs.is_empty() {
        return errs;
    }
    if let Some(m) = obj.as_object_mut() {
        m.remove("stringData");
        if data.is_empty() {
            m.remove("data");
        } else {
            m.insert("data".into(), Value::Object(data));
        }
    }
    errs
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Fills the type a Secret gets when it names none.
pub fn apply_defaults(obj: &mut Value) {
    if obj["type"].as_str().is_none_or(str::is_empty) {
        obj["type"] = json!(OPAQUE);
    }
}

fn config_key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && !k.starts_with("..")
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

fn required(field: String) -> FieldError {
    FieldError {
        reason: "FieldValueRequired",
        field,
        message: "Required value".into(),
    }
}

/// Validates a (normalized, defaulted) Secret as kube-apiserver's
/// `ValidateSecret`: keys, total size, and what each type requires.
pub fn validate(obj: &Value, errs: &mut Vec<FieldError>) {
    let empty = Map::new();
    let data = obj["data"].as_object().unwrap_or(&empty);
    let mut total = 0usize;
    for (k, v) in data {
        if !config_key_ok(k) {
            errs.push(FieldError {
                reason: "FieldValueInvalid",
                field: format!("data[{k}]"),
                message: format!(
                    "Invalid value: \"{k}\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
                ),
            });
        }
        total += v
            .as_str()
            .and_then(|s| decode(s).ok())
            .map_or(0, |b| b.len());
    }
    if total > MAX_SIZE {
        errs.push(FieldError {
            reason: "FieldValueTooLong",
            field: "data".into(),
            message: format!("Too long: may not be more than {MAX_SIZE} bytes"),
        });
    }
    let has = |k: &str| data.contains_key(k);
    let json_ok = |k: &str| {
        data[k]
            .as_str()
            .and_then(|s| decode(s).ok())
            .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).err())
    };
    match obj["type"].as_str().unwrap_or(OPAQUE) {
        "kubernetes.io/service-account-token"
            if obj["metadata"]["annotations"][SA_NAME_ANNOTATION]
                .as_str()
                .is_none_or(str::is_empty) =>
        {
            errs.push(required(format!(
                "metadata.annotations[{SA_NAME_ANNOTATION}]"
            )));
        }
        "kubernetes.io/dockercfg" | "kubernetes.io/dockerconfigjson" => {
            let key = if obj["type"] == "kubernetes.io/dockercfg" {
                ".dockercfg"
            } else {
                ".dockerconfigjson"
            };
            if !has(key) {
                errs.push(required(format!("data[{key}]")));
            } else if let Some(e) = json_ok(key) {
                errs.push(FieldError {
                    reason: "FieldValueInvalid",
                    field: format!("data[{key}]"),
                    message: format!("Invalid value: \"{REDACTED}\": {e}"),
                });
            }
        }
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            errs.push(required("data[username]".into()));
            errs.push(required("data[password]".into()));
        }
        "kubernetes.io/ssh-auth"
            if data
                .get("ssh-privatekey")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty) =>
        {
            errs.push(required("data[ssh-privatekey]".into()));
        }
        "kubernetes.io/tls" => {
            for k in ["tls.crt", "tls.key"] {
                if !has(k) {
                    errs.push(required(format!("data[{k}]")));
                }
            }
        }
        _ => {}
    }
}

/// What an update may not change: the type, and anything of an immutable Secret.
pub fn validate_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    if old["type"] != new["type"] {
        errs.push(FieldError {
            reason: "FieldValueInvalid",
            field: "type".into(),
            message: format!(
                "Invalid value: \"{}\": field is immutable",
                new["type"].as_str().unwrap_or("")
            ),
        });
    }
    if old["immutable"] == json!(true) {
        if new["immutable"] != json!(true) {
            errs.push(FieldError {
                reason: "FieldValueForbidden",
                field: "immutable".into(),
                message: "Forbidden: field is immutable when `immutable` is set".into(),
            });
        }
        if old["data"] != new["data"] {
            errs.push(FieldError {
                reason: "FieldValueForbidden",
                field: "data".into(),
                message: "Forbidden: field is immutable when `immutable` is set".into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_data_is_folded_and_wins() {
        let mut s = json!({"data": {"a": "eA==", "b": "eQ=="}, "stringData": {"b": "zz"}});
        assert!(normalize(&mut s).is_empty());
        assert_eq!(s, json!({"data": {"a": "eA==", "b": "eno="}}));
    }

    #[test]
    fn bad_base64_names_the_key_and_changes_nothing() {
        let mut s = json!({"data": {"ok": "eA==", "bad": "not base64!"}, "stringData": {"c": "d"}});
        let before = s.clone();
        let errs = normalize(&mut s);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "data[bad]");
        assert_eq!(s, before);
    }

    #[test]
    fn types_require_their_keys() {
        let mut errs = Vec::new();
        validate(
            &json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}}),
            &mut errs,
        );
        assert_eq!(errs, vec![required("data[tls.key]".into())]);
        let mut errs = Vec::new();
        validate(
            &json!({"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "eA=="}}),
            &mut errs,
        );
        assert_eq!(errs[0].field, "data[.dockerconfigjson]");
        let mut errs = Vec::new();
        validate(
            &json!({"type": "kubernetes.io/service-account-token", "metadata": {}}),
            &mut errs,
        );
        assert_eq!(
            errs[0].field,
            "metadata.annotations[kubernetes.io/service-account.name]"
        );
    }
}
