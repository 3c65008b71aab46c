//! A real `redis-server` for a test: started on a free loopback port in its own directory,
//! killed (by its PID) when dropped. Raw RESP commands over TCP for the faults the tests cause.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    persistence: bool,
    extra: Vec<String>,
}

/// A free loopback port, never one handed out before in this test process: a server killed by
/// one test must not see its port taken by another test's server (a sentinel or a gateway
/// would then talk to the wrong one).
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = l.local_addr().expect("addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

impl Redis {
    /// A server not yet started, on a free port, in a directory of its own, with `extra`
    /// arguments.
    fn unstarted(persistence: bool, extra: Vec<String>) -> Self {
        Redis {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            persistence,
            extra,
        }
    }

    /// A Redis without persistence.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// A Redis that saves an RDB snapshot only when told (`SAVE`).
    pub async fn start_with(persistence: bool) -> Self {
        let mut r = Self::unstarted(persistence, Vec::new());
        r.spawn_fresh().await;
        r
    }

    /// A Redis that also (only, for clients) listens with TLS on [`Redis::tls_port`], with a
    /// certificate signed by `ca`; the plain port stays for the test's own commands.
    pub async fn start_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
    ) -> Self {
        let tls_port = free_port();
        let mut r = Self::unstarted(
            false,
            vec![
                "--tls-port".into(),
                tls_port.to_string(),
                "--tls-cert-file".into(),
                cert.display().to_string(),
                "--tls-key-file".into(),
                key.display().to_string(),
                "--tls-ca-cert-file".into(),
                ca.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
        );
        assert!(r.spawn().await, "redis-server with TLS did not start");
        r
    }

    /// The TLS port of a server made by [`Redis::start_tls`].
    pub fn tls_port(&self) -> u16 {
        self.extra
            .iter()
            .position(|a| a == "--tls-port")
            .and_then(|i| self.extra.get(i + 1))
            .and_then(|p| p.parse().ok())
            .expect("a TLS server")
    }

    /// A replica of `master`.
    pub async fn replica_of(master: &Redis) -> Self {
        let mut r = Self::unstarted(
            false,
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port.to_string(),
            ],
        );
        r.spawn_fresh().await;
        // Online before anything is written: after a diskless first sync the master streams
        // writes only once the replica's first REPLCONF ACK arrived (up to a second later).
        for _ in 0..400 {
            let info = master
                .bulk(&["INFO", "replication"])
                .await
                .unwrap_or_default();
            if info.contains(&format!("port={},state=online", r.port)) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the replica of port {} never came online", master.port);
    }

    /// Until this replica has applied everything `master` has written (its replication offset
    /// reached the master's). `WAIT` on a fresh connection proves nothing: it waits for that
    /// connection's own writes, and it made none.
    pub async fn wait_caught_up(&self, master: &Redis) {
        let offset = |info: String, field: &str| -> Option<u64> {
            info.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().parse().ok())
        };
        let target = offset(
            master.bulk(&["INFO", "replication"]).await.expect("INFO"),
            "master_repl_offset:",
        )
        .expect("master_repl_offset");
        for _ in 0..400 {
            let info = self
                .bulk(&["INFO", "replication"])
                .await
                .unwrap_or_default();
            if offset(info, "slave_repl_offset:").is_some_and(|o| o >= target) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the replica on port {} never caught up", self.port);
    }

    /// Starts the server on its port; `false` when it exited at once (the port is taken).
    async fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--appendonly")
            .arg("no")
            .arg("--save")
            .arg("")
            .arg("--protected-mode")
            .arg("no")
            // A replica syncs at once (the default waits 5 s for more replicas).
            .arg("--repl-diskless-sync-delay")
            .arg("0")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.args(&self.extra);
        if self.persistence {
            cmd.arg("--dbfilename").arg("dump.rdb");
        }
        let child = cmd
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        self.child = Some(child);
        for _ in 0..200 {
            if let Ok(reply) = self.try_cmd(&["PING"]).await
                && reply.starts_with("+PONG")
            {
                return true;
            }
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                self.child = None;
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    /// Starts a new server; when its port was taken meanwhile (a client's ephemeral port: the
    /// server exits), on other free ports.
    async fn spawn_fresh(&mut self) {
        for _ in 0..5 {
            if self.spawn().await {
                return;
            }
            self.port = free_port();
            if let Some(at) = self.extra.iter().position(|a| a == "--cluster-port") {
                self.extra[at + 1] = free_port().to_string();
            }
        }
        panic!("redis-server never started");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and directory (an RDB snapshot there is loaded).
    pub async fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn().await,
            "redis-server did not start again on port {}",
            self.port
        );
    }

    /// Sends a signal by number to the server (SIGSTOP 19, SIGCONT 18) with `kill`.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig}");
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// One command, its first reply line (`+OK`, `:3`, `$5` ...).
    pub async fn try_cmd(&self, args: &[&str]) -> std::io::Result<String> {
        let s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(self.addr()))
            .await
            .map_err(|_| std::io::Error::other("connect timeout"))??;
        let mut s = BufReader::new(s);
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.get_mut().write_all(req.as_bytes()).await?;
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(2), s.read_line(&mut line))
            .await
            .map_err(|_| std::io::Error::other("reply timeout"))??;
        Ok(line)
    }

    pub async fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args).await.expect("redis command")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A stopped server does not die of SIGKILL until continued? It does: SIGKILL is
            // delivered to stopped processes too.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `redis-sentinel` watching `master` as `mymaster` (quorum 1, quick failover).
