//! The replay itself: a dispatcher thread reads the input in time order and hands each
//! session's events to that session's task, which connects, sends and disconnects at the
//! original times (scaled by `--speed`, long pauses cut by `--max-idle`) on its own
//! connection. No session waits on another: a slow statement delays its own session only.
//!
//! A client that waited for its answers waits in the replay too (each write waits for as
//! many ReadyForQuery as the original client had received), one that pipelined pipelines,
//! so the server sees the same concurrency. How late each write goes out against its
//! schedule is the session's lag.
//!
//! The dispatcher reads ahead at most [`LOOKAHEAD`] of the schedule and holds at most
//! [`BUDGET_BYTES`] of unsent bytes, so memory stays bounded however long the input.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        mpsc,
    },
    time::Duration,
};

use anyhow::Context as _;
use foldhash::{HashMap, HashMapExt as _};
use pgbpf_common::{latency::Latencies, output::mono_ns};
use pgbpf_pgwire::conn::{Completed, Connection};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc as tmpsc, watch},
    time::Instant,
};

use crate::{
    client::{self, Login},
    conninfo::{Passwords, Target},
    source::{Event, InputStats, Source},
};

/// How far ahead of the schedule the dispatcher reads.
const LOOKAHEAD: Duration = Duration::from_millis(500);
/// Bytes read from the input and not yet sent, at most: with --speed max the dispatcher
/// reads ahead until this is full, so it is what memory grows to (8 MiB is hundreds of
/// statements for each of a hundred sessions).
const BUDGET_BYTES: usize = 8 << 20;
/// How long a session waits for the server to close after Terminate.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// How the replay is paced and whom it replays.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// 1 is the original pace, 2 twice as fast; infinite: as fast as the answers come.
    pub speed: f64,
    /// Pauses of the whole input longer than this are cut to it.
    pub max_idle: Option<Duration>,
    pub max_connections: Option<usize>,
    /// Log in as this user / to this database instead of the original's.
    pub user: Option<String>,
    pub database: Option<String>,
    /// Only sessions of these databases, users, application names (when not empty).
    pub only_databases: Vec<String>,
    pub only_users: Vec<String>,
    pub only_applications: Vec<String>,
}

/// What the replay tells the report, in the order it happened.
#[derive(Debug)]
pub enum Outcome {
    Original {
        key: u64,
        completed: Completed,
        timed: bool,
    },
    Replayed {
        key: u64,
        completed: Completed,
    },
    SessionEnded(Box<SessionSummary>),
}

/// One session's replay, as it ended.
#[derive(Debug, Default)]
pub struct SessionSummary {
    pub key: u64,
    pub login: Login,
    pub application: String,
    /// How late each write went out against its schedule.
    pub lag: Latencies,
    /// Writes not sent: the session failed or the replay was stopped.
    pub unsent: u64,
    /// Why the session could not connect or ended early.
    pub error: Option<String>,
    /// It waited for a free connection (`--max-connections`).
    pub queued: bool,
}

/// Counters the progress line reads while the replay runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub sessions_started: AtomicU64,
    pub sessions_open: AtomicU64,
    pub sessions_queued: AtomicU64,
    pub sessions_done: AtomicU64,
    pub sessions_failed: AtomicU64,
    pub sessions_filtered: AtomicU64,
    /// Where the dispatcher is in the input, ns after its first event.
    pub input_ns: AtomicU64,
    /// The input is read to its end (or to the stop).
    pub input_done: AtomicBool,
    pub max_lag_ns: AtomicU64,
}

impl Progress {
    /// Every session that began has ended and the input is read.
    pub fn finished(&self) -> bool {
        self.input_done.load(Relaxed)
            && self.sessions_done.load(Relaxed) == self.sessions_started.load(Relaxed)
    }
}

/// What every session task shares.
struct Shared {
    target: Target,
    passwords: Passwords,
    options: Options,
    report: mpsc::Sender<Outcome>,
    progress: Arc<Progress>,
    connections: Option<Arc<Semaphore>>,
    stop: watch::Receiver<bool>,
}

enum Cmd {
    Send {
        due: Instant,
        bytes: Vec<u8>,
        after_ready: u64,
        answers: u64,
        _budget: OwnedSemaphorePermit,
    },
    End {
        due: Instant,
    },
}

/// A replay running: the dispatcher thread and the tasks it spawned.
pub struct Replay {
    runtime: Option<tokio::runtime::Runtime>,
    dispatcher: Option<std::thread::JoinHandle<anyhow::Result<InputStats>>>,
    stop: watch::Sender<bool>,
    pub progress: Arc<Progress>,
}

