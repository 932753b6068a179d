//! The `gradeflow` command line: one binary for every tool and service.
//! `main` only parses the command line and dispatches to the module that
//! does the work (`rules` for `gradeflow rules …`, `serve` for `up` and the
//! single services); it decides nothing.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod allocator;
mod audit;
mod bench;
mod demo;
mod rules;
mod seed;
mod serve;
mod token;

/// gradeflow: annual review, evaluation and quality grading.
#[derive(Debug, Parser)]
#[command(name = "gradeflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every service in one process, on the embedded default (SQLite under
    /// the data dir; NATS started there when none listens).
    Up(serve::UpArgs),
    /// The submission service alone.
    Submission(serve::ServeArgs),
    /// The appraisal service alone.
    Appraisal(serve::ServeArgs),
    /// The approval service alone.
    Approval(serve::ServeArgs),
    /// The progress service alone.
    Progress(serve::ServeArgs),
    /// The HTTP edge alone (REST API v1).
    Portal(serve::ServeArgs),
    /// Prints a bearer token for the local deployment (same data dir).
    Token(token::TokenArgs),
    /// Registers a synthetic hierarchy, opens a cycle and registers
    /// subjects through the public HTTP API.
    Seed(seed::SeedArgs),
    /// Pure rule checks of the grading rulebooks; no server needed.
    #[command(subcommand)]
    Rules(rules::RulesCmd),
    /// Auditor tools on the stores and the audit stream; no service needed.
    Audit(audit::AuditCmd),
    /// Benchmarks on the real databases and NATS server (not tests).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

impl Command {
    /// Whether the command runs services until stopped: those run with the
    /// allocator settings of [`allocator::settle`].
    fn serves(&self) -> bool {
        matches!(
            self,
            Command::Up(_)
                | Command::Submission(_)
                | Command::Appraisal(_)
                | Command::Approval(_)
                | Command::Progress(_)
                | Command::Portal(_)
        )
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.serves() {
        allocator::settle();
    }
    match cli.command {
        Command::Rules(cmd) => rules::run(cmd),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Up(args) => serve::up(args),
        Command::Submission(args) => serve::one(serve::ServiceName::Submission, args),
        Command::Appraisal(args) => serve::one(serve::ServiceName::Appraisal, args),
        Command::Approval(args) => serve::one(serve::ServiceName::Approval, args),
        Command::Progress(args) => serve::one(serve::ServiceName::Progress, args),
        Command::Portal(args) => serve::portal(args),
        Command::Token(args) => token::run(args),
        Command::Seed(args) => seed::run(args),
    }
}
