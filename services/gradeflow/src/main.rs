//! The `gradeflow` command line: one binary for every tool and service.
//! `main` only parses the command line and dispatches to the module that
//! does the work (`rules` for `gradeflow rules …`); it decides nothing.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod rules;

/// gradeflow: annual review, evaluation and quality grading.
#[derive(Debug, Parser)]
#[command(name = "gradeflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pure rule checks of the grading rulebooks; no server needed.
    #[command(subcommand)]
    Rules(rules::RulesCmd),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Rules(cmd) => rules::run(cmd),
    }
}
