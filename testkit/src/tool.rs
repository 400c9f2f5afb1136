//! Runs a pgbpf tool the way a user does: start it, wait for its "Hit Ctrl-C" line (it has
//! attached), do something, press Ctrl-C (SIGINT), read what it printed.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A tool that is running and attached.
pub struct Traced {
    child: Child,
    stderr_lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
    /// Time from spawn to the "Hit Ctrl-C" line.
    pub startup: Duration,
}

/// What a finished tool run printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// stdout parsed as NDJSON.
    pub fn json(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad NDJSON line {l:?}: {e}"))
            })
            .collect()
    }
}

impl Traced {
    /// Starts `bin` with `args` and waits (up to 60 s) until it says it is tracing.
    pub fn start(bin: &str, args: &[&str]) -> anyhow::Result<Traced> {
        let started = Instant::now();
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut t = Traced {
            child,
            stderr_lines: rx,
            stderr: vec![],
            startup: Duration::ZERO,
        };
        loop {
            match t.stderr_lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    let attached = line.contains("Hit Ctrl-C to end");
                    t.stderr.push(line);
                    if attached {
                        t.startup = started.elapsed();
                        return Ok(t);
                    }
                }
                Err(_) => {
                    let _ = t.child.kill();
                    let status = t.child.wait()?;
                    bail!(
                        "{bin} {args:?} did not attach ({status}); stderr:\n{}",
                        t.stderr.join("\n")
                    );
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Presses Ctrl-C and waits (up to 60 s) for the tool to print its summary and exit.
    pub fn stop(self) -> anyhow::Result<Finished> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
        self.wait(Duration::from_secs(60))
    }

    /// Waits for the tool to exit by itself (e.g. at the end of `-d`).
    pub fn wait(mut self, timeout: Duration) -> anyhow::Result<Finished> {
        let mut stdout = self.child.stdout.take().context("no stdout pipe")?;
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                bail!("tool did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = reader.join().unwrap_or_default();
        while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_millis(200)) {
            self.stderr.push(line);
        }
        Ok(Finished {
            status,
            stdout,
            stderr: self.stderr.join("\n"),
        })
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a tool to completion (for error paths and `--help`).
pub fn run_tool(bin: &str, args: &[&str]) -> Finished {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running the tool");
    Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
