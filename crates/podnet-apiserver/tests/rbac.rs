//! Identities and RBAC with the real kubectl (1.30 and 1.33): ServiceAccount
//! tokens from `kubectl create token` (refused with kube-apiserver's words,
//! granted by a Role in one namespace, by a ClusterRole aggregated into
//! `view`, dead once their ServiceAccount or bound Pod is gone, alive across
//! a restart), `kubectl auth can-i` / `whoami` with and without `--as`,
//! impersonation refused to the unprivileged, node identities,
//! `kube-root-ca.crt`, and RBAC objects' validation and tables.

mod common;

use common::{KUBECTLS, Lab, header, names};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A token of ServiceAccount `ns/name` (made if missing) from `kubectl create token`.
fn sa_token(lab: &Lab, ns: &str, name: &str, extra: &[&str]) -> String {
    let out = lab.kubectl("1.33", &["create", "serviceaccount", name, "-n", ns]);
    assert!(
        out.status.success() || stderr(&out).contains("already exists"),
        "{}",
        stderr(&out)
    );
    let mut args = vec!["create", "token", name, "-n", ns];
    args.extend_from_slice(extra);
    let t = lab.ok("1.33", &args);
    assert!(!t.trim().is_empty());
    t.trim().to_string()
}

/// Runs kubectl with a bearer token in place of the admin's.
fn as_token(lab: &Lab, v: &str, token: &str, args: &[&str]) -> std::process::Output {
    let flag = format!("--token={token}");
    let mut all = vec![flag.as_str()];
    all.extend_from_slice(args);
    lab.kubectl(v, &all)
}

const NOBODY_LIST_PODS: &str = "Error from server (Forbidden): pods is forbidden: User \"system:serviceaccount:default:nobody\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\"";