pub struct Sentinel {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    pub async fn start(master: &Redis) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds mymaster 400\n\
                 sentinel failover-timeout mymaster 2000\n",
                dir.path().display(),
                master.port
            ),
        )
        .expect("sentinel.conf");
        let child = Command::new("redis-sentinel")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-sentinel (Debian package redis-sentinel) must be installed");
        let s = Sentinel {
            port,
            child,
            _dir: dir,
        };
        let probe = Redis::probe(port);
        for _ in 0..200 {
            if let Ok(r) = probe.try_cmd(&["PING"]).await
                && r.starts_with("+PONG")
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-sentinel did not answer on port {port}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port of the master it names now.
    pub async fn master_port(&self) -> Option<u16> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        let mut s = BufReader::new(s);
        let req = "*3\r\n$8\r\nSENTINEL\r\n$23\r\nGET-MASTER-ADDR-BY-NAME\r\n$8\r\nmymaster\r\n";
        s.get_mut().write_all(req.as_bytes()).await.ok()?;
        let mut lines = Vec::new();
        for _ in 0..5 {
            let mut l = String::new();
            tokio::time::timeout(Duration::from_secs(2), s.read_line(&mut l))
                .await
                .ok()?
                .ok()?;
            lines.push(l.trim().to_owned());
        }
        lines.get(4)?.parse().ok()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Redis {
    /// A handle for raw commands to any server on `port` (it owns no process).
    pub fn probe(port: u16) -> Redis {
        let mut r = Self::unstarted(false, Vec::new());
        r.port = port;
        r
    }
}

/// A Redis Cluster node, not yet started.
fn cluster_node() -> Redis {
    Redis::unstarted(
        false,
        vec![
            "--cluster-enabled".into(),
            "yes".into(),
            "--cluster-config-file".into(),
            "nodes.conf".into(),
            "--cluster-node-timeout".into(),
            "2000".into(),
            // The bus port is the port + 10000 by default: out of range for a high free port,
            // or taken by another test's server.
            "--cluster-port".into(),
            free_port().to_string(),
        ],
    )
}

/// A Redis Cluster of three masters (no replicas) on free loopback ports, each in its own
/// directory, made with `redis-cli --cluster create`; killed (by PID) when dropped.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let mut r = cluster_node();
            r.spawn_fresh().await;
            nodes.push(r);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli (Debian package redis-tools) must be installed");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = RedisCluster { nodes };
        c.wait_ok().await;
        c
    }

    /// Until every node says `cluster_state:ok` and knows all three masters.
    pub async fn wait_ok(&self) {
        for _ in 0..400 {
            let mut ok = true;
            for n in &self.nodes {
                let info = n.bulk(&["CLUSTER", "INFO"]).await.unwrap_or_default();
                ok &= info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3");
            }
            if ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the Redis Cluster never reached cluster_state:ok");
    }

    /// The seed URLs for `redis_cluster`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::url).collect()
    }

    /// The node that owns the slot of `key` (asked with `CLUSTER KEYSLOT` and `CLUSTER SLOTS`).
    pub async fn owner_of(&self, key: &str) -> usize {
        let slot: u64 = self.nodes[0]
            .cmd(&["CLUSTER", "KEYSLOT", key])
            .await
            .trim()
            .trim_start_matches(':')
            .parse()
            .expect("a slot");
        let mut found = None;
        for (i, n) in self.nodes.iter().enumerate() {
            // The slot ranges on the node's own line of `CLUSTER NODES`.
            let nodes = n.bulk(&["CLUSTER", "NODES"]).await.expect("CLUSTER NODES");
            let myself = nodes
                .lines()
                .find(|l| l.contains("myself"))
                .expect("myself")
                .to_owned();
            for range in myself.split(' ').skip(8) {
                let (lo, hi) = match range.split_once('-') {
                    Some((a, b)) => (a.parse::<u64>().ok(), b.parse::<u64>().ok()),
                    None => (range.parse().ok(), range.parse().ok()),
                };
                if let (Some(lo), Some(hi)) = (lo, hi)
                    && (lo..=hi).contains(&slot)
                {
                    found = Some(i);
                }
            }
        }
        found.expect("a node owns the slot")
    }
}

