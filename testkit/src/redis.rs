//! A throwaway redis-server (Debian's redis-server package) in a temporary directory: TCP on
//! 127.0.0.1 at a free port and a Unix socket, no persistence, extra configuration as
//! `--name value` arguments; stopped on drop. redis-cli and redis-benchmark run against it. Or
//! the same server in a podman container, for `--container`.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    container::{Container, ContainerSpec},
    run,
};

/// A running redis-server.
pub struct Redis {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub socket: PathBuf,
    /// `requirepass`, when the server has one.
    pub password: Option<String>,
    /// The TLS port (`--tls-port`, self-signed certificate), when the server has one.
    pub tls_port: Option<u16>,
    process: Process,
    pid: u32,
}

/// How the server runs: a child of the test, or in a podman container.
enum Process {
    Child(Child),
    Container(Container),
}

impl Redis {
    pub fn start() -> anyhow::Result<Redis> {
        Redis::start_with(&[])
    }

    /// A server with extra configuration: `("maxmemory", "1mb")`, `("requirepass", "x")`.
    pub fn start_with(config: &[(&str, &str)]) -> anyhow::Result<Redis> {
        Redis::launch(config, false)
    }

    /// A server that also listens for TLS on [`Redis::tls_port`] (a self-signed certificate
    /// made by `openssl req`; clients are not asked for theirs).
    pub fn start_tls() -> anyhow::Result<Redis> {
        Redis::launch_with(&[], false, true)
    }

    /// redis-benchmark over TLS (without checking the certificate) with `args`.
    pub fn benchmark_tls(&self, args: &[&str]) -> anyhow::Result<String> {
        let port = self.tls_port.context("the server has no TLS port")?;
        run(Command::new("redis-benchmark")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "--tls",
                "--insecure",
            ])
            .args(args))
    }

    /// A server in a podman container (the host's binaries, the host's network, its
    /// directory shared with the host).
    pub fn start_in_container() -> anyhow::Result<Redis> {
        Redis::launch(&[], true)
    }

    fn launch(config: &[(&str, &str)], in_container: bool) -> anyhow::Result<Redis> {
        Redis::launch_with(config, in_container, false)
    }

    fn launch_with(
        config: &[(&str, &str)],
        in_container: bool,
        tls: bool,
    ) -> anyhow::Result<Redis> {
        let dir = tempfile::Builder::new()
            .prefix("pgbpf-redis-")
            .tempdir_in("/tmp")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let socket = dir.path().join("redis.sock");
        let log_file = dir.path().join("server.log");
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--unixsocket",
            &socket.display().to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            &dir.path().display().to_string(),
            "--loglevel",
            "warning",
        ]
        .map(String::from)
        .to_vec();
        let mut tls_port = None;
        if tls {
            let (crt, key) = crate::self_signed_certificate(dir.path())?;
            let p = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let (crt, key) = (crt.display().to_string(), key.display().to_string());
            for (k, v) in [
                ("--tls-port", p.to_string()),
                ("--tls-cert-file", crt.clone()),
                ("--tls-key-file", key),
                ("--tls-ca-cert-file", crt),
                ("--tls-auth-clients", "no".into()),
            ] {
                args.extend([k.to_string(), v]);
            }
            tls_port = Some(p);
        }
        let mut password = None;
        for (k, v) in config {
            args.push(format!("--{k}"));
            args.push(v.to_string());
            if *k == "requirepass" {
                password = Some(v.to_string());
            }
        }
        let (process, pid) = if in_container {
            args.extend(["--logfile".into(), log_file.display().to_string()]);
            let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
            let dir_text = dir.path().display().to_string();
            let c = Container::run(&ContainerSpec {
                host_network: true,
                volumes: vec![(dir_text.clone(), dir_text)],
                command: format!("exec redis-server {}", quoted.join(" ")),
                ..Default::default()
            })?;
            let pid = c.host_pid()?;
            (Process::Container(c), pid)
        } else {
            let log = std::fs::File::create(&log_file)?;
            let child = Command::new("redis-server")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting redis-server (apt install redis-server)")?;
            let pid = child.id();
            (Process::Child(child), pid)
        };
        let r = Redis {
            dir,
            port,
            socket,
            password,
            tls_port,
            process,
            pid,
        };
        r.wait_ready(Duration::from_secs(20))?;
        Ok(r)
    }

    /// The container the server runs in, if it does.
    pub fn container(&self) -> Option<&Container> {
        match &self.process {
            Process::Container(c) => Some(c),
            Process::Child(_) => None,
        }
    }

    /// The server's pid (on the host).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if self.cli(&["PING"]).is_ok_and(|o| o.trim() == "PONG") {
                return Ok(());
            }
            if start.elapsed() > timeout {
                let log =
                    std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
                bail!("redis-server did not answer PING: {log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// redis-cli with its connection arguments (over TCP).
    pub fn cli_command(&self) -> Command {
        let mut c = Command::new("redis-cli");
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(pw) = &self.password {
            // Through the environment: not visible in ps.
            c.env("REDISCLI_AUTH", pw);
        }
        c
    }

    /// redis-cli with `args`; its output.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        run(self.cli_command().args(args))
    }

    /// redis-cli reading commands from `input` (one per line).
    pub fn cli_stdin(&self, args: &[&str], input: &str) -> anyhow::Result<String> {
        use std::io::Write as _;
        let mut child = self
            .cli_command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("no stdin")?
            .write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("redis-cli failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// redis-benchmark against the server with `args` (`-t set,get -n 1000 -c 4 -q`).
    pub fn benchmark(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut c = Command::new("redis-benchmark");
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(pw) = &self.password {
            c.args(["-a", pw]);
        }
        run(c.args(args))
    }

    /// `INFO section` as name → value.
    pub fn info(&self, section: &str) -> anyhow::Result<HashMap<String, String>> {
        let text = self.cli(&["INFO", section])?;
        Ok(text
            .lines()
            .filter_map(|l| l.trim_end().split_once(':'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// INFO commandstats: command (as `get`, `config|get`) → calls.
    pub fn command_calls(&self) -> anyhow::Result<HashMap<String, u64>> {
        let stats = self.info("commandstats")?;
        Ok(stats
            .iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("cmdstat_")?;
                let calls = v.split(',').find_map(|f| f.strip_prefix("calls="))?;
                Some((name.to_string(), calls.parse().ok()?))
            })
            .collect())
    }

    /// INFO errorstats: error code → count.
    pub fn error_counts(&self) -> anyhow::Result<HashMap<String, u64>> {
        let stats = self.info("errorstats")?;
        Ok(stats
            .iter()
            .filter_map(|(k, v)| {
                let code = k.strip_prefix("errorstat_")?;
                let n = v.strip_prefix("count=")?;
                Some((code.to_string(), n.parse().ok()?))
            })
            .collect())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // A container is removed by its own drop.
        if let Process::Child(child) = &mut self.process {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
