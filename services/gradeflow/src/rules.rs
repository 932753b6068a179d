//! `gradeflow rules …`: the rulebooks of `gradeflow-approval-domain` on the
//! command line, with no server, store or network.
//!
//! `gradeflow rules check` reads a draft decision (the JSON of `API.md`
//! § "`gradeflow rules check` input") from stdin and prints the verdict on
//! stdout as one line of JSON, `{"ok": bool, "violations": […]}`, with the
//! violation shapes of `POST /api/v1/decisions`. Exit status:
//!
//! * 0 — accepted;
//! * 1 — refused by the rules (the violations say why);
//! * 2 — malformed input: not JSON, a missing or unknown field, a value out
//!   of range, a duplicate dossier. Then stdout carries the error document
//!   of the HTTP API instead, `{"error": {"code": "malformed_input",
//!   "message": "…", "message_vi": "…"}}`, and stderr one line for people.
//!
//! Stdout always holds exactly one JSON document, so a script reads stdout
//! whatever the exit status. `--explain` adds each violation as English and
//! Vietnamese sentences on stderr.

use std::io::{self, Read, Write};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use gradeflow_approval_domain::{check_batch, CheckOutcome, DraftBatch, DraftError};
use serde_json::json;

/// `gradeflow rules …`.
#[derive(Debug, Subcommand)]
pub enum RulesCmd {
    /// Check a draft decision read from stdin; exit 0 accepted, 1 refused,
    /// 2 malformed input.
    Check(CheckArgs),
}

/// Options of `gradeflow rules check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Pretty-print the JSON instead of one line.
    #[arg(long)]
    pretty: bool,
    /// Also write every violation as English and Vietnamese sentences to
    /// stderr.
    #[arg(long)]
    explain: bool,
}

/// The verdict of a check, as an exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accepted = 0,
    Refused = 1,
    Malformed = 2,
}

/// Runs a `rules` subcommand on the process's stdin, stdout and stderr.
pub fn run(cmd: RulesCmd) -> ExitCode {
    match cmd {
        RulesCmd::Check(args) => {
            let verdict = check(
                &args,
                &mut io::stdin().lock(),
                &mut io::stdout().lock(),
                &mut io::stderr().lock(),
            );
            match verdict {
                Ok(v) => ExitCode::from(v as u8),
                Err(e) => {
                    // Stdout itself failed (a closed pipe): nothing more can
                    // be said there, so say it on stderr.
                    let _ = writeln!(
                        io::stderr(),
                        "gradeflow rules check: writing the verdict: {e}"
                    );
                    ExitCode::from(Verdict::Malformed as u8)
                }
            }
        }
    }
}

/// Reads a batch from `input`, checks it under its own rulebook and writes
/// the verdict. Only a failure to write is an `Err`.
fn check(
    args: &CheckArgs,
    input: &mut impl Read,
    out: &mut impl Write,
    err: &mut impl Write,
) -> io::Result<Verdict> {
    let batch = match read_batch(input) {
        Ok(batch) => batch,
        Err(e) => {
            let doc = json!({"error": {
                "code": e.code(),
                "message": e.message(),
                "message_vi": e.message_vi(),
            }});
            write_json(out, &doc, args.pretty)?;
            writeln!(
                err,
                "gradeflow rules check: malformed input: {}",
                e.message()
            )?;
            return Ok(Verdict::Malformed);
        }
    };

    let outcome: CheckOutcome = check_batch(&batch);
    write_json(out, &outcome, args.pretty)?;
    if args.explain {
        for v in &outcome.violations {
            writeln!(err, "{}: {}", v.rule(), v.message())?;
            writeln!(err, "{}: {}", v.rule(), v.message_vi())?;
        }
    }
    Ok(if outcome.ok {
        Verdict::Accepted
    } else {
        Verdict::Refused
    })
}

fn read_batch(input: &mut impl Read) -> Result<DraftBatch, DraftError> {
    let mut bytes = Vec::new();
    input
        .read_to_end(&mut bytes)
        .map_err(|e| DraftError::Json(format!("reading stdin: {e}")))?;
    let text =
        String::from_utf8(bytes).map_err(|_| DraftError::Json("input is not UTF-8".into()))?;
    DraftBatch::from_json(&text)
}

fn write_json(out: &mut impl Write, value: &impl serde::Serialize, pretty: bool) -> io::Result<()> {
    if pretty {
        serde_json::to_writer_pretty(&mut *out, value)?;
    } else {
        serde_json::to_writer(&mut *out, value)?;
    }
    writeln!(out)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn run_check(input: &str) -> (Verdict, serde_json::Value, String) {
        let args = CheckArgs {
            pretty: false,
            explain: true,
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let verdict = check(&args, &mut input.as_bytes(), &mut out, &mut err).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.ends_with('\n') && out.trim_end().lines().count() == 1,
            "{out}"
        );
        (
            verdict,
            serde_json::from_str(&out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn an_empty_batch_is_accepted_with_no_violations() {
        let (verdict, out, err) = run_check(r#"{"dossiers": []}"#);
        assert_eq!(verdict, Verdict::Accepted);
        assert_eq!(out, json!({"ok": true, "violations": []}));
        assert!(err.is_empty());
    }

    #[test]
    fn a_refused_batch_explains_itself_on_stderr_when_asked() {
        let (verdict, out, err) = run_check(
            r#"{"dossiers": [{"id": "x", "kind": "individual", "status": "exempt", "grade": "good"}]}"#,
        );
        assert_eq!(verdict, Verdict::Refused);
        assert_eq!(out["violations"][0]["rule"], json!("not_reviewed"));
        assert!(err.contains("not_reviewed: Dossier x"));
        assert!(err.contains("not_reviewed: Hồ sơ x"));
    }

    #[test]
    fn input_that_is_not_utf8_is_malformed() {
        let args = CheckArgs {
            pretty: true,
            explain: false,
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let verdict = check(&args, &mut &[0xff_u8, 0xfe][..], &mut out, &mut err).unwrap();
        assert_eq!(verdict, Verdict::Malformed);
        let doc: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(doc["error"]["code"], json!("malformed_input"));
    }
}