impl Replay {
    /// Starts replaying `source` into `target`; outcomes go to `report`.
    pub fn start(
        source: Box<dyn Source>,
        target: Target,
        passwords: Passwords,
        options: Options,
        report: mpsc::Sender<Outcome>,
    ) -> anyhow::Result<Replay> {
        // One I/O thread: each statement is a write and a read on its session's socket, and
        // with more threads most of the time went to waking tasks across them (measured:
        // docs/PERFORMANCE.md).
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("pg_replay-io")
            .build()
            .context("starting the replay's threads")?;
        let (stop, stop_rx) = watch::channel(false);
        let progress = Arc::new(Progress::default());
        let shared = Arc::new(Shared {
            target,
            passwords,
            connections: options.max_connections.map(|n| Arc::new(Semaphore::new(n))),
            options,
            report,
            progress: Arc::clone(&progress),
            stop: stop_rx,
        });
        let handle = runtime.handle().clone();
        let dispatcher = std::thread::Builder::new()
            .name("pg_replay-input".into())
            .spawn(move || {
                let result = dispatch(source, &shared, &handle);
                shared.progress.input_done.store(true, Relaxed);
                result
            })
            .context("starting the input thread")?;
        Ok(Replay {
            runtime: Some(runtime),
            dispatcher: Some(dispatcher),
            stop,
            progress,
        })
    }

    /// Stops reading and tells every session to end now (Ctrl-C, `-d`).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Waits for the input thread and the sessions (those still running get
    /// [`CLOSE_WAIT`]); what the input could not give.
    pub fn join(&mut self) -> anyhow::Result<InputStats> {
        let stats = match self.dispatcher.take() {
            Some(d) => d
                .join()
                .map_err(|_| anyhow::anyhow!("the input thread panicked"))?,
            None => Ok(InputStats::default()),
        };
        let deadline = std::time::Instant::now() + CLOSE_WAIT * 2;
        while !self.progress.finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_millis(200));
        }
        stats
    }
}

/// The schedule: input time → the instant it is due.
struct Clock {
    speed: f64,
    max_idle_ns: Option<u64>,
    wall0: Instant,
    input0: Option<u64>,
    last_ns: u64,
    /// Input time cut out by `--max-idle`.
    skipped_ns: u64,
}

impl Clock {
    fn due(&mut self, ts_ns: u64) -> Instant {
        let input0 = *self.input0.get_or_insert(ts_ns);
        if let Some(max) = self.max_idle_ns {
            let gap = ts_ns.saturating_sub(self.last_ns.max(input0));
            if gap > max {
                self.skipped_ns += gap - max;
            }
        }
        self.last_ns = self.last_ns.max(ts_ns);
        if !self.speed.is_finite() {
            return self.wall0;
        }
        let offset = ts_ns.saturating_sub(input0).saturating_sub(self.skipped_ns);
        self.wall0 + Duration::from_secs_f64(offset as f64 / 1e9 / self.speed)
    }
}

