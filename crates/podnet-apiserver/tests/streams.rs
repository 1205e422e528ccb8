//! pods/log, pods/exec and pods/attach through the server to a test node
//! endpoint (the same `node_router` the agent serves), with the real kubectl
//! 1.30 and 1.33 over WebSocket v5.channel.k8s.io: output, stdin, exit codes.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{KUBECTLS, Lab, header};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use podnet_apiserver::stream::{ExecRequest, LogRequest, NodeError, NodeStreams, StreamIo};

struct TestNode;

impl NodeStreams for TestNode {
    fn logs(
        &self,
        req: LogRequest,
    ) -> BoxFuture<'static, Result<BoxStream<'static, Bytes>, NodeError>> {
        Box::pin(async move {
            if req.pod != "p" {
                return Err(NodeError(format!("pod {} is not on this node", req.pod)));
            }
            let lines = ["one", "two", "three"];
            let skip = req
                .tail_lines
                .map(|n| lines.len().saturating_sub(n as usize))
                .unwrap_or(0);
            let text: String = lines[skip..]
                .iter()
                .map(|l| format!("{}:{l}\n", req.container))
                .collect();
            Ok(futures::stream::iter(vec![Bytes::from(text)]).boxed())
        })
    }

    fn exec(
        &self,
        req: ExecRequest,
        mut io: StreamIo,
    ) -> BoxFuture<'static, Result<i32, NodeError>> {
        Box::pin(async move {
            if req.attach {
                let _ = io
                    .stdout
                    .send(Bytes::from(format!("attached to {}\n", req.container)))
                    .await;
                return Ok(0);
            }
            match req.command.first().map(String::as_str) {
                Some("echo") => {
                    let _ = io
                        .stdout
                        .send(Bytes::from(format!("{}\n", req.command[1..].join(" "))))
                        .await;
                    Ok(0)
                }
                Some("cat") => {
                    while let Some(b) = io.stdin.recv().await {
                        let _ = io.stdout.send(b).await;
                    }
                    Ok(0)
                }
                Some("size") => {
                    // Report the first terminal size the user sends.
                    if let Some((w, h)) = io.resize.recv().await {
                        let _ = io
                            .stdout
                            .send(Bytes::from(format!("{w}x{h} tty={}\n", req.tty)))
                            .await;
                    }
                    Ok(0)
                }
                Some("fail") => {
                    let _ = io.stderr.send(Bytes::from_static(b"boom\n")).await;
                    Ok(3)
                }
                _ => Err(NodeError("executable not found".into())),
            }
        })
    }
}

