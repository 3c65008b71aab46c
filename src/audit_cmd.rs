//! `tslm audit verify FILE`: checks an audit log's hash chain (docs/operations.md, "Audit log").

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Check that every line of FILE is a record, that sequence numbers are contiguous from 0 and
    /// that each line's `prev` is the hash of the line before. Exit 0 with a summary, 1 with the
    /// first line at fault.
    Verify {
        /// The audit log (a JSON-lines file written by `[audit] file`).
        file: std::path::PathBuf,
    },
}

pub(crate) fn audit(cmd: &AuditCommand) -> ExitCode {
    match cmd {
        AuditCommand::Verify { file } => verify(file),
    }
}

fn verify(file: &Path) -> ExitCode {
    let f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {}: cannot open it: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    match tslm_server::audit::verify(std::io::BufReader::new(f)) {
        Ok(r) => {
            let seqs = r
                .last_seq
                .map_or_else(|| "none".to_owned(), |s| format!("0..={s}"));
            let end = match r.last_type.as_deref() {
                None => "empty".to_owned(),
                Some("stop") => "ends with a clean stop".to_owned(),
                Some(t) => format!(
                    "ends with `{t}`, not `stop` (the gateway is running, or did not stop cleanly)"
                ),
            };
            println!(
                "{}: ok: {} records (seq {seqs}), {} starts, {} dropped records counting {} authentications; {end}; last hash {}",
                file.display(),
                r.records,
                r.starts,
                r.dropped_records,
                r.dropped_total,
                r.last_hash
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}
