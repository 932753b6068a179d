//! Pure grading rules: the qd366-2025, qd124-2023 and qd132-2018 rulebooks, quota and batch decision checks.
