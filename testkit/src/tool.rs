//! Runs a tracing tool the way a user does: start it, wait for the line saying it is attached
//! ("Hit Ctrl-C to end"), do something, press Ctrl-C (SIGINT), read what it printed.

use std::{
    io::{BufRead as _, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// The line pgbpf tools print on stderr once every hook is attached.
pub const ATTACHED: &str = "Hit Ctrl-C to end";

enum Line {
    Out(String),
    Err(String),
}

/// A tool that is running and attached.
pub struct Traced {
    child: Child,
    lines: mpsc::Receiver<Line>,
    stdout: Vec<String>,
    stderr: Vec<String>,
    /// Time from spawn to the attached line.
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

fn forward(stream: impl Read + Send + 'static, tx: mpsc::Sender<Line>, wrap: fn(String) -> Line) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(wrap(line)).is_err() {
                break;
            }
        }
    });
}

impl Traced {
    /// Starts a pgbpf tool and waits (up to 60 s) until it says it is tracing.
    pub fn start(bin: &str, args: &[&str]) -> anyhow::Result<Traced> {
        Traced::start_until(Command::new(bin).args(args), ATTACHED)
    }

    /// Starts `cmd` and waits (up to 60 s) for a line on stdout or stderr containing `marker`.
    pub fn start_until(cmd: &mut Command, marker: &str) -> anyhow::Result<Traced> {
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let (tx, rx) = mpsc::channel();
        forward(
            child.stdout.take().context("no stdout pipe")?,
            tx.clone(),
            Line::Out,
        );
        forward(
            child.stderr.take().context("no stderr pipe")?,
            tx,
            Line::Err,
        );
        let mut t = Traced {
            child,
            lines: rx,
            stdout: vec![],
            stderr: vec![],
            startup: Duration::ZERO,
        };
        loop {
            let Ok(line) = t.lines.recv_timeout(Duration::from_secs(60)) else {
                let _ = t.child.kill();
                let status = t.child.wait()?;
                bail!(
                    "{cmd:?} did not attach ({status}); stderr:\n{}",
                    t.stderr.join("\n")
                );
            };
            if t.keep(line).contains(marker) {
                t.startup = started.elapsed();
                return Ok(t);
            }
        }
    }

    fn keep(&mut self, line: Line) -> String {
        match line {
            Line::Out(l) => {
                self.stdout.push(l);
                self.stdout.last().cloned().unwrap_or_default()
            }
            Line::Err(l) => {
                self.stderr.push(l);
                self.stderr.last().cloned().unwrap_or_default()
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the tool printed on stderr up to now (the start-up line, warnings).
    pub fn stderr_so_far(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.keep(line);
        }
        self.stderr.join("\n")
    }

    /// Waits up to ten seconds for the tool to say `text` on stderr; an error with what it
    /// said when it does not.
    pub fn wait_said(&mut self, text: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let said = self.stderr_so_far();
            if said.contains(text) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!("the tool did not say {text:?} within 10 s; it said: {said}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory now (VmRSS), in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        self.status_kib("VmRSS:")
    }

    /// Resident memory now without the BPF maps mapped into the process (ring buffers: their
    /// pages become resident as far as the kernel has ever filled them, bounded by their
    /// size), in KiB: what grows if the tool keeps state it should free.
    pub fn rss_without_bpf_maps_kib(&self) -> Option<u64> {
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", self.pid())).ok()?;
        let mut total = 0;
        let mut bpf_map = false;
        for line in smaps.lines() {
            let mut fields = line.split_whitespace();
            let first = fields.next().unwrap_or("");
            if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                // A mapping's header: address range, perms, offset, dev, inode, pathname.
                bpf_map = line.ends_with("anon_inode:bpf-map");
            } else if first == "Rss:" && !bpf_map {
                total += fields.next()?.parse::<u64>().ok()?;
            }
        }
        Some(total)
    }

    fn status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.status_kib("VmHWM:")
    }

    /// Presses Ctrl-C and waits (up to 60 s) for the tool to print its summary and exit.
    pub fn stop(self) -> anyhow::Result<Finished> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
        self.wait(Duration::from_secs(60))
    }

    /// Waits for the tool to exit by itself (e.g. at the end of `-d`).
    pub fn wait(mut self, timeout: Duration) -> anyhow::Result<Finished> {
        let start = Instant::now();
        let status = loop {
            while let Ok(line) = self.lines.try_recv() {
                self.keep(line);
            }
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                bail!("tool did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The readers end at EOF, which follows the exit.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.keep(line);
        }
        let join = |v: &[String]| v.iter().map(|l| format!("{l}\n")).collect::<String>();
        Ok(Finished {
            status,
            stdout: join(&self.stdout),
            stderr: join(&self.stderr),
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

/// What `tool ARGS | head -1` did.
#[derive(Debug)]
pub struct HeadRun {
    /// The tool's exit status.
    pub status: ExitStatus,
    /// The line `head` printed.
    pub first_line: String,
    pub stderr: String,
    /// How long the tool ran.
    pub ran: Duration,
}

/// Runs `bin args | head -1` as a shell would: the tool's stdout is a pipe whose reader
/// exits after the first line, so the tool's later writes meet a closed pipe.
pub fn into_head(bin: &str, args: &[&str]) -> anyhow::Result<HeadRun> {
    let started = Instant::now();
    let mut tool = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {bin}"))?;
    let pipe = tool.stdout.take().context("no stdout pipe")?;
    let head = Command::new("head")
        .arg("-n1")
        .stdin(Stdio::from(pipe))
        .output()
        .context("running head")?;
    let status = loop {
        if let Some(s) = tool.try_wait()? {
            break s;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = tool.kill();
            bail!("{bin} did not exit within 60 s after its reader closed the pipe");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let ran = started.elapsed();
    let mut stderr = String::new();
    if let Some(mut e) = tool.stderr.take() {
        e.read_to_string(&mut stderr)?;
    }
    Ok(HeadRun {
        status,
        first_line: String::from_utf8_lossy(&head.stdout).into_owned(),
        stderr,
        ran,
    })
}

/// Runs `bin args 1 20 | head -1` (a report a second, twenty of them) and asserts that a
/// line came out and that the tool then ended by itself long before its twenty seconds (its
/// next report met the closed pipe), exiting 0 with nothing on stderr but its start-up line.
pub fn assert_quiet_in_head(bin: &str, args: &[&str]) {
    const REPORTS: u64 = 20;
    let would_run = Duration::from_secs(REPORTS);
    let reports = REPORTS.to_string();
    let args: Vec<&str> = args.iter().copied().chain(["1", &reports]).collect();
    let run = into_head(bin, &args).expect("running the tool into head");
    assert!(
        run.status.success(),
        "{bin} {args:?} | head -1 exited with {}; stderr:\n{}",
        run.status,
        run.stderr
    );
    assert!(
        !run.first_line.is_empty(),
        "no line came out of {bin} {args:?}"
    );
    let other: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.contains(ATTACHED))
        .collect();
    assert!(
        other.is_empty(),
        "{bin} {args:?} | head -1 printed on stderr:\n{}",
        run.stderr
    );
    assert!(
        run.ran < would_run,
        "{bin} {args:?} ran {:?} into a closed pipe (it would have ended by itself at {would_run:?})",
        run.ran
    );
}