#[test]
fn a_service_account_without_rights_is_refused_as_kube_apiserver_words_it() {
    let lab = Lab::start();
    let token = sa_token(&lab, "default", "nobody", &[]);
    for v in KUBECTLS {
        let out = as_token(&lab, v, &token, &["get", "pods"]);
        assert!(!out.status.success());
        assert_eq!(stderr(&out).trim(), NOBODY_LIST_PODS, "kubectl {v}");
        let out = as_token(&lab, v, &token, &["delete", "node", "n1"]);
        assert!(
            stderr(&out).contains("nodes \"n1\" is forbidden: User \"system:serviceaccount:default:nobody\" cannot delete resource \"nodes\" in API group \"\" at the cluster scope"),
            "{}",
            stderr(&out)
        );
        let out = as_token(
            &lab,
            v,
            &token,
            &["get", "--raw", "/api/v1/namespaces/default/pods/web/log"],
        );
        assert!(
            stderr(&out).contains("pods \"web\" is forbidden: User \"system:serviceaccount:default:nobody\" cannot get resource \"pods/log\" in API group \"\" in the namespace \"default\""),
            "{}",
            stderr(&out)
        );
        let out = as_token(
            &lab,
            v,
            &token,
            &[
                "create",
                "clusterrole",
                "x",
                "--verb=get",
                "--resource=pods",
            ],
        );
        assert!(
            stderr(&out).contains("clusterroles.rbac.authorization.k8s.io is forbidden: User \"system:serviceaccount:default:nobody\" cannot create resource \"clusterroles\" in API group \"rbac.authorization.k8s.io\" at the cluster scope"),
            "{}",
            stderr(&out)
        );
        // Discovery and whoami are everyone's (system:discovery, system:basic-user).
        let who = as_token(&lab, v, &token, &["auth", "whoami"]);
        let who = stdout(&who);
        for want in [
            "system:serviceaccount:default:nobody",
            "system:serviceaccounts:default",
            "system:authenticated",
            "authentication.kubernetes.io/credential-id",
        ] {
            assert!(who.contains(want), "{want} missing in {who}");
        }
    }
    // The Status itself: 403, reason Forbidden, details.kind "pods".
    let raw = as_token(
        &lab,
        "1.33",
        &token,
        &["get", "--raw", "/api/v1/namespaces/default/pods", "-v=9"],
    );
    let log = stderr(&raw);
    assert!(log.contains("status=\"403 Forbidden\""), "{log}");
    // The body as kubectl's log quotes it.
    let body = r#"\"code\":403,\"details\":{\"kind\":\"pods\"},\"kind\":\"Status\""#;
    assert!(log.contains(body), "{log}");
    assert!(log.contains(r#"\"reason\":\"Forbidden\""#), "{log}");
    // No token at all is still 401.
    let (code, _) = lab.curl("GET", "/api/v1/pods", "application/json", None, false);
    assert_eq!(code, 401);
}

#[test]
fn a_role_grants_in_its_namespace_only() {
    let lab = Lab::start();
    let token = sa_token(&lab, "default", "nobody", &[]);
    lab.ok("1.33", &["create", "namespace", "team"]);
    lab.ok(
        "1.33",
        &[
            "create",
            "role",
            "pod-reader",
            "--verb=get,list,watch",
            "--resource=pods",
            "-n",
            "team",
        ],
    );
    lab.ok(
        "1.33",
        &[
            "create",
            "rolebinding",
            "read-pods",
            "--role=pod-reader",
            "--serviceaccount=default:nobody",
            "-n",
            "team",
        ],
    );
    for v in KUBECTLS {
        let ok = as_token(&lab, v, &token, &["get", "pods", "-n", "team"]);
        assert!(ok.status.success(), "{}", stderr(&ok));
        assert!(stderr(&ok).contains("No resources found in team namespace."));
        let no = as_token(&lab, v, &token, &["get", "pods"]);
        assert_eq!(stderr(&no).trim(), NOBODY_LIST_PODS);
        let no = as_token(
            &lab,
            v,
            &token,
            &["delete", "--raw", "/api/v1/namespaces/team/pods"],
        );
        assert!(
            stderr(&no).contains("cannot deletecollection resource \"pods\" in API group \"\" in the namespace \"team\""),
            "{}",
            stderr(&no)
        );
        // Server-side tables with kube-apiserver's columns.
        let rb = lab.ok(v, &["get", "rolebindings", "-n", "team", "-o", "wide"]);
        assert_eq!(
            header(&rb),
            ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"]
        );
        let row: Vec<&str> = rb.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(row[0], "read-pods");
        assert_eq!(row[1], "Role/pod-reader");
        assert_eq!(row[row.len() - 1], "default/nobody");
        let roles = lab.ok(v, &["get", "roles", "-n", "team"]);
        assert_eq!(header(&roles), ["NAME", "CREATED", "AT"]);
        assert_eq!(names(&roles), ["pod-reader"]);
    }
    // Taking the binding away takes the right away at once.
    lab.ok(
        "1.33",
        &["delete", "rolebinding", "read-pods", "-n", "team"],
    );
    let no = as_token(&lab, "1.33", &token, &["get", "pods", "-n", "team"]);
    assert!(
        stderr(&no).contains("cannot list resource \"pods\""),
        "{}",
        stderr(&no)
    );
    // A binding to a Role that does not exist says so, as RBAC does.
    lab.ok(
        "1.33",
        &[
            "create",
            "rolebinding",
            "dangling",
            "--role=missing",
            "--serviceaccount=default:nobody",
            "-n",
            "team",
        ],
    );
    let no = as_token(&lab, "1.33", &token, &["get", "pods", "-n", "team"]);
    assert!(
        stderr(&no).contains(
            "in the namespace \"team\": RBAC: role.rbac.authorization.k8s.io \"missing\" not found"
        ),
        "{}",
        stderr(&no)
    );
}

#[test]
fn a_cluster_role_aggregated_into_view_is_visible_and_grants() {
    let lab = Lab::start();
    let token = sa_token(&lab, "default", "viewer", &[]);
    let view = lab.ok("1.33", &["get", "clusterrole", "view", "-o", "json"]);
    assert!(view.contains("\"pods\""), "{view}");
    assert!(!view.contains("leases"), "{view}");
    lab.ok(
        "1.33",
        &[
            "create",
            "rolebinding",
            "view",
            "--clusterrole=view",
            "--serviceaccount=default:viewer",
        ],
    );
    let out = as_token(&lab, "1.33", &token, &["get", "leases"]);
    assert!(
        stderr(&out).contains("leases.coordination.k8s.io is forbidden: User \"system:serviceaccount:default:viewer\" cannot list resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"default\""),
        "{}",
        stderr(&out)
    );
    lab.ok(
        "1.33",
        &[
            "create",
            "clusterrole",
            "lease-viewer",
            "--verb=get,list,watch",
            "--resource=leases.coordination.k8s.io",
        ],
    );
    lab.ok(
        "1.33",
        &[
            "label",
            "clusterrole",
            "lease-viewer",
            "rbac.authorization.k8s.io/aggregate-to-view=true",
        ],
    );
    for v in KUBECTLS {
        for role in ["view", "edit", "admin"] {
            let r = lab.ok(v, &["get", "clusterrole", role, "-o", "json"]);
            assert!(r.contains("coordination.k8s.io"), "{role}: {r}");
        }
        let ok = as_token(&lab, v, &token, &["get", "leases"]);
        assert!(ok.status.success(), "{}", stderr(&ok));
        let ok = as_token(&lab, v, &token, &["get", "deployments,pods,services"]);
        assert!(ok.status.success(), "{}", stderr(&ok));
        let yes = lab.ok(
            v,
            &[
                "auth",
                "can-i",
                "list",
                "leases",
                "--as=system:serviceaccount:default:viewer",
            ],
        );
        assert_eq!(yes.trim(), "yes");
        let crs = lab.ok(v, &["get", "clusterroles"]);
        assert_eq!(header(&crs), ["NAME", "CREATED", "AT"]);
        for want in [
            "admin",
            "cluster-admin",
            "edit",
            "lease-viewer",
            "system:node",
            "view",
        ] {
            assert!(names(&crs).iter().any(|n| n == want), "{want} in {crs}");
        }
    }
    // Removing the label takes the rules out again.
    lab.ok(
        "1.33",
        &[
            "label",
            "clusterrole",
            "lease-viewer",
            "rbac.authorization.k8s.io/aggregate-to-view-",
        ],
    );
    let view = lab.ok("1.33", &["get", "clusterrole", "view", "-o", "json"]);
    assert!(!view.contains("leases"), "{view}");
    let no = as_token(&lab, "1.33", &token, &["get", "leases"]);
    assert!(!no.status.success());
}

#[test]
fn can_i_and_whoami_answer_as_on_a_real_cluster() {
    let lab = Lab::start();
    let node_token = lab.server().tokens.issue_node("n1").unwrap();
    for v in KUBECTLS {
        assert_eq!(lab.ok(v, &["auth", "can-i", "list", "pods"]).trim(), "yes");
        assert_eq!(lab.ok(v, &["auth", "can-i", "*", "*"]).trim(), "yes");
        let no = lab.kubectl(
            v,
            &[
                "auth",
                "can-i",
                "delete",
                "nodes",
                "--as=system:serviceaccount:kube-system:podnet",
            ],
        );
        assert!(!no.status.success());
        assert_eq!(stdout(&no).trim(), "no");
        let yes = lab.ok(
            v,
            &[
                "auth",
                "can-i",
                "create",
                "selfsubjectaccessreviews.authorization.k8s.io",
                "--as=system:serviceaccount:kube-system:podnet",
            ],
        );
        assert_eq!(yes.trim(), "yes");
        // Node identities: what a kubelet does, and no more.
        let node = "--as=system:node:n1";
        let group = "--as-group=system:nodes";
        for ok in [
            ["get", "pods", "-q=false"],
            ["list", "nodes", "-q=false"],
            ["create", "serviceaccounts", "--subresource=token"],
        ] {
            let out = lab.ok(
                v,
                &["auth", "can-i", ok[0], ok[1], node, group, "-A", ok[2]],
            );
            assert_eq!(out.trim(), "yes", "{ok:?}");
        }
        let out = lab.kubectl(v, &["auth", "can-i", "delete", "namespaces", node, group]);
        assert_eq!(stdout(&out).trim(), "no");
        let list = lab.ok(
            v,
            &[
                "auth",
                "can-i",
                "--list",
                "--as=system:serviceaccount:default:x",
            ],
        );
        assert!(
            header(&list).starts_with(&["Resources".to_string()]),
            "{list}"
        );
        for want in [
            "selfsubjectaccessreviews.authorization.k8s.io",
            "selfsubjectreviews.authentication.k8s.io",
            "[/api/*]",
            "[/version]",
        ] {
            assert!(list.contains(want), "{want} missing in {list}");
        }
        assert!(!list.contains("pods "), "{list}");
        let who = lab.ok(v, &["auth", "whoami"]);
        assert!(who.contains("kubernetes-admin"), "{who}");
        assert!(
            who.contains("[system:masters system:authenticated]"),
            "{who}"
        );
        let who = lab.ok(v, &["auth", "whoami", "--as=jane", "--as-group=devs"]);
        assert!(
            who.contains("jane") && who.contains("[devs system:authenticated]"),
            "{who}"
        );
        // The node's own token gets the same answers.
        let out = as_token(&lab, v, &node_token, &["get", "pods", "-A"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = as_token(&lab, v, &node_token, &["delete", "namespace", "default"]);
        assert!(
            stderr(&out).contains("namespaces \"default\" is forbidden: User \"system:node:n1\" cannot delete resource \"namespaces\" in API group \"\" in the namespace \"default\""),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn impersonation_is_the_impersonated_identity_and_needs_the_verb() {
    let lab = Lab::start();
    let token = sa_token(&lab, "default", "nobody", &[]);
    for v in KUBECTLS {
        // The admin (system:masters) may impersonate: the answer is the
        // impersonated identity's.
        let out = lab.kubectl(
            v,
            &["get", "pods", "--as=system:serviceaccount:default:nobody"],
        );
        assert_eq!(stderr(&out).trim(), NOBODY_LIST_PODS);
        let out = lab.kubectl(v, &["get", "pods", "--as=jane"]);
        assert!(
            stderr(&out).contains("User \"jane\" cannot list resource \"pods\""),
            "{}",
            stderr(&out)
        );
        assert!(
            lab.kubectl(
                v,
                &["get", "pods", "--as=jane", "--as-group=system:masters"]
            )
            .status
            .success()
        );
        // Nobody may not.
        let out = as_token(&lab, v, &token, &["get", "pods", "--as=jane"]);
        assert!(
            stderr(&out).contains("users \"jane\" is forbidden: User \"system:serviceaccount:default:nobody\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"),
            "{}",
            stderr(&out)
        );
        let out = as_token(
            &lab,
            v,
            &token,
            &[
                "get",
                "pods",
                "--as=system:serviceaccount:kube-system:default",
            ],
        );
        assert!(
            stderr(&out).contains("serviceaccounts \"default\" is forbidden: User \"system:serviceaccount:default:nobody\" cannot impersonate resource \"serviceaccounts\" in API group \"\" in the namespace \"kube-system\""),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn tokens_live_as_long_as_their_service_account_and_pod_and_survive_restarts() {
    let mut lab = Lab::start();
    let token = sa_token(&lab, "default", "robot", &[]);
    lab.ok(
        "1.33",
        &[
            "create",
            "clusterrolebinding",
            "robot-view",
            "--clusterrole=view",
            "--serviceaccount=default:robot",
        ],
    );
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: runner}\nspec:\n  serviceAccountName: robot\n  containers: [{name: c, image: busybox}]\n";
    lab.ok("1.33", &["create", "-f", &lab.file("runner.yaml", pod)]);
    let bound = sa_token(
        &lab,
        "default",
        "robot",
        &[
            "--bound-object-kind=Pod",
            "--bound-object-name=runner",
            "--duration=2h",
        ],
    );
    for t in [&token, &bound] {
        let out = as_token(&lab, "1.33", t, &["get", "pods"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let who = stdout(&as_token(
        &lab,
        "1.33",
        &bound,
        &["auth", "whoami", "-o", "json"],
    ));
    assert!(
        who.contains("\"authentication.kubernetes.io/pod-name\""),
        "{who}"
    );
    assert!(who.contains("\"runner\""), "{who}");

    lab.restart();
    for t in [&token, &bound] {
        let out = as_token(&lab, "1.33", t, &["get", "pods"]);
        assert!(out.status.success(), "after restart: {}", stderr(&out));
    }

    // The pod goes: its token goes with it; the unbound one stays.
    lab.ok("1.33", &["delete", "pod", "runner"]);
    let out = as_token(&lab, "1.33", &bound, &["get", "pods"]);
    assert!(
        stderr(&out).contains("error: You must be logged in to the server (Unauthorized)"),
        "{}",
        stderr(&out)
    );
    assert!(
        as_token(&lab, "1.33", &token, &["get", "pods"])
            .status
            .success()
    );

    // A token for another pod's ServiceAccount, a pod that is not there, too short a life.
    let out = lab.kubectl(
        "1.33",
        &[
            "create",
            "token",
            "robot",
            "--bound-object-kind=Pod",
            "--bound-object-name=runner",
        ],
    );
    assert!(
        stderr(&out).contains("pods \"runner\" not found"),
        "{}",
        stderr(&out)
    );
    let out = lab.kubectl("1.33", &["create", "token", "robot", "--duration=5m"]);
    assert!(
        stderr(&out).contains("spec.expirationSeconds: Invalid value: 300: may not specify a duration less than 10 minutes"),
        "{}",
        stderr(&out)
    );
    let out = lab.kubectl("1.33", &["create", "token", "ghost"]);
    assert!(
        stderr(&out).contains("serviceaccounts \"ghost\" not found"),
        "{}",
        stderr(&out)
    );

    // The ServiceAccount goes: so does every token of it, and a new one of
    // the same name does not bring them back.
    lab.ok("1.33", &["delete", "serviceaccount", "robot"]);
    let out = as_token(&lab, "1.33", &token, &["get", "pods"]);
    assert!(stderr(&out).contains("Unauthorized"), "{}", stderr(&out));
    lab.ok("1.33", &["create", "serviceaccount", "robot"]);
    let out = as_token(&lab, "1.33", &token, &["get", "pods"]);
    assert!(stderr(&out).contains("Unauthorized"), "{}", stderr(&out));
}

#[test]
fn every_namespace_gets_kube_root_ca_crt() {
    let lab = Lab::start();
    let ca = lab.server().ca_pem.clone();
    let read = |ns: &str| {
        lab.kubectl(
            "1.33",
            &[
                "get",
                "configmap",
                "kube-root-ca.crt",
                "-n",
                ns,
                "-o",
                "jsonpath={.data.ca\\.crt}",
            ],
        )
    };
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert_eq!(stdout(&read(ns)), ca, "{ns}");
    }
    lab.ok("1.33", &["create", "namespace", "fresh"]);
    // Made just after the namespace, as the root CA publisher does.
    let mut got = String::new();
    for _ in 0..200 {
        let out = read("fresh");
        if out.status.success() {
            got = stdout(&out);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert_eq!(got, ca);
    // Deleted or changed, it comes back.
    lab.ok(
        "1.33",
        &["delete", "configmap", "kube-root-ca.crt", "-n", "fresh"],
    );
    let mut back = false;
    for _ in 0..200 {
        if stdout(&read("fresh")) == ca {
            back = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(back, "kube-root-ca.crt was not restored");
}

#[test]
fn rbac_objects_are_validated_with_the_field_named() {
    let lab = Lab::start();
    let no_ref = "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: broken}\nsubjects: [{kind: User, name: jane}]\n";
    let f = lab.file("broken.yaml", no_ref);
    for v in KUBECTLS {
        let err = lab.fails(v, &["create", "-f", &f]);
        assert!(
            err.contains("The RoleBinding \"broken\" is invalid")
                && err.contains("roleRef.kind: Unsupported value: \"\": supported values: \"Role\", \"ClusterRole\"")
                && err.contains("roleRef.name: Required value"),
            "{err}"
        );
    }
    let (code, body) = lab.curl(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
        "application/yaml",
        Some(no_ref.as_bytes()),
        true,
    );
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("\"field\":\"roleRef.name\""), "{body}");
    lab.ok(
        "1.33",
        &[
            "create",
            "rolebinding",
            "ok",
            "--clusterrole=view",
            "--user=jane",
        ],
    );
    let err = lab.fails(
        "1.33",
        &[
            "patch",
            "rolebinding",
            "ok",
            "--type=merge",
            "-p",
            "{\"roleRef\":{\"name\":\"edit\"}}",
        ],
    );
    assert!(
        err.contains("roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"ClusterRole\", Name:\"edit\"}: cannot change roleRef"),
        "{err}"
    );
    let rule = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: r}\nrules: [{apiGroups: [''], resources: [pods]}]\n";
    let err = lab.fails("1.33", &["create", "-f", &lab.file("role.yaml", rule)]);
    assert!(
        err.contains("rules[0].verbs: Required value: verbs must contain at least one value"),
        "{err}"
    );
    let crb = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: c}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: r}\nsubjects: [{kind: ServiceAccount, name: s}]\n";
    let err = lab.fails("1.33", &["create", "-f", &lab.file("crb.yaml", crb)]);
    assert!(
        err.contains(
            "roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\""
        ) && err.contains("subjects[0].namespace: Required value"),
        "{err}"
    );
}
