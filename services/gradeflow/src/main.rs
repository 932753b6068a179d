//! The `gradeflow` command line.

fn main() {}
