//! tracefs: where it is (mounting it when missing) and tracepoint field offsets.
//!
//! Rust cannot emit CO-RE relocations, so kernel programs read tracepoint records at offsets
//! that the loader takes from each event's `format` file (a stable ABI) and passes as globals.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Returns the tracefs mount point, mounting tracefs at /sys/kernel/tracing if none is.
pub fn ensure_mounted() -> anyhow::Result<PathBuf> {
    ensure_mounted_at(&CANDIDATES)
}

fn ensure_mounted_at(candidates: &[&str]) -> anyhow::Result<PathBuf> {
    if let Some(p) = candidates
        .iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
    {
        return Ok(p.to_path_buf());
    }
    // Without privileges tracefs is there but unreadable: that is what to say.
    crate::loader::check_privileges()?;
    let target = Path::new(candidates[0]);
    nix::mount::mount(
        Some("tracefs"),
        target,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|errno| {
        anyhow!(
            "tracefs is not mounted and mounting it at {} failed ({errno}); \
             run `mount -t tracefs tracefs /sys/kernel/tracing` as root",
            target.display()
        )
    })?;
    Ok(target.to_path_buf())
}

/// Offset and size of one field of a tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// The text of `category:event`'s format file (fields, offsets, print format).
pub fn format(category: &str, event: &str) -> anyhow::Result<String> {
    let root = ensure_mounted()?;
    let path = root
        .join("events")
        .join(category)
        .join(event)
        .join("format");
    std::fs::read_to_string(&path).with_context(|| {
        format!(
            "tracepoint {category}:{event} is not available on this kernel ({})",
            path.display()
        )
    })
}

/// Reads `field` of `category:event` from the event's format file.
pub fn field(category: &str, event: &str, field: &str) -> anyhow::Result<Field> {
    parse_field(&format(category, event)?, field)
        .with_context(|| format!("tracepoint {category}:{event}"))
}

/// Finds `name` in the text of a tracepoint format file.
pub fn parse_field(format: &str, name: &str) -> anyhow::Result<Field> {
    for line in format.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';').map(str::trim);
        let Some(decl) = parts.next() else { continue };
        // The declaration ends with the name, perhaps followed by an array suffix.
        let ident = decl.rsplit([' ', '*']).next().unwrap_or("");
        let ident = ident.split('[').next().unwrap_or("");
        if ident != name {
            continue;
        }
        let mut offset = None;
        let mut size = None;
        for p in parts {
            if let Some(v) = p.strip_prefix("offset:") {
                offset = v.trim().parse().ok();
            } else if let Some(v) = p.strip_prefix("size:") {
                size = v.trim().parse().ok();
            }
        }
        return match (offset, size) {
            (Some(offset), Some(size)) => Ok(Field { offset, size }),
            _ => bail!("field {name} has no readable offset/size in: {line}"),
        };
    }
    bail!("no field named {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = "name: mm_vmscan_lru_shrink_inactive\nID: 500\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int nid;\toffset:8;\tsize:4;\tsigned:1;\n\
\tfield:unsigned long nr_reclaimed;\toffset:24;\tsize:8;\tsigned:0;\n\
\tfield:char comm[16];\toffset:32;\tsize:16;\tsigned:0;\n\
\tfield:const char * name;\toffset:48;\tsize:8;\tsigned:0;\n\nprint fmt: \"...\"\n";

    #[test]
    fn finds_fields_by_name() {
        assert_eq!(
            parse_field(FORMAT, "nr_reclaimed").unwrap(),
            Field {
                offset: 24,
                size: 8
            }
        );
        assert_eq!(
            parse_field(FORMAT, "nid").unwrap(),
            Field { offset: 8, size: 4 }
        );
        assert_eq!(
            parse_field(FORMAT, "comm").unwrap(),
            Field {
                offset: 32,
                size: 16
            }
        );
        assert_eq!(
            parse_field(FORMAT, "name").unwrap(),
            Field {
                offset: 48,
                size: 8
            }
        );
    }

    #[test]
    fn missing_or_garbled_fields_are_errors() {
        assert!(parse_field(FORMAT, "nr_scanned").is_err());
        assert!(parse_field("field:int x;\toffset:zz;\tsize:4;", "x").is_err());
        assert!(parse_field("", "x").is_err());
    }

    #[test]
    fn unmountable_tracefs_names_the_remedy() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir");
        let err = ensure_mounted_at(&[missing.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mount -t tracefs tracefs /sys/kernel/tracing"),
            "{err}"
        );
    }
}
