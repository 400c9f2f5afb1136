//! Files generated from the tools' own definitions, so they cannot drift from the code:
//! the JSON Schema of each tool's NDJSON records (checked in under `docs/schema/`), a man
//! page per tool (section 8, as bcc's) and bash, zsh and fish completions from its clap
//! command. `scripts/demo.sh` installs the man pages and completions; the tests in
//! `tests/docs.rs` check the schemas, the manuals' OPTIONS and FIELDS, and both generators.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

pub mod fields;
use clap::CommandFactory;
use clap_complete::Shell;

/// One tool, as the generators see it.
pub struct ToolDefinition {
    pub name: &'static str,
    /// Its command line (clap).
    pub command: fn() -> clap::Command,
    /// The JSON Schema of its records, as checked in (None for the exporter, whose output is
    /// Prometheus metrics: their names are checked against its manual by its own test).
    pub schema: Option<fn() -> String>,
    /// An option bash completes from its first letters (the completion test types them).
    pub completes: &'static str,
}

/// Every tool of the project.
pub fn tools() -> Vec<ToolDefinition> {
    use pgbpf_common::records::schema_of;
    vec![
        ToolDefinition {
            name: "page_reclaim",
            command: page_reclaim::Args::command,
            schema: Some(schema_of::<page_reclaim::records::Record>),
            completes: "--container",
        },
        ToolDefinition {
            name: "query_latency",
            command: query_latency::Args::command,
            schema: Some(schema_of::<query_latency::records::Record>),
            completes: "--container",
        },
        ToolDefinition {
            name: "pgwire_trace",
            command: pgwire_trace::Args::command,
            schema: Some(schema_of::<pgwire_trace::records::Record>),
            completes: "--container",
        },
        ToolDefinition {
            name: "shmem",
            command: shmem::Args::command,
            schema: Some(schema_of::<shmem::records::Record>),
            completes: "--container",
        },
        ToolDefinition {
            name: "llcache_per_query",
            command: llcache_per_query::Args::command,
            schema: Some(schema_of::<llcache_per_query::records::Record>),
            completes: "--container",
        },
        ToolDefinition {
            name: "io_timeouts",
            command: io_timeouts::Args::command,
            schema: Some(schema_of::<io_timeouts::records::Record>),
            completes: "--container",
        },
        ToolDefinition {
            name: "locks",
            command: locks::Args::command,
            schema: Some(schema_of::<locks::records::Record>),
            completes: "--container",
        },
        ToolDefinition {
            name: "lwlocks",
            command: lwlocks::Args::command,
            schema: Some(schema_of::<lwlocks::records::Record>),
            completes: "--container",
        },
        ToolDefinition {
            name: "wal_per_query",
            command: wal_per_query::Args::command,
            schema: Some(schema_of::<wal_per_query::records::Record>),
            completes: "--container",
        },
        ToolDefinition {
            name: "working_set",
            command: working_set::Args::command,
            schema: Some(schema_of::<working_set::records::Record>),
            completes: "--container",
        },
        ToolDefinition {
            name: "write_per_type",
            command: write_per_type::Args::command,
            schema: Some(schema_of::<write_per_type::records::Record>),
            completes: "--container",
        },
        ToolDefinition {
            name: "net_per_query",
            command: net_per_query::Args::command,
            schema: Some(schema_of::<net_per_query::records::Record>),
            completes: "--container",
        },
        ToolDefinition {
            name: "cpu_wait",
            command: cpu_wait::Args::command,
            schema: Some(schema_of::<cpu_wait::records::Record>),
            completes: "--container",
        },
        ToolDefinition {
            name: "spin_sema",
            command: spin_sema::Args::command,
            schema: Some(schema_of::<spin_sema::records::Record>),
            completes: "--container",
        },
        ToolDefinition {
            name: "redis_trace",
            command: redis_trace::Args::command,
            schema: Some(schema_of::<redis_trace::records::Record>),
            completes: "--container",
        },
        ToolDefinition {
            name: "pg_replay",
            command: pg_replay::Args::command,
            schema: Some(schema_of::<pg_replay::records::Record>),
            completes: "--target",
        },
        ToolDefinition {
            name: "pgbpf_exporter",
            command: pgbpf_exporter::Args::command,
            schema: None,
            completes: "--collect",
        },
    ]
}

