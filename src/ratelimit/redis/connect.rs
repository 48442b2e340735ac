//! How the Redis store reaches Redis: one server, the primary named by Sentinel, or a Cluster;
//! over TCP or TLS, with an ACL user and a password. All of it is redis-rs's own client code;
//! this module only chooses which client to build and makes one connection from it.
//!
//! One server and Sentinel both end in one multiplexed connection to one server: redis-rs
//! writes every command to the socket as it comes and matches the replies in order, so the
//! requests of concurrent callers share the connection as a pipeline and none waits for
//! another's reply. A Cluster connection keeps one such connection per node and sends each
//! script call to the node that owns its keys' slot (all of one API key's state is in one slot:
//! see the hash tag in `redis.rs`).
//!
//! Sentinel: each connection asks the sentinels for the current primary of `master_name`, and
//! redis-rs checks with `ROLE` that it really is one. When the primary dies, the store's next
//! request fails and the store connects again, to the new primary once the sentinels agree on
//! it. When the old primary survives a failover it keeps taking writes until the sentinels
//! demote it (seconds), so the store also asks a sentinel every second which server is the
//! primary, and moves when the answer changes.

use std::time::Duration;

use ::redis::aio::{ConnectionLike, MultiplexedConnection};
use ::redis::cluster::{ClusterClient, ClusterClientBuilder};
use ::redis::cluster_async::ClusterConnection;
use ::redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use ::redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    Pipeline, RedisFuture, RedisResult, TlsCertificates, TlsMode, Value,
};

use super::super::Error;
use super::COMMAND_TIMEOUT;
use crate::policy::{RedisServers, RedisStore};

/// Longest one connection attempt may take (Sentinel asks the sentinels, then the primary;
/// Cluster reads the slot map): a few command timeouts.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What makes connections: built once per store from the policy.
pub(super) enum Connector {
    Single(Client),
    Sentinel(Sentinel),
    Cluster(ClusterClient),
}

