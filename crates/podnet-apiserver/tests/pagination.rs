//! Paginated LISTs (`limit` and `continue`), as kubectl's `--chunk-size` and
//! every informer's first list use them: every object comes exactly once,
//! in order, across namespaces and with selectors, and `remainingItemCount`
//! is given only where kube-apiserver gives it (no selector).

mod common;

use common::Lab;
use serde_json::Value;

fn configmaps(n: usize) -> String {
    let mut y = String::new();
    for ns in ["alpha", "beta", "gamma"] {
        y += &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n");
        for i in 0..n {
            let tier = if i % 3 == 0 { "front" } else { "back" };
            y += &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i:02}, namespace: {ns}, labels: {{tier: {tier}}}}}\ndata: {{i: \"{i}\"}}\n---\n"
            );
        }
    }
    y
}

fn raw(lab: &Lab, path: &str) -> Value {
    let out = lab.ok("1.33", &["get", "--raw", path]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{path}: {e}: {out}"))
}

/// Walks every page of a list and returns the (namespace, name) of each item
/// and the remainingItemCount of each page but the last.
fn walk(lab: &Lab, base: &str, limit: usize) -> (Vec<(String, String)>, Vec<Option<u64>>) {
    let sep = if base.contains('?') { '&' } else { '?' };
    let mut seen = Vec::new();
    let mut counts = Vec::new();
    let mut cont = String::new();
    for _ in 0..1000 {
        let mut path = format!("{base}{sep}limit={limit}");
        if !cont.is_empty() {
            path += &format!("&continue={cont}");
        }
        let page = raw(lab, &path);
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= limit, "{path}: {} items", items.len());
        for o in items {
            seen.push((
                o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                o["metadata"]["name"].as_str().expect("name").to_string(),
            ));
        }
        match page["metadata"]["continue"].as_str() {
            Some(c) if !c.is_empty() => {
                counts.push(page["metadata"]["remainingItemCount"].as_u64());
                cont = c.to_string();
            }
            _ => return (seen, counts),
        }
    }
    panic!("{base}: more than 1000 pages");
}

#[test]
fn every_object_comes_once_in_order_across_pages() {
    let lab = Lab::start();
    lab.ok(
        "1.33",
        &["apply", "-f", &lab.file("cms.yaml", &configmaps(20))],
    );

    // All namespaces, pages of 7 (60 objects: 9 pages).
    let (all, counts) = walk(&lab, "/api/v1/configmaps?labelSelector=tier", 7);
    let mut want = Vec::new();
    for ns in ["alpha", "beta", "gamma"] {
        for i in 0..20 {
            want.push((ns.to_string(), format!("cm-{i:02}")));
        }
    }
    assert_eq!(all, want, "a selected walk across namespaces");
    assert!(
        counts.iter().all(Option::is_none),
        "remainingItemCount with a selector: {counts:?}"
    );

    // Without a selector the count is given and exact. The lab makes
    // kube-root-ca.crt in every namespace, so count from one list.
    let full = raw(&lab, "/api/v1/configmaps");
    let total = full["items"].as_array().expect("items").len();
    let (plain, counts) = walk(&lab, "/api/v1/configmaps", 5);
    assert_eq!(plain.len(), total, "an unselected walk");
    let mut sorted = plain.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, plain, "pages out of order or repeated");
    for (i, c) in counts.iter().enumerate() {
        assert_eq!(
            *c,
            Some((total - 5 * (i + 1)) as u64),
            "remainingItemCount after page {i}"
        );
    }

    // One namespace, a selector matching one in three: pages hold only
    // matches, and the last page does not promise more.
    let (front, counts) = walk(
        &lab,
        "/api/v1/namespaces/beta/configmaps?labelSelector=tier%3Dfront",
        2,
    );
    let want: Vec<_> = (0..20)
        .filter(|i| i % 3 == 0)
        .map(|i| ("beta".to_string(), format!("cm-{i:02}")))
        .collect();
    assert_eq!(front, want, "selected walk in one namespace");
    assert_eq!(
        counts.len(),
        want.len().div_ceil(2) - 1,
        "pages: {counts:?}"
    );

    // kubectl's own chunked get sees every object.
    let names = lab.ok(
        "1.33",
        &[
            "get",
            "cm",
            "-A",
            "--chunk-size=4",
            "-l",
            "tier=back",
            "-o",
            "name",
        ],
    );
    assert_eq!(names.lines().count(), 3 * (20 - 7), "{names}");

    // A continue key that is not one is kube-apiserver's 400.
    let bad = lab.fails(
        "1.33",
        &["get", "--raw", "/api/v1/configmaps?limit=2&continue=%21%21"],
    );
    assert!(bad.contains("continue key is not valid"), "{bad}");
}
