//! A throwaway PostgreSQL cluster made with Debian's binaries in a temporary directory: on the
//! host (TCP on 127.0.0.1 and a private socket) or in a podman container (socket in a volume).
//! Stopped and deleted on drop.

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{
    container::{Container, ContainerSpec},
    run,
};

/// How to start the cluster.
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// Extra server settings, `-c name=value` each.
    pub settings: Vec<(String, String)>,
    /// Preload and create pg_stat_statements.
    pub pg_stat_statements: bool,
    /// Run the server in a podman container with these limits (command and volumes are ours).
    pub container: Option<ContainerSpec>,
    /// `ssl = on` with a self-signed certificate made by `openssl req`, and TCP connections
    /// accepted over TLS only (`hostssl`; `hostnossl` rejected). In a container, with the
    /// host's network (`ContainerSpec::host_network`) for TCP.
    pub tls: bool,
    /// The port to listen on (default: a free one).
    pub port: Option<u16>,
}

/// A running cluster.
pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// Directory of the server's unix socket, as the host sees it.
    pub socket_dir: PathBuf,
    pub bin_dir: PathBuf,
    child: Option<Child>,
    pub container: Option<Container>,
    /// Started with `ssl = on` (TCP over TLS only).
    pub tls: bool,
    /// The server's settings, for a restart.
    settings: Vec<(String, String)>,
}

/// How the server is stopped, as `pg_ctl stop -m` says it (the signal the postmaster gets).
#[derive(Clone, Copy, Debug)]
pub enum Shutdown {
    /// SIGINT: sessions ended, a checkpoint written.
    Fast,
    /// SIGQUIT: every process killed without a checkpoint; the next start recovers as after a
    /// crash.
    Immediate,
}

fn postgres_ids() -> anyhow::Result<(u32, u32)> {
    let u = nix::unistd::User::from_name("postgres")?
        .ok_or_else(|| anyhow!("no postgres user; install the postgresql package"))?;
    Ok((u.uid.as_raw(), u.gid.as_raw()))
}

/// A self-signed certificate for the server in `dir` (key readable by the server only), TCP
/// allowed over TLS only; the settings that turn it on.
fn tls_only(dir: &Path, data: &Path, uid: u32, gid: u32) -> anyhow::Result<Vec<(String, String)>> {
    let (crt, key) = crate::self_signed_certificate(dir)?;
    for f in [&crt, &key] {
        nix::unistd::chown(f, Some(uid.into()), Some(gid.into()))?;
    }
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\n\
         hostssl all all 127.0.0.1/32 trust\n\
         hostnossl all all 127.0.0.1/32 reject\n",
    )?;
    Ok(vec![
        ("ssl".into(), "on".into()),
        ("ssl_cert_file".into(), crt.display().to_string()),
        ("ssl_key_file".into(), key.display().to_string()),
    ])
}

