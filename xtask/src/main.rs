//! `pgbpf-xtask schemas` regenerates docs/schema/ and the manuals' FIELDS tables; `pgbpf-xtask install [PREFIX]`
//! installs man pages and shell completions (default prefix /usr/local); `pgbpf-xtask man
//! DIR` writes the man pages only.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pgbpf-xtask",
    about = "Generated files: JSON Schemas, man pages, completions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write each tool's JSON Schema to docs/schema/ and the fields it lists to the FIELDS
    /// section of its manual in docs/
    Schemas,
    /// Write each tool's man page (section 8) to DIR
    Man { dir: PathBuf },
    /// Install man pages in PREFIX/share/man/man8 and bash, zsh and fish completions
    Install {
        #[arg(default_value = "/usr/local")]
        prefix: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Schemas => {
            let docs = pgbpf_xtask::repo_root().join("docs");
            pgbpf_xtask::write_schemas(&docs.join("schema"), Some(&docs))
        }
        Command::Man { dir } => pgbpf_xtask::write_man_pages(&dir),
        Command::Install { prefix } => pgbpf_xtask::install(&prefix),
    };
    match result {
        Ok(paths) => {
            for p in paths {
                println!("{}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => pgbpf_common::runtime::exit_code("pgbpf-xtask", Err(e)),
    }
}
