//! What the user reads cannot drift from the code: the checked-in JSON Schemas and the
//! manuals' field tables are what the record types generate, every option in `--help` is in
//! the manual's OPTIONS table, the man pages render with `man`, and the bash completion
//! completes options.

use std::process::Command;

use pgbpf_xtask::{fields, repo_root, tools};

const REGENERATE: &str = "run `cargo run -p pgbpf-xtask -- schemas` and commit the result";

#[test]
fn checked_in_schemas_and_field_tables_are_current() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("docs/schema/README.md")).unwrap_or_default();
    assert!(
        readme == fields::vocabulary_markdown(),
        "docs/schema/README.md is not what common::records::VOCABULARY generates: {REGENERATE}"
    );
    for t in tools() {
        let Some(generated) = t.schema.map(|generate| generate()) else {
            continue;
        };
        let path = root.join(format!("docs/schema/{}.json", t.name));
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "{} is not what {}'s record types generate: {REGENERATE}",
            path.display(),
            t.name
        );
        let manual_path = root.join(format!("docs/{}.md", t.name));
        let manual = std::fs::read_to_string(&manual_path).unwrap();
        let block = fields::markdown(&serde_json::from_str(&generated).unwrap());
        assert_eq!(
            fields::current_block(&manual),
            Some(block.trim_end()),
            "the FIELDS table of {} is not what the record types generate: {REGENERATE}",
            manual_path.display()
        );
    }
}

/// The OPTIONS section of a manual.
fn options_section(manual: &str) -> &str {
    let start = manual
        .find("## OPTIONS")
        .expect("a manual has an OPTIONS section");
    let rest = &manual[start..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
    &rest[..end]
}

#[test]
fn every_option_of_the_help_is_in_the_manual() {
    let root = repo_root();
    let mut missing = vec![];
    for t in tools() {
        let manual = std::fs::read_to_string(root.join(format!("docs/{}.md", t.name))).unwrap();
        let options = options_section(&manual);
        let mut cmd = (t.command)();
        cmd.build();
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let shown = match (arg.get_long(), arg.get_value_names()) {
                (Some(long), _) => format!("--{long}"),
                (None, Some(names)) => names[0].to_string(),
                (None, None) => id.to_uppercase(),
            };
            // "--top" must not be satisfied by "--top-level": the name ends there.
            let found = options.match_indices(&shown).any(|(i, _)| {
                options[i + shown.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            });
            if !found {
                missing.push(format!("{}: {shown}", t.name));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "options in --help but not in the manual's OPTIONS table:\n{}",
        missing.join("\n")
    );
}

#[test]
fn man_pages_render_with_man() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path();
    let written = pgbpf_xtask::install(prefix).unwrap();
    for t in tools() {
        let page = prefix.join(format!("share/man/man8/{}.8", t.name));
        assert!(written.contains(&page));
        // As `man page_reclaim` finds it once the pages are on the manual path.
        let out = Command::new("man")
            .args([
                "-M",
                &prefix.join("share/man").display().to_string(),
                t.name,
            ])
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .output()
            .expect("running man (scripts/setup.sh installs man-db)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "man {}: {}",
            t.name,
            String::from_utf8_lossy(&out.stderr)
        );
        for heading in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "EXAMPLES",
            "SEE ALSO",
        ] {
            assert!(
                text.contains(heading),
                "man {} has no {heading}:\n{text}",
                t.name
            );
        }
        // The tracing tools share the output options; the exporter serves HTTP instead.
        let options: &[&str] = if t.schema.is_some() {
            &["--duration", "--json"]
        } else {
            &["--listen", "--collect"]
        };
        assert!(options.iter().all(|o| text.contains(o)), "{text}");
        assert!(text.contains(&format!("docs/{}.md", t.name)), "{text}");
    }
}

#[test]
fn bash_completes_options_and_the_other_shells_get_scripts() {
    let dir = tempfile::tempdir().unwrap();
    pgbpf_xtask::install(dir.path()).unwrap();
    for t in tools() {
        for shell in pgbpf_xtask::SHELLS {
            let path = pgbpf_xtask::completion_path(dir.path(), shell, t.name);
            let script = std::fs::read_to_string(&path).unwrap();
            assert!(script.contains(t.name), "{}", path.display());
        }
        // What bash does when the user types `tool --conta<TAB>`.
        let bash = pgbpf_xtask::completion_path(dir.path(), clap_complete::Shell::Bash, t.name);
        let typed = &t.completes[..6];
        let line = format!("{} {typed}", t.name);
        let script = format!(
            "source {}; COMP_WORDS=({line}); COMP_CWORD=1; COMP_LINE='{line}'; \
             COMP_POINT=${{#COMP_LINE}}; _{} {} {typed} {}; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            bash.display(),
            t.name,
            t.name,
            t.name
        );
        let out = Command::new("bash")
            .args(["--norc", "--noprofile", "-c", &script])
            .output()
            .unwrap();
        let replies = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            replies.trim(),
            t.completes,
            "{}: {}",
            t.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