/// A TCP port nobody listens on now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Postgres {
    pub fn start() -> anyhow::Result<Postgres> {
        Postgres::start_with(&PgOptions::default())
    }

    /// A cluster with pg_stat_statements and pgbench's tables at scale 1: the usual
    /// cross-check set-up.
    pub fn with_pgss_and_pgbench() -> anyhow::Result<Postgres> {
        Postgres::start_with_pgbench(
            &PgOptions {
                pg_stat_statements: true,
                ..Default::default()
            },
            1,
        )
    }

    /// A cluster with `opts` and pgbench's tables at `scale` (pgbench -i -q).
    pub fn start_with_pgbench(opts: &PgOptions, scale: u32) -> anyhow::Result<Postgres> {
        let pg = Postgres::start_with(opts)?;
        pg.pgbench(&["-i", "-s", &scale.to_string(), "-q"])?;
        Ok(pg)
    }

    pub fn start_with(opts: &PgOptions) -> anyhow::Result<Postgres> {
        let bin_dir = pgbpf_common::postgres::installed_bin_dir()?;
        let (uid, gid) = postgres_ids()?;
        let dir = tempfile::Builder::new()
            .prefix("pgbpf-pg-")
            .tempdir_in("/tmp")?;
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir(&socket_dir)?;
        for p in [dir.path(), &socket_dir] {
            nix::unistd::chown(p, Some(uid.into()), Some(gid.into()))?;
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin_dir.join("initdb"));
        initdb
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale",
                "C",
                "-D",
            ])
            .arg(&data)
            .uid(uid)
            .gid(gid);
        run(&mut initdb).context("initdb")?;
        let mut tls_settings = vec![];
        if opts.tls {
            tls_settings = tls_only(dir.path(), &data, uid, gid)?;
        }

        let port = match opts.port {
            Some(p) => p,
            None => free_port()?,
        };
        let mut settings: Vec<(String, String)> = vec![
            ("fsync".into(), "off".into()),
            ("shared_buffers".into(), "32MB".into()),
            ("max_connections".into(), "50".into()),
            ("log_min_messages".into(), "warning".into()),
        ];
        if opts.pg_stat_statements {
            settings.push((
                "shared_preload_libraries".into(),
                "pg_stat_statements".into(),
            ));
            settings.push(("pg_stat_statements.track".into(), "all".into()));
        }
        settings.extend(tls_settings);
        settings.extend(opts.settings.iter().cloned());
        let mut pg = Postgres {
            dir,
            port,
            socket_dir,
            bin_dir,
            child: None,
            container: None,
            tls: opts.tls,
            settings: settings.clone(),
        };
        match &opts.container {
            None => pg.spawn_on_host(uid, gid, &settings)?,
            Some(spec) => pg.spawn_in_container(spec, &settings)?,
        }
        pg.wait_ready(Duration::from_secs(60))?;
        if opts.pg_stat_statements {
            pg.psql("create extension if not exists pg_stat_statements")?;
        }
        Ok(pg)
    }

    /// libpq's conninfo over TCP on 127.0.0.1 (with `sslmode`, e.g. `require`).
    pub fn tcp_conninfo(&self, sslmode: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode={sslmode}",
            self.port
        )
    }

    fn server_args(&self, data: &Path, sock: &Path, settings: &[(String, String)]) -> Vec<String> {
        let mut a = vec![
            "-D".to_string(),
            data.display().to_string(),
            "-k".into(),
            sock.display().to_string(),
            "-p".into(),
            self.port.to_string(),
        ];
        for (k, v) in settings {
            a.push("-c".into());
            a.push(format!("{k}={v}"));
        }
        a
    }

    fn spawn_on_host(
        &mut self,
        uid: u32,
        gid: u32,
        settings: &[(String, String)],
    ) -> anyhow::Result<()> {
        let mut settings = settings.to_vec();
        // The last -c wins: 127.0.0.1 unless the test asked for addresses of its own.
        if !settings.iter().any(|(k, _)| k == "listen_addresses") {
            settings.push(("listen_addresses".into(), "127.0.0.1".into()));
        }
        // Appended to: a restarted server's log follows the first one's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.server_log_path())?;
        nix::unistd::chown(&self.server_log_path(), Some(uid.into()), Some(gid.into()))?;
        let args = self.server_args(&self.dir.path().join("data"), &self.socket_dir, &settings);
        let child = Command::new(self.bin_dir.join("postgres"))
            .args(args)
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting postgres")?;
        self.child = Some(child);
        Ok(())
    }

    fn spawn_in_container(
        &mut self,
        spec: &ContainerSpec,
        settings: &[(String, String)],
    ) -> anyhow::Result<()> {
        // Files of ours (TLS certificate and key) are under the volume's path in there.
        let host_dir = self.dir.path().display().to_string();
        let mut settings: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| match v.strip_prefix(&host_dir) {
                Some(rest) => (k.clone(), format!("/pgbpf{rest}")),
                None => (k.clone(), v.clone()),
            })
            .collect();
        let listen = if spec.host_network { "127.0.0.1" } else { "" };
        settings.push(("listen_addresses".into(), listen.into()));
        let args = self.server_args(
            Path::new("/pgbpf/data"),
            Path::new("/pgbpf/sock"),
            &settings,
        );
        let quoted: Vec<String> = args
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect();
        let mut spec = spec.clone();
        spec.volumes
            .push((self.dir.path().display().to_string(), "/pgbpf".into()));
        spec.user = Some("postgres".into());
        spec.command = format!(
            "exec {} {} >>/pgbpf/server.log 2>&1",
            self.bin_dir.join("postgres").display(),
            quoted.join(" ")
        );
        self.container = Some(Container::run(&spec)?);
        Ok(())
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if self.psql("select 1").is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!(
                    "postgres exited ({status}) during startup:\n{}",
                    self.server_log()
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "postgres did not accept connections within {timeout:?}:\n{}",
                    self.server_log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn server_log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.server_log_path()).unwrap_or_default()
    }

    /// libpq connection arguments: socket directory, port, user, database.
    pub fn conn_args(&self) -> Vec<String> {
        vec![
            "-h".into(),
            self.socket_dir.display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            "postgres".into(),
        ]
    }

    /// psql on the `postgres` database, unaligned, tuples only, quiet, stopping at an error.
    fn psql_command(&self) -> Command {
        let mut cmd = Command::new("psql");
        cmd.args(self.conn_args()).args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            "postgres",
        ]);
        cmd
    }

    /// Runs SQL with psql (unaligned, tuples only) and returns its output.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        run(self.psql_command().args(["-c", sql]))
    }

    /// Waits (up to 5 s) until every client backend but the caller's has left: a backend
    /// flushes its statistics (pg_statio, temp_bytes, pg_stat_wal) as it exits, before it
    /// leaves pg_stat_activity.
    pub fn wait_other_backends_gone(&self) {
        for _ in 0..100 {
            let others = self
                .psql(
                    "select count(*) from pg_stat_activity where backend_type = \
                     'client backend' and pid <> pg_backend_pid()",
                )
                .unwrap_or_default();
            if others.trim() == "0" {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Puts `rules` (pg_hba.conf lines) before the cluster's own and waits until the
    /// postmaster has loaded them: pg_reload_conf() only signals it, and a connection made
    /// meanwhile would meet the old rules. A new backend carries the postmaster's reload
    /// time, which it sets while reloading, before forking anyone again.
    pub fn add_hba_rules(&self, rules: &str) -> anyhow::Result<()> {
        let hba = self.dir.path().join("data/pg_hba.conf");
        let old = std::fs::read_to_string(&hba)?;
        std::fs::write(&hba, format!("{rules}\n{old}"))?;
        let before = self.psql("select pg_conf_load_time()")?;
        self.psql("select pg_reload_conf()")?;
        let start = Instant::now();
        while self.psql("select pg_conf_load_time()")? == before {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(10),
                "the server did not reload its configuration"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Runs pgbench with `args` against the `postgres` database.
    pub fn pgbench(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("pgbench")
            .args(self.conn_args())
            .args(args)
            .arg("postgres"))
    }

    /// pgbench over TCP with TLS required (a cluster started with `tls`), output discarded,
    /// errors kept: run it with `crate::run`.
    pub fn pgbench_tls(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("pgbench");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(args)
        .arg("postgres")
        .env("PGSSLMODE", "require")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        cmd
    }

    /// A psql connection kept open, for statements run one at a time on one backend.
    pub fn session(&self) -> anyhow::Result<Session> {
        let mut child = self
            .psql_command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting psql")?;
        let stdin = child.stdin.take().context("no stdin pipe")?;
        let stdout = std::io::BufReader::new(child.stdout.take().context("no stdout pipe")?);
        let mut s = Session {
            child,
            stdin,
            stdout,
            backend_pid: 0,
        };
        s.backend_pid = s.run("select pg_backend_pid()")?.trim().parse()?;
        Ok(s)
    }

    /// Stops the server as `pg_ctl restart -m MODE` does and starts it again with the same
    /// settings (a new postmaster, same data directory and port); on the host only.
    pub fn restart(&mut self, mode: Shutdown) -> anyhow::Result<()> {
        self.restart_with(mode, self.port, &[])
    }

    /// [`Postgres::restart`], the new server listening on `port` with `changed` settings (as
    /// a changed configuration takes effect at a restart).
    pub fn restart_with(
        &mut self,
        mode: Shutdown,
        port: u16,
        changed: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("restart: the server runs in a container");
        };
        let sig = match mode {
            Shutdown::Fast => nix::sys::signal::Signal::SIGINT,
            Shutdown::Immediate => nix::sys::signal::Signal::SIGQUIT,
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig)?;
        child.wait()?;
        self.port = port;
        // The last -c of a setting wins.
        self.settings
            .extend(changed.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let (uid, gid) = postgres_ids()?;
        let settings = self.settings.clone();
        self.spawn_on_host(uid, gid, &settings)?;
        self.wait_ready(Duration::from_secs(60))
    }

    /// [`Postgres::restart_with`] under `tool`, which names this server by its data directory
    /// or port: waits for the tool to follow the new postmaster and, once the server is ready,
    /// to say it read it again. The new postmaster's pid.
    pub fn restart_under(
        &mut self,
        tool: &mut crate::tool::Traced,
        port: u16,
        changed: &[(&str, &str)],
    ) -> anyhow::Result<u32> {
        self.restart_with(Shutdown::Fast, port, changed)?;
        let pid = self.postmaster_pid()?;
        tool.wait_said(&format!("following its new main process PID {pid}"))?;
        tool.wait_said(&format!("the server's new main process PID {pid} is ready"))?;
        Ok(pid)
    }

    /// Host pid of the postmaster.
    pub fn postmaster_pid(&self) -> anyhow::Result<u32> {
        let text = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))?;
        let in_ns: u32 = text.lines().next().unwrap_or("").trim().parse()?;
        match &self.container {
            // postmaster.pid holds the pid inside the container's namespace; the container's
            // first process is the postmaster (exec'd by sh).
            Some(c) => c.host_pid(),
            None => Ok(in_ns),
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGQUIT: immediate shutdown, no checkpoint.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGQUIT,
            );
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Container drop removes it; the temp dir goes after.
        self.container.take();
    }
}

/// An open psql connection (see [`Postgres::session`]); psql ends when it is dropped.
pub struct Session {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    /// Pid of the server process serving this connection.
    pub backend_pid: u32,
}

impl Session {
    /// Runs one statement (its own Query message) and returns its output, once it finished.
    pub fn run(&mut self, sql: &str) -> anyhow::Result<String> {
        use std::io::{BufRead as _, Write as _};
        const DONE: &str = "--pgbpf-session-done--";
        writeln!(
            self.stdin,
            "{};\n\\echo {DONE}",
            sql.trim().trim_end_matches(';')
        )?;
        self.stdin.flush()?;
        let mut out = String::new();
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line)? == 0 {
                bail!("psql ended while running {sql:?}");
            }
            if line.trim_end() == DONE {
                return Ok(out);
            }
            out.push_str(&line);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
