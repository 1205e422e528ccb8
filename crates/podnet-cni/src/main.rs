//! `podnet-cni`: exec'd by the container runtime with the verb in
//! `CNI_COMMAND` and the configuration on stdin. Prints the result (or the
//! spec's error object) on stdout and exits non-zero on failure.

use std::io::{Read, Write};

use podnet_cni::env::CniEnv;
use podnet_cni::error::{CniError, code};
use podnet_cni::{commands, config, version};

fn main() {
    let mut stdin = Vec::new();
    let outcome = std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("reading stdin: {e}")))
        .and_then(|_| CniEnv::from_env(|k| std::env::var(k).ok()))
        .and_then(|env| commands::run(&env, &stdin));
    let out = std::io::stdout();
    let mut out = out.lock();
    match outcome {
        Ok(Some(value)) => {
            let _ = serde_json::to_writer(&mut out, &value);
            let _ = out.write_all(b"\n");
        }
        Ok(None) => {}
        Err(err) => {
            let v = config::cni_version_of(&stdin)
                .filter(|v| version::SUPPORTED.contains(&v.as_str()))
                .unwrap_or_else(|| version::LATEST.to_string());
            let mut obj = serde_json::to_value(&err).expect("error serializes");
            obj["cniVersion"] = serde_json::Value::String(v);
            let _ = serde_json::to_writer(&mut out, &obj);
            let _ = out.write_all(b"\n");
            let _ = out.flush();
            eprintln!("podnet-cni: {err}");
            std::process::exit(1);
        }
    }
}