/// The repository's root (this crate lives in `xtask/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Writes `<dir>/<tool>.json` for every tool, and the generated part of the FIELDS section
/// of each manual in `docs` (when given).
pub fn write_schemas(dir: &Path, docs: Option<&Path>) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let readme = dir.join("README.md");
    std::fs::write(&readme, fields::vocabulary_markdown())
        .with_context(|| format!("writing {}", readme.display()))?;
    let mut written = vec![readme];
    for t in tools() {
        let Some(schema) = t.schema.map(|generate| generate()) else {
            continue;
        };
        let path = dir.join(format!("{}.json", t.name));
        std::fs::write(&path, &schema).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
        let Some(docs) = docs else { continue };
        let manual_path = docs.join(format!("{}.md", t.name));
        let manual = std::fs::read_to_string(&manual_path)
            .with_context(|| format!("reading {}", manual_path.display()))?;
        let block = fields::markdown(&serde_json::from_str(&schema)?);
        std::fs::write(&manual_path, fields::replace_block(&manual, &block))
            .with_context(|| format!("writing {}", manual_path.display()))?;
        written.push(manual_path);
    }
    Ok(written)
}

/// A tool's man page (roff): NAME, SYNOPSIS, DESCRIPTION and OPTIONS from clap, then the
/// examples of its `--help`, where the full manual is, and the version.
pub fn man_page(tool: &ToolDefinition) -> anyhow::Result<Vec<u8>> {
    let cmd = (tool.command)();
    let examples = cmd.get_after_help().map(|h| h.to_string());
    let man = clap_mangen::Man::new(cmd)
        .section("8")
        .manual("pgbpf")
        .source(format!("pgbpf {}", env!("CARGO_PKG_VERSION")));
    let mut page = vec![];
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    if let Some(examples) = examples {
        writeln!(page, ".SH EXAMPLES\n.nf")?;
        for line in examples.lines().filter(|l| !l.ends_with("Examples:")) {
            writeln!(page, "{}", roff_line(line))?;
        }
        writeln!(page, ".fi")?;
    }
    let others: Vec<String> = tools()
        .iter()
        .filter(|t| t.name != tool.name)
        .map(|t| format!(".BR {} (8)", t.name))
        .collect();
    writeln!(
        page,
        ".SH \"SEE ALSO\"\nThe full manual, with real output, the fields of \\fB\\-\\-json\\fR \
         and the measured overhead: docs/{}.md in pgbpf's sources.\n.PP\n{}",
        tool.name,
        others.join(",\n")
    )?;
    man.render_version_section(&mut page)?;
    Ok(page)
}

/// A line of text as roff shows it verbatim: backslashes escaped, no control character
/// at the start, dashes as dashes.
fn roff_line(line: &str) -> String {
    let escaped = line.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// Writes `<dir>/<tool>.8` for every tool.
pub fn write_man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = vec![];
    for t in tools() {
        let path = dir.join(format!("{}.8", t.name));
        std::fs::write(&path, man_page(&t)?)
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Where each shell looks for completions below a prefix such as /usr/local, and the file
/// name it expects for `tool`.
pub fn completion_path(prefix: &Path, shell: Shell, tool: &str) -> PathBuf {
    match shell {
        Shell::Bash => prefix.join("share/bash-completion/completions").join(tool),
        Shell::Zsh => prefix
            .join("share/zsh/site-functions")
            .join(format!("_{tool}")),
        Shell::Fish => prefix
            .join("share/fish/vendor_completions.d")
            .join(format!("{tool}.fish")),
        other => prefix
            .join("share/completions")
            .join(format!("{tool}.{other}")),
    }
}

/// The shells completions are made for.
pub const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// One tool's completion script for `shell`.
pub fn completion(tool: &ToolDefinition, shell: Shell) -> Vec<u8> {
    let mut cmd = (tool.command)();
    let mut script = vec![];
    clap_complete::generate(shell, &mut cmd, tool.name, &mut script);
    script
}

/// Installs man pages into `<prefix>/share/man/man8` and completions where bash, zsh and
/// fish look below `prefix`.
pub fn install(prefix: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = write_man_pages(&prefix.join("share/man/man8"))?;
    for t in tools() {
        for shell in SHELLS {
            let path = completion_path(prefix, shell, t.name);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(&path, completion(&t, shell))
                .with_context(|| format!("writing {}", path.display()))?;
            written.push(path);
        }
    }
    Ok(written)
}
