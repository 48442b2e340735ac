//! Real Redis deployments on loopback for the tests of the Redis modes: a TLS server with a CA
//! made here, a primary + replica + sentinel, a three-node cluster. Every process is a real
//! `redis-server` (Debian's is built with TLS), started on free ports with no persistence and
//! killed on drop; the files live in one temporary directory removed on drop.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

/// How long a deployment may take to come up before the test fails.
const START_WITHIN: Duration = Duration::from_secs(15);

/// Fails the test (never skips it) when redis-server is missing.
pub fn require_redis(test: &str) {
    let installed = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        installed,
        "{test}: redis-server not found (apt-get install redis-server; .ci/run does)"
    );
}

/// A free loopback port whose cluster bus port (`port + 10000`) is free too.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// One redis-server process, killed on drop.
pub struct Proc {
    pub child: Child,
    pub port: u16,
}

impl Proc {
    /// Starts `redis-server` with `args` and waits until `port` accepts connections.
    pub fn spawn(port: u16, args: &[String]) -> Proc {
        let child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let deadline = Instant::now() + START_WITHIN;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Proc { child, port }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "qbgate-{what}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn base_args(port: u16) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .map(String::from)
    .to_vec()
}

/// A redis-server that speaks only TLS, with a certificate for 127.0.0.1 from a CA made here,
/// and an ACL user `limiter` whose password is `password`; the default user is off.
pub struct TlsRedis {
    pub server: Proc,
    _dir: TempDir,
    /// The CA that signed the server's certificate.
    pub ca_file: PathBuf,
    /// A CA that signed nothing the server shows.
    pub other_ca_file: PathBuf,
}

impl TlsRedis {
    pub fn start(test: &str, password: &str) -> TlsRedis {
        require_redis(test);
        let dir = TempDir::new("redis-tls");
        let (ca_cert, ca_key) = make_ca();
        let leaf_key = KeyPair::generate().expect("key");
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .signed_by(&leaf_key, &ca_cert, &ca_key)
            .expect("sign");
        let write = |name: &str, text: String| {
            let path = dir.0.join(name);
            std::fs::write(&path, text).expect("write pem");
            path
        };
        let ca_file = write("ca.pem", ca_cert.pem());
        let cert = write("server.pem", leaf.pem());
        let key = write("server.key", leaf_key.serialize_pem());
        let other_ca_file = write("other-ca.pem", make_ca().0.pem());
        let port = free_port();
        let mut args = base_args(0);
        args.extend(
            [
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                path(&cert),
                "--tls-key-file",
                path(&key),
                "--tls-ca-cert-file",
                path(&ca_file),
                "--tls-auth-clients",
                "no",
                "--user",
                "default",
                "off",
                "--user",
                "limiter",
                "on",
                &format!(">{password}"),
                "~qbgate:*",
                "+@all",
            ]
            .map(String::from),
        );
        let server = Proc::spawn(port, &args);
        TlsRedis {
            server,
            _dir: dir,
            ca_file,
            other_ca_file,
        }
    }
}

fn make_ca() -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("ca key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("ca cert");
    (cert, key)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A primary, its replica, and one sentinel watching them as `mymaster` (quorum 1, the
/// primary judged down after 300 ms).
pub struct SentinelRedis {
    pub primary: Proc,
    pub replica: Proc,
    pub sentinel: Proc,
    _dir: TempDir,
}

impl SentinelRedis {
    pub const MASTER: &'static str = "mymaster";

    pub fn start(test: &str) -> SentinelRedis {
        require_redis(test);
        let dir = TempDir::new("redis-sentinel");
        // Replication writes an RDB file even without `--save`: keep it in the temp dir.
        let in_dir = |port: u16| {
            let mut args = base_args(port);
            let data = dir.0.join(port.to_string());
            std::fs::create_dir_all(&data).expect("data dir");
            args.extend(["--dir".to_string(), path(&data).to_string()]);
            args
        };
        let primary_port = free_port();
        let primary = Proc::spawn(primary_port, &in_dir(primary_port));
        let replica_port = free_port();
        let mut args = in_dir(replica_port);
        args.extend(["--replicaof", "127.0.0.1", &primary_port.to_string()].map(String::from));
        let replica = Proc::spawn(replica_port, &args);
        let sentinel_port = free_port();
        // Sentinel rewrites its configuration file, so it gets one of its own.
        let conf = dir.0.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {m} 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds {m} 300\n\
                 sentinel failover-timeout {m} 2000\n",
                path(&dir.0),
                m = Self::MASTER,
            ),
        )
        .expect("sentinel.conf");
        let sentinel = Proc::spawn(
            sentinel_port,
            &[path(&conf).to_string(), "--sentinel".to_string()],
        );
        let deployment = SentinelRedis {
            primary,
            replica,
            sentinel,
            _dir: dir,
        };
        // Ready when the replica has synced and the sentinel knows it.
        let deadline = Instant::now() + START_WITHIN;
        loop {
            let info = cli(replica_port, &["INFO", "replication"]);
            let known = cli(sentinel_port, &["SENTINEL", "REPLICAS", Self::MASTER]);
            if info.contains("master_link_status:up") && known.contains(&replica_port.to_string()) {
                break;
            }
            assert!(Instant::now() < deadline, "replica/sentinel not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        deployment
    }

    pub fn node(&self) -> String {
        format!("127.0.0.1:{}", self.sentinel.port)
    }
}

/// Three cluster nodes sharing the 16384 slots, no replicas.
pub struct ClusterRedis {
    pub nodes: Vec<Proc>,
    _dir: TempDir,
}

impl ClusterRedis {
    pub fn start(test: &str) -> ClusterRedis {
        require_redis(test);
        let dir = TempDir::new("redis-cluster");
        let nodes: Vec<Proc> = (0..3)
            .map(|_| {
                let port = free_port();
                let mut args = base_args(port);
                args.extend(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &format!("nodes-{port}.conf"),
                        "--cluster-node-timeout",
                        "2000",
                        "--dir",
                        path(&dir.0),
                    ]
                    .map(String::from),
                );
                Proc::spawn(port, &args)
            })
            .collect();
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let status = Command::new("redis-cli")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(status.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + START_WITHIN;
        while !nodes
            .iter()
            .all(|n| cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "cluster not ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        ClusterRedis { nodes, _dir: dir }
    }

    pub fn node_list(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }
}

/// `redis-cli -p PORT ARGS...`'s output (plain TCP), empty when it fails.
pub fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