/// Reads the input and hands its events out, until its end or the stop.
fn dispatch(
    mut source: Box<dyn Source>,
    shared: &Arc<Shared>,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<InputStats> {
    let mut clock = Clock {
        speed: shared.options.speed,
        max_idle_ns: shared.options.max_idle.map(|d| d.as_nanos() as u64),
        // A moment to spawn the first sessions before their schedule.
        wall0: Instant::now() + Duration::from_millis(50),
        input0: None,
        last_ns: 0,
        skipped_ns: 0,
    };
    let budget = Arc::new(Semaphore::new(BUDGET_BYTES));
    let mut sessions: HashMap<u64, tmpsc::UnboundedSender<Cmd>> = HashMap::new();
    let stopped = || *shared.stop.borrow();
    while !stopped() {
        let Some(event) = source.next_event()? else {
            break;
        };
        let due = clock.due(event.ts_ns());
        // Records of different CPUs may come a little out of order: the furthest so far.
        shared.progress.input_ns.fetch_max(
            event.ts_ns().saturating_sub(clock.input0.unwrap_or(0)),
            Relaxed,
        );
        // Read ahead no more than LOOKAHEAD; sleep in steps so a stop is seen.
        while !stopped() {
            let ahead = due.saturating_duration_since(Instant::now());
            if ahead <= LOOKAHEAD {
                break;
            }
            std::thread::sleep((ahead - LOOKAHEAD).min(Duration::from_millis(50)));
        }
        match event {
            Event::Begin { key, startup, .. } => {
                let Some(login) = login_of(&shared.options, &shared.target, &startup) else {
                    shared.progress.sessions_filtered.fetch_add(1, Relaxed);
                    continue;
                };
                let (tx, rx) = tmpsc::unbounded_channel();
                sessions.insert(key, tx);
                shared.progress.sessions_started.fetch_add(1, Relaxed);
                let application = param(&startup, "application_name").unwrap_or_default();
                rt.spawn(run_session(
                    key,
                    login,
                    application,
                    due,
                    rx,
                    Arc::clone(shared),
                ));
            }
            Event::Send {
                key,
                bytes,
                after_ready,
                answers,
                ..
            } => {
                let Some(tx) = sessions.get(&key) else {
                    continue;
                };
                let n = bytes.len().clamp(1, BUDGET_BYTES) as u32;
                let permit = rt
                    .block_on(Arc::clone(&budget).acquire_many_owned(n))
                    .context("the byte budget closed")?;
                // A session that ended early no longer listens: nothing to do.
                let _ = tx.send(Cmd::Send {
                    due,
                    bytes,
                    after_ready,
                    answers,
                    _budget: permit,
                });
            }
            Event::Original {
                key,
                completed,
                timed,
            } => {
                if sessions.contains_key(&key) {
                    let _ = shared.report.send(Outcome::Original {
                        key,
                        completed,
                        timed,
                    });
                }
            }
            Event::End { key, .. } => {
                if let Some(tx) = sessions.remove(&key) {
                    let _ = tx.send(Cmd::End { due });
                }
            }
        }
    }
    // Sessions still open end when their channel does.
    drop(sessions);
    Ok(source.stats())
}

fn param(startup: &[(String, String)], name: &str) -> Option<String> {
    startup
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// Whom a session logs in as (`--user`/`--database`, else the original's, else the
/// target's), or None when the filters leave it out.
pub(crate) fn login_of(
    options: &Options,
    target: &Target,
    startup: &[(String, String)],
) -> Option<Login> {
    let user = options
        .user
        .clone()
        .or_else(|| param(startup, "user"))
        .or_else(|| target.user.clone())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "postgres".into());
    let database = options
        .database
        .clone()
        .or_else(|| param(startup, "database"))
        .or_else(|| target.dbname.clone())
        .unwrap_or_else(|| user.clone());
    let application = param(startup, "application_name").unwrap_or_default();
    let keep = |only: &[String], v: &str| only.is_empty() || only.iter().any(|o| o == v);
    (keep(&options.only_users, &user)
        && keep(&options.only_databases, &database)
        && keep(&options.only_applications, &application))
    .then(|| Login {
        user,
        database,
        params: startup.to_vec(),
    })
}

/// One session, from connecting to closing.
async fn run_session(
    key: u64,
    login: Login,
    application: String,
    begin: Instant,
    mut rx: tmpsc::UnboundedReceiver<Cmd>,
    shared: Arc<Shared>,
) {
    let progress = &shared.progress;
    let mut summary = SessionSummary {
        key,
        login: login.clone(),
        application,
        ..SessionSummary::default()
    };
    let _slot = match &shared.connections {
        None => None,
        Some(limit) => {
            let queued = limit.available_permits() == 0;
            if queued {
                summary.queued = true;
                progress.sessions_queued.fetch_add(1, Relaxed);
            }
            let permit = Arc::clone(limit).acquire_owned().await.ok();
            if queued {
                progress.sessions_queued.fetch_sub(1, Relaxed);
            }
            permit
        }
    };
    tokio::time::sleep_until(begin).await;
    progress.sessions_open.fetch_add(1, Relaxed);
    let result = replay_session(&login, &mut rx, &shared, &mut summary).await;
    progress.sessions_open.fetch_sub(1, Relaxed);
    if let Err(e) = result {
        let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
        summary.error = Some(chain.join(": "));
        progress.sessions_failed.fetch_add(1, Relaxed);
    }
    rx.close();
    while let Some(cmd) = rx.recv().await {
        summary.unsent += u64::from(matches!(cmd, Cmd::Send { .. }));
    }
    let _ = shared.report.send(Outcome::SessionEnded(Box::new(summary)));
    progress.sessions_done.fetch_add(1, Relaxed);
}

/// The decoder of the replay's own traffic, shared by the session's writer and reader.
struct Decoder {
    conn: Connection,
    done: Vec<Completed>,
}

async fn replay_session(
    login: &Login,
    rx: &mut tmpsc::UnboundedReceiver<Cmd>,
    shared: &Arc<Shared>,
    summary: &mut SessionSummary,
) -> anyhow::Result<()> {
    let key = summary.key;
    let (mut r, mut w) = client::connect(&shared.target, &shared.passwords, login).await?;
    let decoder = Arc::new(Mutex::new(Decoder {
        conn: Connection::logged_in(),
        done: vec![],
    }));
    let (ready_tx, mut ready_rx) = watch::channel(0u64);
    let reader = {
        let decoder = Arc::clone(&decoder);
        let report = shared.report.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let (done, ready) = {
                    let mut d = decoder.lock().unwrap_or_else(|p| p.into_inner());
                    let Decoder { conn, done } = &mut *d;
                    conn.server_bytes_into(mono_ns(), &buf[..n], 0, done);
                    (std::mem::take(done), conn.ready)
                };
                for completed in done {
                    let _ = report.send(Outcome::Replayed { key, completed });
                }
                ready_tx.send_replace(ready);
            }
            // Dropping the sender tells the writer the server is gone.
        })
    };
    let mut stop = shared.stop.clone();
    let mut asked = 0u64;
    let mut terminated = false;
    let mut ended_early = None;
    loop {
        let cmd = tokio::select! {
            cmd = rx.recv() => cmd,
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(cmd) = cmd else { break };
        let (due, bytes, after_ready, answers) = match cmd {
            Cmd::Send {
                due,
                bytes,
                after_ready,
                answers,
                _budget,
            } => (due, bytes, after_ready, answers),
            Cmd::End { due } => {
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
                break;
            }
        };
        // Behind schedule or unpaced, a timer would only cost.
        if due > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = stop.wait_for(|s| *s) => { summary.unsent += 1; break }
            }
        }
        // As the original client did: wait for the answers it had (never for more than
        // this replay asked for: messages skipped must not make it wait forever).
        let need = after_ready.min(asked);
        let answered = tokio::select! {
            r = ready_rx.wait_for(|&n| n >= need) => r.is_ok(),
            _ = stop.wait_for(|s| *s) => { summary.unsent += 1; break }
        };
        if !answered {
            summary.unsent += 1;
            ended_early = Some("the server closed the connection");
            break;
        }
        // Without a schedule (--speed max) there is nothing to be behind of.
        if shared.options.speed.is_finite() {
            let lag = Instant::now().saturating_duration_since(due).as_nanos() as u64;
            summary.lag.add(lag);
            shared.progress.max_lag_ns.fetch_max(lag, Relaxed);
        }
        {
            let mut d = decoder.lock().unwrap_or_else(|p| p.into_inner());
            d.conn.client_bytes(mono_ns(), &bytes, 0);
        }
        if w.write_all(&bytes).await.is_err() {
            summary.unsent += 1;
            ended_early = Some("the server closed the connection");
            break;
        }
        asked += answers;
        terminated = last_tag(&bytes) == Some(b'X');
    }
    if !terminated {
        let _ = w.write_all(&[b'X', 0, 0, 0, 4]).await;
    }
    let _ = w.shutdown().await;
    let _ = tokio::time::timeout(CLOSE_WAIT, reader).await;
    let rest = {
        let mut d = decoder.lock().unwrap_or_else(|p| p.into_inner());
        d.conn.close()
    };
    for completed in rest {
        let _ = shared.report.send(Outcome::Replayed { key, completed });
    }
    match ended_early {
        Some(why) => anyhow::bail!("{why} before the session's end"),
        None => Ok(()),
    }
}

