//! Bad input gets the right status code and message, and the store does not
//! change: malformed JSON and YAML, wrong kinds, invalid names, stale
//! resourceVersions, oversized bodies, missing or wrong tokens, unknown
//! fields under Strict validation, bad selectors, dry runs.

mod common;

use common::Lab;
use serde_json::Value;

/// (method, path, content type, body, with token, wanted code, message part)
type Case<'a> = (&'a str, String, &'a str, Vec<u8>, bool, u16, &'a str);

fn status(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not a Status ({e}): {body}"))
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let lab = Lab::start();
    let pods = "/api/v1/namespaces/default/pods";
    let good = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"busybox"}]}}"#;
    let (code, _) = lab.curl("POST", pods, "application/json", Some(good), true);
    assert_eq!(code, 201);
    let before = lab.rv();
    let cases: Vec<Case> = vec![
        ("POST", pods.into(), "application/json", b"{\"kind\":".to_vec(), true, 400, "json parse error"),
        ("POST", pods.into(), "application/yaml", b"kind: Pod\n  bad: [".to_vec(), true, 400, "yaml"),
        ("POST", pods.into(), "application/json", br#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"x"}}"#.to_vec(), true, 400, "does not match the expected kind (Pod)"),
        ("POST", pods.into(), "application/json", br#"{"apiVersion":"apps/v1","kind":"Pod","metadata":{"name":"x"}}"#.to_vec(), true, 400, "does not match the expected API version"),
        ("POST", pods.into(), "application/json", br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"Bad.Name"},"spec":{"containers":[{"name":"c","image":"i"}]}}"#.to_vec(), true, 422, "metadata.name: Invalid value: \"Bad.Name\""),
        ("POST", pods.into(), "application/json", br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"q"},"spec":{"containers":"nope"}}"#.to_vec(), true, 400, "cannot be handled as a Pod"),
        ("POST", format!("{pods}?fieldValidation=Strict"), "application/json", br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"q"},"spec":{"containers":[{"name":"c","image":"i"}],"bogus":1}}"#.to_vec(), true, 400, "unknown field \"spec.bogus\""),
        ("POST", pods.into(), "application/json", good.to_vec(), true, 409, "pods \"p\" already exists"),
        ("PUT", format!("{pods}/p"), "application/json", br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","resourceVersion":"1"},"spec":{"containers":[{"name":"c","image":"busybox:2"}]}}"#.to_vec(), true, 409, "the object has been modified"),
        ("PUT", format!("{pods}/p"), "application/json", br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"other"},"spec":{"containers":[{"name":"c","image":"busybox"}]}}"#.to_vec(), true, 400, "does not match the name on the URL"),
        ("PATCH", format!("{pods}/p"), "application/merge-patch+json", br#"{"spec":{"restartPolicy":"Never"}}"#.to_vec(), true, 422, "pod updates may not change fields"),
        ("PATCH", format!("{pods}/p"), "application/json-patch+json", br#"[{"op":"test","path":"/metadata/name","value":"x"}]"#.to_vec(), true, 422, "/metadata/name"),
        ("PATCH", format!("{pods}/p"), "text/plain", b"{}".to_vec(), true, 415, "unknown format"),
        ("POST", pods.into(), "application/json", vec![b' '; 4 * 1024 * 1024], true, 413, "Request entity too large"),
        ("POST", pods.into(), "application/json", good.to_vec(), false, 401, "Unauthorized"),
        ("GET", "/api/v1/namespaces/default/pods?labelSelector=a%20in%20x".into(), "application/json", Vec::new(), true, 400, "unable to parse requirement"),
        ("GET", "/api/v1/namespaces/default/pods?fieldSelector=spec.bogus%3Dx".into(), "application/json", Vec::new(), true, 400, "field label not supported: spec.bogus"),
        ("POST", "/api/v1/namespaces/nope/pods".into(), "application/json", good.to_vec(), true, 404, "namespaces \"nope\" not found"),
        ("GET", format!("{pods}/missing"), "application/json", Vec::new(), true, 404, "pods \"missing\" not found"),
        ("DELETE", format!("{pods}/p"), "application/json", br#"{"preconditions":{"uid":"wrong"}}"#.to_vec(), true, 409, "Precondition failed"),
        ("POST", "/api/v1/namespaces/default/services".into(), "application/json", br#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"s"},"spec":{"clusterIP":"10.96.0.1","ports":[{"port":80}]}}"#.to_vec(), true, 422, "provided IP is already allocated"),
        ("POST", "/api/v1/namespaces/default/services".into(), "application/json", br#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"s"},"spec":{"ports":[{"port":80,"nodePort":80}],"type":"NodePort"}}"#.to_vec(), true, 422, "spec.ports[0].nodePort"),
        ("POST", format!("{pods}?dryRun=All"), "application/json", br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"dry"},"spec":{"containers":[{"name":"c","image":"i"}]}}"#.to_vec(), true, 201, ""),
        ("DELETE", format!("{pods}/p?dryRun=All"), "application/json", Vec::new(), true, 200, ""),
    ];
    for (method, path, ct, body, token, want, msg) in cases {
        let b = if body.is_empty() {
            None
        } else {
            Some(body.as_slice())
        };
        let (code, text) = lab.curl(method, &path, ct, b, token);
        assert_eq!(code, want, "{method} {path}: {text}");
        if want >= 400 {
            // Every refusal names what it refuses: an empty part would
            // match any message.
            assert!(
                !msg.is_empty(),
                "{method} {path}: the case names no message part"
            );
            let s = status(&text);
            assert_eq!(s["kind"], "Status");
            assert_eq!(s["code"], want);
            assert!(
                s["message"].as_str().unwrap().contains(msg),
                "{method} {path}: {text}"
            );
        }
        if want == 422 && msg.contains("metadata.name") {
            assert_eq!(
                status(&text)["details"]["causes"][0]["field"],
                "metadata.name"
            );
        }
        assert_eq!(lab.rv(), before, "{method} {path} changed the store");
    }
    let (code, _) = lab.curl(
        "GET",
        "/api/v1/namespaces/default/pods/dry",
        "application/json",
        None,
        true,
    );
    assert_eq!(code, 404, "a dry run must not create");
    let (code, body) = lab.curl("GET", "/api/v1/namespaces", "application/json", None, false);
    assert_eq!(
        (code, status(&body)["reason"].as_str().unwrap()),
        (401, "Unauthorized")
    );
}