pub(super) struct Sentinel {
    /// `SentinelClient` caches its sentinel connections and needs `&mut` to use them.
    client: tokio::sync::Mutex<SentinelClient>,
    master_name: String,
    /// Where the current connection goes (host, port), as the sentinels named it.
    primary: std::sync::Mutex<Option<(String, u16)>>,
    /// A connection to one sentinel, kept for [`Connector::primary_moved`].
    ask: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

/// One live connection, cheap to clone (clones share the socket).
#[derive(Clone)]
pub(super) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Connector {
    /// Reads `ca_file` and sets up the client; connects to nothing yet.
    pub(super) fn new(store: &RedisStore) -> Result<Connector, Error> {
        let password = store.password.as_ref().map(|p| p.0.clone());
        let certs = match &store.ca_file {
            Some(path) => Some(tls_certificates(path)?),
            None => None,
        };
        match &store.servers {
            RedisServers::Single { url } => {
                let mut info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(Error::RedisUrl)?;
                if password.is_some() {
                    info.redis.password = password;
                }
                let client = match (certs, is_tls(&info)) {
                    (Some(certs), true) => Client::build_with_tls(info, certs),
                    _ => Client::open(info),
                }
                .map_err(Error::RedisUrl)?;
                Ok(Connector::Single(client))
            }
            RedisServers::Sentinel { master_name, nodes } => {
                let nodes = parse_nodes(nodes)?;
                let tls = nodes.first().is_some_and(is_tls);
                let user = nodes.first().and_then(|n| n.redis.username.clone());
                let addrs = nodes.into_iter().map(|n| n.addr);
                let mut builder = SentinelClientBuilder::new(
                    addrs,
                    master_name.clone(),
                    SentinelServerType::Master,
                )
                .map_err(Error::RedisUrl)?;
                if tls {
                    builder = builder
                        .set_client_to_redis_tls_mode(TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                    if let Some(certs) = certs {
                        builder = builder
                            .set_client_to_redis_certificates(certs.clone())
                            .set_client_to_sentinel_certificates(certs);
                    }
                }
                // The user and password are the primary's; sentinels are commonly open to the
                // network the gateway is in and protected by it.
                if let Some(user) = user {
                    builder = builder.set_client_to_redis_username(user);
                }
                if let Some(password) = password {
                    builder = builder.set_client_to_redis_password(password);
                }
                let client = builder.build().map_err(Error::RedisUrl)?;
                Ok(Connector::Sentinel(Sentinel {
                    client: tokio::sync::Mutex::new(client),
                    master_name: master_name.clone(),
                    primary: std::sync::Mutex::new(None),
                    ask: tokio::sync::Mutex::new(None),
                }))
            }
            RedisServers::Cluster { nodes } => {
                let nodes = parse_nodes(nodes)?;
                let tls = nodes.first().is_some_and(is_tls);
                let user = nodes.first().and_then(|n| n.redis.username.clone());
                let mut builder = ClusterClientBuilder::new(nodes)
                    .connection_timeout(COMMAND_TIMEOUT)
                    .response_timeout(COMMAND_TIMEOUT)
                    // A redirect after a resharding or failover is a retry; more than a couple
                    // would outlast COMMAND_TIMEOUT anyway.
                    .retries(2)
                    .min_retry_wait(5)
                    .max_retry_wait(50);
                if tls {
                    builder = builder.tls(TlsMode::Secure);
                    if let Some(certs) = certs {
                        builder = builder.certs(certs);
                    }
                }
                if let Some(user) = user {
                    builder = builder.username(user);
                }
                if let Some(password) = password {
                    builder = builder.password(password);
                }
                Ok(Connector::Cluster(
                    builder.build().map_err(Error::RedisUrl)?,
                ))
            }
        }
    }

    /// Whether a failed request should make the store connect again. A Cluster connection
    /// follows its nodes by itself (reconnects, slot moves), so only its collapse counts.
    pub(super) fn reconnect_after(&self, error: &::redis::RedisError) -> bool {
        match self {
            Connector::Single(_) | Connector::Sentinel(_) => true,
            Connector::Cluster(_) => error.is_unrecoverable_error(),
        }
    }

    /// One new connection, within [`CONNECT_TIMEOUT`].
    pub(super) async fn connect(&self) -> RedisResult<Conn> {
        // No response timeout of redis-rs's: every command is already awaited within
        // COMMAND_TIMEOUT by its caller, and a second timer per request cost as much again.
        let config = AsyncConnectionConfig::new().set_connection_timeout(COMMAND_TIMEOUT);
        let attempt = async {
            match self {
                Connector::Single(client) => client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Conn::Single),
                Connector::Sentinel(sentinel) => {
                    let client = sentinel.client.lock().await.async_get_client().await?;
                    let conn = client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?;
                    let at = match &client.get_connection_info().addr {
                        ConnectionAddr::Tcp(host, port)
                        | ConnectionAddr::TcpTls { host, port, .. } => Some((host.clone(), *port)),
                        _ => None,
                    };
                    if let Ok(mut primary) = sentinel.primary.lock() {
                        *primary = at;
                    }
                    Ok(Conn::Single(conn))
                }
                Connector::Cluster(client) => {
                    client.get_async_connection().await.map(Conn::Cluster)
                }
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(result) => result,
            Err(_) => Err(::redis::RedisError::from((
                ::redis::ErrorKind::IoError,
                "connect timed out",
            ))),
        }
    }
}

impl Connector {
    /// Sentinel only: whether the sentinels now name another primary than the one connected
    /// to. A failover the old primary survives (`SENTINEL FAILOVER`, maintenance) leaves it
    /// accepting writes until the sentinels demote it, so waiting for a failed request is not
    /// enough; the reconnect task asks this every [`SENTINEL_CHECK_EVERY`]. One command on a
    /// kept sentinel connection; `false` when no sentinel answers.
    pub(super) async fn primary_moved(&self) -> bool {
        let Connector::Sentinel(sentinel) = self else {
            return false;
        };
        let ask = async {
            let mut ask = sentinel.ask.lock().await;
            if ask.is_none() {
                let client = sentinel
                    .client
                    .lock()
                    .await
                    .async_get_sentinel_client()
                    .await?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(COMMAND_TIMEOUT)
                    .set_response_timeout(COMMAND_TIMEOUT);
                *ask = Some(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                );
            }
            let Some(conn) = ask.as_mut() else {
                return Ok(None);
            };
            let reply: RedisResult<Option<(String, u16)>> = ::redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(&sentinel.master_name)
                .query_async(conn)
                .await;
            if reply.is_err() {
                *ask = None;
            }
            reply
        };
        let named = match tokio::time::timeout(CONNECT_TIMEOUT, ask).await {
            Ok(Ok(Some(named))) => named,
            _ => return false,
        };
        sentinel
            .primary
            .lock()
            .is_ok_and(|primary| primary.as_ref().is_some_and(|p| *p != named))
    }
}

/// How often the Sentinel mode asks whether the primary moved.
pub(super) const SENTINEL_CHECK_EVERY: Duration = Duration::from_secs(1);

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

fn is_tls(info: &ConnectionInfo) -> bool {
    matches!(info.addr, ConnectionAddr::TcpTls { .. })
}

/// The policy compiler made every node a URL and checked it; this only turns them into
/// redis-rs's form.
fn parse_nodes(nodes: &[String]) -> Result<Vec<ConnectionInfo>, Error> {
    nodes
        .iter()
        .map(|n| n.as_str().into_connection_info().map_err(Error::RedisUrl))
        .collect()
}

/// `ca_file` plus the built-in roots, as redis-rs takes them: one PEM bundle. redis-rs trusts
/// only the bundle when one is given, so the built-in roots (Mozilla's, as for the upstream)
/// are written into it too.
fn tls_certificates(path: &std::path::Path) -> Result<TlsCertificates, Error> {
    let pem = std::fs::read(path)
        .map_err(|e| Error::RedisConfig(format!("ca_file {}: {}", path.display(), e.kind())))?;
    let mut found = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        cert.map_err(|e| Error::RedisConfig(format!("ca_file {}: {e}", path.display())))?;
        found += 1;
    }
    if found == 0 {
        return Err(Error::RedisConfig(format!(
            "ca_file {}: no certificate found",
            path.display()
        )));
    }
    let mut bundle = pem;
    bundle.push(b'\n');
    let builtin: Vec<pem::Pem> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .map(|der| pem::Pem::new("CERTIFICATE", der.as_ref().to_vec()))
        .collect();
    bundle.extend_from_slice(pem::encode_many(&builtin).as_bytes());
    Ok(TlsCertificates {
        client_tls: None,
        root_cert: Some(bundle),
    })
}