/// The tag of the last whole message in `bytes`.
fn last_tag(bytes: &[u8]) -> Option<u8> {
    let mut i = 0;
    let mut last = None;
    while i + 5 <= bytes.len() {
        last = Some(bytes[i]);
        let len = u32::from_be_bytes([bytes[i + 1], bytes[i + 2], bytes[i + 3], bytes[i + 4]]);
        i += 1 + len.max(4) as usize;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_scales_by_speed_and_cuts_long_pauses() {
        let wall0 = Instant::now();
        let mut c = Clock {
            speed: 2.0,
            max_idle_ns: Some(1_000_000_000),
            wall0,
            input0: None,
            last_ns: 0,
            skipped_ns: 0,
        };
        assert_eq!(c.due(10_000_000_000), wall0);
        assert_eq!(c.due(10_500_000_000) - wall0, Duration::from_millis(250));
        // 9.5 s of silence become 1 s, at twice the speed 0.5 s.
        assert_eq!(c.due(20_000_000_000) - wall0, Duration::from_millis(750));
        let mut fast = Clock {
            speed: f64::INFINITY,
            max_idle_ns: None,
            wall0,
            input0: None,
            last_ns: 0,
            skipped_ns: 0,
        };
        assert_eq!(fast.due(5), wall0);
        assert_eq!(fast.due(5_000_000_000), wall0);
    }

    #[test]
    fn the_last_message_of_a_write_is_found() {
        let mut b = vec![b'Q', 0, 0, 0, 10];
        b.extend(b"select");
        assert_eq!(last_tag(&b), Some(b'Q'));
        b.extend([b'X', 0, 0, 0, 4]);
        assert_eq!(last_tag(&b), Some(b'X'));
        assert_eq!(last_tag(&[]), None);
    }
}
