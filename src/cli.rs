//! What the `run` and `demo` commands do, kept in the library so tests can drive them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::policy::{self, Overrides, Policy, PolicyErrors};
use crate::sandbox::Sandbox;
use crate::{Gateway, Runtime};

/// Why a command failed: a bad policy (exit 64) or anything else (exit 1).
#[derive(Debug)]
pub enum Failure {
    Policy(PolicyErrors),
    Other(String),
}

/// `qbgate run`: serve until SIGTERM or Ctrl-C, then drain.
pub async fn run(path: PathBuf, overrides: Overrides) -> Result<(), Failure> {
    // Armed before the first read: a change from here on is reloaded, even one made before the
    // listeners answer.
    let watch = crate::reload::Watch::arm(&path);
    let mut policy = crate::reload::load(&path).await.map_err(Failure::Policy)?;
    overrides.apply(&mut policy).map_err(Failure::Other)?;
    serve_policy(
        policy,
        Some(Reload {
            watch,
            path,
            overrides,
        }),
        std::future::pending(),
    )
    .await
}

/// Where a running gateway re-reads its policy from.
pub struct Reload {
    pub watch: crate::reload::Watch,
    pub path: PathBuf,
    pub overrides: Overrides,
}

async fn serve_policy(
    policy: Policy,
    reload: Option<Reload>,
    extra_shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Failure> {
    let listen = policy.listen;
    let admin_listen = policy.admin_listen;
    let runtime = Runtime::new(policy, None).await.map_err(Failure::Other)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| Failure::Other(format!("cannot listen on {listen}: {e}")))?;
    let admin = TcpListener::bind(admin_listen)
        .await
        .map_err(|e| Failure::Other(format!("cannot listen on {admin_listen}: {e}")))?;
    crate::metrics::handle();
    let gateway = Gateway::new(runtime);
    if let Some(Reload {
        watch,
        path,
        overrides,
    }) = reload
    {
        watch.run(gateway.clone(), path, overrides);
    }
    tracing::info!(%listen, %admin_listen, digest = gateway.runtime().policy.digest, "qbgate serving");
    let shutdown = async move {
        tokio::select! {
            () = terminate_signal() => {}
            () = extra_shutdown => {}
        }
    };
    crate::serve(gateway, listener, Some(admin), shutdown).await;
    Ok(())
}

/// SIGTERM (Kubernetes) or SIGINT (a terminal).
async fn terminate_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The example policy the demo serves; its keys are the demo keys below.
pub const EXAMPLE_POLICY: &str = include_str!("../config/policy.example.yaml");
/// Demo keys (their digests are in the example policy).
pub const DEMO_KEYS: [(&str, &str); 2] = [
    ("billing-service", "demo-billing-key"),
    ("support-bot", "demo-support-key"),
];
/// The key the demo's sandbox accepts, standing for the real QuickBlox key.
const DEMO_UPSTREAM_KEY: &str = "sandbox-upstream-key";

/// `qbgate demo`: the example policy against an in-process QuickBlox sandbox.
pub async fn demo(listen: SocketAddr) -> Result<(), Failure> {
    let sandbox = Sandbox::new(Some(DEMO_UPSTREAM_KEY.to_string()));
    let sandbox_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Failure::Other(format!("cannot start the sandbox: {e}")))?;
    let sandbox_addr = sandbox_listener
        .local_addr()
        .map_err(|e| Failure::Other(e.to_string()))?;
    let sb = sandbox.clone();
    tokio::spawn(async move { sb.serve(sandbox_listener, std::future::pending()).await });

    let env = |name: &str| (name == "QB_API_KEY").then(|| DEMO_UPSTREAM_KEY.to_string());
    let mut policy = policy::compile_with_env(EXAMPLE_POLICY, &env).map_err(Failure::Policy)?;
    // A free loopback port, known before serving so that it can be printed.
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| Failure::Other(format!("cannot find a port for the admin listener: {e}")))?;
    let overrides = Overrides {
        listen: Some(listen),
        admin_listen: Some(admin),
        upstream: Some(format!("http://{sandbox_addr}")),
    };
    overrides.apply(&mut policy).map_err(Failure::Other)?;
    print_demo(listen, admin);
    let _keep = Arc::new(sandbox);
    serve_policy(policy, None, std::future::pending()).await
}

fn print_demo(listen: SocketAddr, admin: SocketAddr) {
    use crate::sandbox::seed;
    let (_, key) = DEMO_KEYS[0];
    let base = format!("http://{listen}");
    println!(
        "qbgate demo: gateway on {base}, QuickBlox sandbox behind it (example policy: config/policy.example.yaml)\n\
         demo key: {key} (billing-service; acts on behalf of any user)\n\n\
         # list the group dialog as its owner\n\
         curl -s -H 'Authorization: ApiKey {key}' -H 'On-Behalf-Of: {owner}' '{base}/chat/Dialog.json?_id={group}'\n\n\
         # rename it (allowed: the owner of a group dialog)\n\
         curl -s -X PUT -H 'Authorization: ApiKey {key}' -H 'On-Behalf-Of: {owner}' -H 'Content-Type: application/json' \\\n  -d '{{\"name\":\"New Year 2020 party\"}}' '{base}/chat/Dialog/{group}.json'\n\n\
         # a name on a private dialog, by one of its occupants: rejected by the gateway (422)\n\
         curl -s -i -X PUT -H 'Authorization: ApiKey {key}' -H 'On-Behalf-Of: {occupant}' -H 'Content-Type: application/json' \\\n  -d '{{\"name\":\"nope\"}}' '{base}/chat/Dialog/{private}.json'\n\n\
         # an occupant removing someone else from a group dialog: rejected (403)\n\
         curl -s -i -X PUT -H 'Authorization: ApiKey {key}' -H 'On-Behalf-Of: {occupant}' -H 'Content-Type: application/json' \\\n  -d '{{\"pull_all\":{{\"occupants_ids\":[{owner}]}}}}' '{base}/chat/Dialog/{group}.json'\n\n\
         # an escalation: minting a session token for another user, which would escape every rule.\n\
         # This key holds no `mint_tokens` power: rejected (403 power_required)\n\
         curl -s -i -X POST -H 'Authorization: ApiKey {key}' -H 'On-Behalf-Of: {owner}' '{base}/users/{occupant}/tokens'\n\n\
         # a wrong key (401)\n\
         curl -s -i -H 'Authorization: ApiKey wrong' -H 'On-Behalf-Of: {owner}' '{base}/chat/Dialog.json'\n\n\
         # admin listener on http://{admin} (/healthz, /readyz, /metrics): the counters of the requests above\n\
         curl -s 'http://{admin}/metrics'\n",
        owner = seed::RECIPE_USER,
        occupant = seed::OCCUPANT,
        group = seed::GROUP_ID,
        private = seed::PRIVATE_ID,
    );
}