impl Redis {
    /// One command whose answer is a bulk string (`INFO`, `CLUSTER INFO`, `CLUSTER NODES`).
    pub async fn bulk(&self, args: &[&str]) -> std::io::Result<String> {
        use tokio::io::AsyncReadExt;
        let s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(self.addr()))
            .await
            .map_err(|_| std::io::Error::other("connect timeout"))??;
        let mut s = BufReader::new(s);
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.get_mut().write_all(req.as_bytes()).await?;
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(2), s.read_line(&mut line))
            .await
            .map_err(|_| std::io::Error::other("reply timeout"))??;
        let len: usize = line
            .strip_prefix('$')
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not a bulk string: {line}")))?;
        let mut body = vec![0u8; len + 2];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut body))
            .await
            .map_err(|_| std::io::Error::other("reply timeout"))??;
        body.truncate(len);
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

impl Redis {
    /// The cluster bus port of a cluster node.
    pub fn bus_port(&self) -> u16 {
        let at = self
            .extra
            .iter()
            .position(|a| a == "--cluster-port")
            .expect("a cluster node");
        self.extra[at + 1].parse().expect("a port")
    }
}

impl RedisCluster {
    /// Adds a replica of master `i` (returned; it is not one of `nodes`), synced once it is.
    pub async fn add_replica(&self, i: usize) -> Redis {
        let mut r = cluster_node();
        r.spawn_fresh().await;
        let master = &self.nodes[i];
        let id = master
            .bulk(&["CLUSTER", "MYID"])
            .await
            .expect("CLUSTER MYID");
        let bus = master.bus_port().to_string();
        let met = r
            .cmd(&[
                "CLUSTER",
                "MEET",
                "127.0.0.1",
                &master.port.to_string(),
                &bus,
            ])
            .await;
        assert!(met.starts_with("+OK"), "{met}");
        let mut replicating = String::new();
        for _ in 0..400 {
            // The replica must know the master before it can follow it.
            replicating = r.cmd(&["CLUSTER", "REPLICATE", &id]).await;
            if replicating.starts_with("+OK") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(replicating.starts_with("+OK"), "{replicating}");
        let my_id = r.bulk(&["CLUSTER", "MYID"]).await.expect("CLUSTER MYID");
        for _ in 0..400 {
            let info = r.bulk(&["INFO", "replication"]).await.unwrap_or_default();
            // Synced, and known to every master as a replica (a master that never heard of it
            // would neither report the failure to it nor vote for it).
            let mut known = true;
            for n in &self.nodes {
                let nodes = n.bulk(&["CLUSTER", "NODES"]).await.unwrap_or_default();
                known &= nodes
                    .lines()
                    .any(|l| l.starts_with(&my_id) && l.contains("slave"));
            }
            let online = master
                .bulk(&["INFO", "replication"])
                .await
                .unwrap_or_default()
                .contains(&format!("port={},state=online", r.port));
            if info.contains("master_link_status:up") && known && online {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the replica of node {i} never synced");
    }
}

impl Sentinel {
    /// Until the sentinel lists a replica of `mymaster` (it learns them from the master's INFO:
    /// a master killed before that leaves it nothing to promote).
    pub async fn wait_knows_replica(&self) {
        let probe = Redis::probe(self.port);
        for _ in 0..800 {
            let info = probe.bulk(&["INFO", "sentinel"]).await.unwrap_or_default();
            if info.contains("slaves=1") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the sentinel never learned of the replica");
    }
}

impl Redis {
    /// One command whose reply is a bulk string (`INFO`): its text.
    pub async fn text(&self, args: &[&str]) -> String {
        use tokio::io::AsyncReadExt;
        let s = TcpStream::connect(self.addr()).await.expect("connect");
        let mut s = BufReader::new(s);
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.get_mut().write_all(req.as_bytes()).await.expect("send");
        let mut head = String::new();
        s.read_line(&mut head).await.expect("reply");
        if head.trim() == "$-1" {
            return String::new();
        }
        let len: usize = head
            .trim()
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a bulk reply: {head}"));
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.expect("body");
        String::from_utf8_lossy(&body).into_owned()
    }
}