#[test]
fn logs_exec_and_attach_reach_the_node() {
    let lab = Lab::start();
    let rt = lab.rt.as_ref().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let router =
        podnet_apiserver::stream::node_router(Arc::new(TestNode), &lab.server().node_client_token);
    rt.spawn(async move {
        let l = tokio::net::TcpListener::from_std(listener).unwrap();
        axum::serve(l, router).await.unwrap();
    });
    let node = format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  labels: {{node-role.kubernetes.io/control-plane: ''}}\nstatus:\n  addresses: [{{type: InternalIP, address: 127.0.0.1}}, {{type: Hostname, address: n1}}]\n  daemonEndpoints: {{kubeletEndpoint: {{Port: {port}}}}}\n  conditions: [{{type: Ready, status: 'True'}}]\n  nodeInfo: {{kubeletVersion: v1.33.0-podnet, osImage: Debian, kernelVersion: '6.1', containerRuntimeVersion: podnet://0.1, architecture: amd64, bootID: b, kubeProxyVersion: '', machineID: m, operatingSystem: linux, systemUUID: u}}\n"
    );
    lab.ok("1.33", &["create", "-f", &lab.file("node.yaml", &node)]);
    let nodes = lab.ok("1.33", &["get", "nodes", "-o", "wide"]);
    assert_eq!(
        header(&nodes),
        [
            "NAME",
            "STATUS",
            "ROLES",
            "AGE",
            "VERSION",
            "INTERNAL-IP",
            "EXTERNAL-IP",
            "OS-IMAGE",
            "KERNEL-VERSION",
            "CONTAINER-RUNTIME"
        ]
    );
    let row: Vec<&str> = nodes.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        [
            row[0], row[1], row[2], row[4], row[5], row[6], row[7], row[8], row[9]
        ],
        [
            "n1",
            "Ready",
            "control-plane",
            "v1.33.0-podnet",
            "127.0.0.1",
            "<none>",
            "Debian",
            "6.1",
            "podnet://0.1"
        ]
    );
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  nodeName: n1\n  containers:\n  - {name: c, image: busybox}\n  - {name: d, image: busybox}\n";
    lab.ok("1.33", &["create", "-f", &lab.file("pod.yaml", pod)]);
    lab.ok(
        "1.33",
        &[
            "patch",
            "pod",
            "p",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Running"}}"#,
        ],
    );
    for v in KUBECTLS {
        assert_eq!(
            lab.ok(v, &["logs", "p", "-c", "c"]),
            "c:one\nc:two\nc:three\n"
        );
        assert_eq!(
            lab.ok(v, &["logs", "p", "-c", "d", "--tail=1"]),
            "d:three\n"
        );
        let err = lab.fails(v, &["logs", "p", "-c", "nope"]);
        assert!(
            err.contains("container nope is not valid for pod p"),
            "{err}"
        );
        assert_eq!(
            lab.ok(v, &["exec", "p", "-c", "c", "--", "echo", "hello", "world"]),
            "hello world\n"
        );
        let out = lab.kubectl_stdin(
            v,
            &["exec", "-i", "p", "-c", "c", "--", "cat"],
            Some(b"from stdin\n"),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "from stdin\n");
        let out = lab.kubectl(v, &["exec", "p", "-c", "c", "--", "fail"]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "kubectl must exit with the command's code"
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).lines().next(),
            Some("boom")
        );
        let out = lab.kubectl(v, &["attach", "p", "-c", "d"]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("attached to d"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A raw v5.channel.k8s.io client through the server's TLS: terminal resize
/// (channel 4) reaches the node, and the exit Status arrives on channel 3.
#[test]
fn resize_reaches_the_node() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let lab = Lab::start();
    let rt = lab.rt.as_ref().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let router =
        podnet_apiserver::stream::node_router(Arc::new(TestNode), &lab.server().node_client_token);
    rt.spawn(async move {
        let l = tokio::net::TcpListener::from_std(listener).unwrap();
        axum::serve(l, router).await.unwrap();
    });
    let node = format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\nstatus:\n  addresses: [{{type: InternalIP, address: 127.0.0.1}}]\n  daemonEndpoints: {{kubeletEndpoint: {{Port: {port}}}}}\n"
    );
    lab.ok("1.33", &["create", "-f", &lab.file("node.yaml", &node)]);
    lab.ok("1.33", &["create", "-f", &lab.file("pod.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  nodeName: n1\n  containers: [{name: c, image: busybox}]\n")]);
    let ca = lab.server().ca_pem.clone();
    let token = lab.server().admin_token.clone();
    let addr = lab.addr;
    rt.block_on(async move {
        use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.unwrap();
        let url = format!("wss://127.0.0.1:{}/api/v1/namespaces/default/pods/p/exec?command=size&stdin=true&stdout=true&tty=true", addr.port());
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert("Sec-WebSocket-Protocol", "v5.channel.k8s.io".parse().unwrap());
        req.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
        let (mut ws, resp) = tokio_tungstenite::client_async(req, tls).await.unwrap();
        assert_eq!(resp.headers()["sec-websocket-protocol"], "v5.channel.k8s.io");
        let mut resize = vec![4u8];
        resize.extend_from_slice(br#"{"Width":132,"Height":43}"#);
        ws.send(Message::Binary(resize.into())).await.unwrap();
        let (mut out, mut status) = (String::new(), String::new());
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Binary(b) = m {
                match b[0] {
                    1 => out.push_str(&String::from_utf8_lossy(&b[1..])),
                    3 => status.push_str(&String::from_utf8_lossy(&b[1..])),
                    _ => {}
                }
            }
        }
        assert_eq!(out, "132x43 tty=true\n");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&status).unwrap()["status"], "Success");
    });
}
