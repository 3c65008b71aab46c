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

/// A port for a server of this test process: below the ephemeral range (where port 0 picks
/// from, for the gateways and clients of every test), from a counter, so that two tests running
/// at once never hand Redis the same port; checked free first.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 400) * 25;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(base + n % 10_000).expect("a port");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Redis {
    /// A Redis without persistence.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// A Redis that saves an RDB snapshot only when told (`SAVE`).
    pub async fn start_with(persistence: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Redis {
            port: free_port(),
            child: None,
            dir,
            persistence,
            extra: Vec::new(),
        };
        r.spawn().await;
        r
    }

    /// A Redis that also (only, for clients) listens with TLS on [`Redis::tls_port`], with a
    /// certificate signed by `ca`; the plain port stays for the test's own commands.
    pub async fn start_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls_port = free_port();
        let mut r = Redis {
            port: free_port(),
            child: None,
            dir,
            persistence: false,
            extra: vec![
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
        };
        r.spawn().await;
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
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Redis {
            port: free_port(),
            child: None,
            dir,
            persistence: false,
            extra: vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port.to_string(),
            ],
        };
        r.spawn().await;
        r
    }

    async fn spawn(&mut self) {
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
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not answer on port {}", self.port);
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
        self.spawn().await;
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
        Redis {
            port,
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            persistence: false,
            extra: Vec::new(),
        }
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
