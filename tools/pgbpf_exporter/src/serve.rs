//! The exporter's life: start the collectors (those that cannot start say why and the others
//! run), drain the kernel's buffers on a thread, serve `/metrics` until SIGINT or SIGTERM.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail};
use prometheus_client::{encoding::DescriptorEncoder, registry::Registry};

use crate::{
    Args,
    collectors::{self, Collector},
    families::Families,
};

/// How often the ring buffers are drained: query_latency's 1 MiB ring holds about 10 000
/// statements, half a second at this machine's fastest pgbench -S.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// How often collectors look for new servers and retire idle series.
const RESCAN_EVERY: Duration = Duration::from_secs(10);

/// The collectors, shared by the draining thread and the scrapes.
struct Node {
    running: Vec<Box<dyn Collector>>,
    failed: Vec<(&'static str, String)>,
    /// Errors of poll and rescan per collector (the first is logged).
    errors: BTreeMap<&'static str, u64>,
}

impl Node {
    fn note_error(&mut self, collector: &'static str, what: &str, e: &anyhow::Error) {
        let n = self.errors.entry(collector).or_default();
        if *n == 0 {
            eprintln!(
                "pgbpf_exporter: {collector}: {what}: {e:#} (later errors are counted in pgbpf_collector_errors_total)"
            );
        }
        *n += 1;
    }

    fn families(&mut self, out: &mut Families) {
        let mut errors = vec![];
        for c in &mut self.running {
            if let Err(e) = c.families(out) {
                errors.push((c.name(), e));
            }
        }
        for (name, e) in errors {
            self.note_error(name, "reading its maps", &e);
        }
        collectors::self_metrics(&mut self.running, &self.failed, out);
        for (collector, n) in &self.errors {
            out.counter(
                "pgbpf_collector_errors",
                "Errors while draining or reading a collector's maps (the first is logged).",
            )
            .set(vec![("collector", (*collector).into())], *n as f64);
        }
    }
}

/// What `prometheus-client` calls at each scrape.
struct Scrape(Arc<Mutex<Node>>);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

impl prometheus_client::collector::Collector for Scrape {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut families = Families::default();
        lock(&self.0).families(&mut families);
        families.encode(encoder)
    }
}

/// A poisoned lock (a collector panicked) still holds usable state.
fn lock(node: &Mutex<Node>) -> MutexGuard<'_, Node> {
    node.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the collectors and serves until SIGINT or SIGTERM.
pub fn run(args: &Args) -> anyhow::Result<()> {
    // A binary named on the command line that is not there is the user's mistake, said at
    // once (a collector that cannot attach on this kernel only says so: the others run).
    for path in &args.postgres {
        if !path.is_file() {
            anyhow::bail!("--postgres {}: no such file", path.display());
        }
    }
    pgbpf_common::loader::check_privileges()?;
    let started = Instant::now();
    // Bound first: a port in use is the most common mistake, and needs no kernel work.
    let server = tiny_http::Server::http(args.listen)
        .map_err(|e| anyhow!("cannot listen on {}: {e}", args.listen))?;
    // The kernel times programs only while someone holds this descriptor.
    let _bpf_stats = if args.no_bpf_stats {
        None
    } else {
        aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .map_err(|e| eprintln!("pgbpf_exporter: BPF run-time statistics unavailable: {e}"))
            .ok()
    };
    let mut node = Node {
        running: vec![],
        failed: vec![],
        errors: BTreeMap::new(),
    };
    let mut asked = args.collect.clone();
    // Each once, in the order given.
    let mut seen = vec![];
    asked.retain(|name| {
        let first = !seen.contains(name);
        seen.push(*name);
        first
    });
    for name in asked {
        match collectors::start(name, args) {
            Ok(c) => node.running.push(c),
            Err(e) => {
                eprintln!("pgbpf_exporter: {}: not collecting: {e:#}", name.name());
                node.failed.push((name.name(), format!("{e:#}")));
            }
        }
    }
    if node.running.is_empty() {
        bail!("no collector could start (each says why above)");
    }
    let names: Vec<&str> = node.running.iter().map(|c| c.name()).collect();
    eprintln!(
        "pgbpf_exporter: serving http://{}/metrics ({}; attached in {:.0} ms)",
        args.listen,
        names.join(", "),
        started.elapsed().as_secs_f64() * 1e3
    );
    let node = Arc::new(Mutex::new(node));
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let drainer = {
        let (node, stop) = (Arc::clone(&node), Arc::clone(&stop));
        thread::Builder::new()
            .name("drain".into())
            .spawn(move || drain_until(&node, &stop))?
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(Arc::clone(&node))));
    while !stop.load(Ordering::Relaxed) {
        match server.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(request)) => respond(request, &registry),
            Ok(None) => {}
            Err(e) => eprintln!("pgbpf_exporter: accepting a request: {e}"),
        }
    }
    let _ = drainer.join();
    eprintln!("pgbpf_exporter: stopped; detaching");
    Ok(())
}

/// Drains every collector every [`POLL_EVERY`] and rescans every [`RESCAN_EVERY`].
fn drain_until(node: &Mutex<Node>, stop: &AtomicBool) {
    let mut last_rescan = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        thread::sleep(POLL_EVERY);
        let rescan = last_rescan.elapsed() >= RESCAN_EVERY;
        if rescan {
            last_rescan = Instant::now();
        }
        let mut guard = lock(node);
        let node = &mut *guard;
        let mut errors = vec![];
        for c in &mut node.running {
            if let Err(e) = c.poll() {
                errors.push((c.name(), "draining", e));
            }
            if rescan && let Err(e) = c.rescan() {
                errors.push((c.name(), "rescanning", e));
            }
        }
        for (name, what, e) in errors {
            node.note_error(name, what, &e);
        }
    }
}

/// `/metrics` in the Prometheus text format, `/` a pointer to it, anything else 404.
fn respond(request: tiny_http::Request, registry: &Registry) {
    // Constant, valid header bytes: parsing cannot fail, and a response without it is
    // still read as text.
    let typed = |r: tiny_http::Response<std::io::Cursor<Vec<u8>>>, v: &str| {
        match tiny_http::Header::from_bytes(&b"Content-Type"[..], v.as_bytes()) {
            Ok(h) => r.with_header(h),
            Err(()) => r,
        }
    };
    let response = match request.url() {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::prometheus_text::encode(&mut body, registry) {
                Ok(()) => typed(
                    tiny_http::Response::from_string(body),
                    "text/plain; version=0.0.4; charset=utf-8",
                ),
                Err(e) => tiny_http::Response::from_string(format!("encoding failed: {e}"))
                    .with_status_code(500),
            }
        }
        "/" => typed(
            tiny_http::Response::from_string(
                "pgbpf_exporter: metrics at /metrics (docs/pgbpf_exporter.md)\n",
            ),
            "text/plain; charset=utf-8",
        ),
        _ => tiny_http::Response::from_string("not found: try /metrics\n").with_status_code(404),
    };
    // A scraper that hung up needs no answer.
    let _ = request.respond(response);
}
