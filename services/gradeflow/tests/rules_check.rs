//! `gradeflow rules check` driven as users drive it: the built binary, a
//! batch on stdin, the verdict on stdout and the exit status. Covers the
//! `API.md` example verbatim, accepted and refused batches under all three
//! rulebooks, malformed JSON and unknown fields.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

/// What one run printed and returned.
struct Run {
    code: i32,
    stdout: Value,
    stderr: String,
}

fn rules_check(input: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gradeflow"))
        .args(["rules", "check"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    Run {
        code: output.status.code().unwrap(),
        stdout: serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {stdout}")),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// The example of `API.md` § "`gradeflow rules check` input", verbatim.
const API_EXAMPLE: &str = r#"{"rulebook": "qd366-2025",
 "quota": {"ratio": 0.2, "rounding": "floor"},
 "quota_exception": null,
 "earlier": {"members": {"excellent": 1, "good": 8}},
 "dossiers": [
   {"id": "d1", "kind": "individual", "category": "2B", "leader": false,
    "status": "active", "quota_group": "members",
    "score": {"general": 28, "tasks": 65},
    "tasks": {"total": 10, "on_time": 10, "exceeded": 3, "late": 0, "not_done": 0},
    "shortcomings_fixed": true,
    "facts": {"discipline": null, "degradation": false, "low_confidence_ratio": 0.0,
              "unit_task_completion": null, "subordinates_not_completed_ratio": null,
              "member_disciplined": false, "subordinate_disciplined": false,
              "wrongdoing_concluded": false},
    "waiting_for": [],
    "grade": "excellent", "override_reason": null}]}"#;

fn with_rulebook(json: &str, rulebook: &str) -> String {
    json.replace("qd366-2025", rulebook)
}

#[test]
fn the_api_example_verbatim_is_judged_by_the_quota_alone() {
    // Earlier 1 excellent and 8 good, plus this excellent: 2 excellent for
    // 8 good, and floor(0.2 × 8) = 1. Every per-dossier rule passes.
    let run = rules_check(API_EXAMPLE);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        json!({"ok": false, "violations": [
            {"rule": "quota", "group": "members", "excellent": 2, "good": 8,
             "max_excellent": 1, "ratio": 0.2}]})
    );
}

#[test]
fn the_api_example_with_room_in_the_quota_is_accepted_under_every_rulebook() {
    let roomy = API_EXAMPLE.replace(r#""good": 8"#, r#""good": 10"#);
    for rulebook in ["qd366-2025", "qd124-2023", "qd132-2018"] {
        let run = rules_check(&with_rulebook(&roomy, rulebook));
        assert_eq!(run.code, 0, "{rulebook}: {}", run.stdout);
        assert_eq!(run.stdout, json!({"ok": true, "violations": []}));
    }
}

#[test]
fn a_refused_batch_exits_1_and_lists_every_violation() {
    let input = json!({
        "rulebook": "qd366-2025",
        "dossiers": [
            {"id": "c1", "kind": "collective", "category": "01", "waiting_for": ["m7"],
             "score": {"general": 27, "tasks": 66},
             "tasks": {"total": 4, "on_time": 4, "exceeded": 2},
             "grade": "excellent"},
            {"id": "m1", "kind": "individual", "category": "2A", "leader": true,
             "score": {"general": 25, "tasks": 53},
             "tasks": {"total": 10, "on_time": 10, "exceeded": 3},
             "facts": {"discipline": {"level": "reprimand", "duty_related": true}},
             "grade": "excellent"},
            {"id": "m2", "kind": "individual", "status": "new_member", "grade": "good"}
        ]
    });
    let run = rules_check(&input.to_string());
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stdout,
        json!({"ok": false, "violations": [
            {"rule": "not_ready", "dossier": "c1", "waiting_for": ["m7"]},
            {"rule": "score_band", "dossier": "m1", "score": 78, "grade": "excellent", "max_grade": "good"},
            {"rule": "hard_trigger", "dossier": "m1", "trigger": "discipline", "grade": "excellent"},
            {"rule": "not_reviewed", "dossier": "m2", "status": "new_member", "grade": "good"},
            {"rule": "quota", "group": "collectives", "excellent": 1, "good": 0, "max_excellent": 0, "ratio": 0.2},
            {"rule": "quota", "group": "individuals", "excellent": 1, "good": 0, "max_excellent": 0, "ratio": 0.2}
        ]})
    );
}

#[test]
fn the_older_rulebooks_ignore_the_band_but_keep_the_triggers() {
    let input = json!({
        "rulebook": "qd366-2025",
        "earlier": {"individuals": {"good": 20}},
        "dossiers": [
            {"id": "a", "kind": "individual", "score": {"general": 10, "tasks": 30},
             "tasks": {"total": 2, "on_time": 2}, "grade": "good"},
            {"id": "b", "kind": "individual", "facts": {"degradation": true},
             "score": {"general": 30, "tasks": 70},
             "tasks": {"total": 2, "on_time": 2, "exceeded": 1}, "grade": "excellent"}
        ]
    })
    .to_string();
    let run = rules_check(&input);
    assert_eq!(run.code, 1);
    let rules: Vec<_> = run.stdout["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["rule"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(rules, ["score_band", "hard_trigger"]);

    for rulebook in ["qd124-2023", "qd132-2018"] {
        let run = rules_check(&with_rulebook(&input, rulebook));
        assert_eq!(run.code, 1, "{rulebook}");
        assert_eq!(
            run.stdout["violations"],
            json!([{"rule": "hard_trigger", "dossier": "b", "trigger": "degradation", "grade": "excellent"}]),
            "{rulebook}"
        );
    }
}

#[test]
fn a_quota_exception_needs_a_reason_and_at_most_025() {
    let batch = |exception: Value| {
        json!({
            "quota_exception": exception,
            "earlier": {"individuals": {"excellent": 2, "good": 11}},
            "dossiers": [
                {"id": "a", "kind": "individual", "score": {"general": 30, "tasks": 65},
                 "tasks": {"total": 10, "on_time": 10, "exceeded": 3}, "grade": "excellent"},
                {"id": "b", "kind": "individual", "score": {"general": 25, "tasks": 55},
                 "tasks": {"total": 10, "on_time": 10}, "grade": "good"}
            ]
        })
        .to_string()
    };
    // 3 excellent for 12 good: 2 allowed at 0.20, 3 at 0.25.
    assert_eq!(rules_check(&batch(Value::Null)).code, 1);
    let run = rules_check(&batch(json!({"ratio": 0.25, "reason": "outstanding unit"})));
    assert_eq!(run.code, 0, "{}", run.stdout);
    let run = rules_check(&batch(json!({"ratio": 0.25})));
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stdout["violations"],
        json!([{"rule": "exception_reason_required", "ratio": 0.25}])
    );
    let run = rules_check(&batch(json!({"ratio": 0.3, "reason": "outstanding unit"})));
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stdout["violations"][0]["rule"],
        json!("exception_ratio")
    );
}

#[test]
fn malformed_json_exits_2_with_an_error_document() {
    for input in [
        "",
        "{",
        "[1, 2]",
        r#"{"dossiers": [{"id": "x"}]}"#,
        "not json",
    ] {
        let run = rules_check(input);
        assert_eq!(run.code, 2, "{input:?}");
        assert_eq!(
            run.stdout["error"]["code"],
            json!("malformed_input"),
            "{input:?}"
        );
        assert!(run.stdout["error"]["message"].as_str().unwrap().len() > 3);
        assert!(run.stdout["error"]["message_vi"]
            .as_str()
            .unwrap()
            .starts_with("Dữ liệu"));
        assert!(run.stderr.contains("malformed"), "{}", run.stderr);
    }
}

#[test]
fn an_unknown_field_exits_2_and_names_the_field() {
    let inputs = [
        API_EXAMPLE.replace(r#""quota_exception": null"#, r#""quota_exeption": null"#),
        API_EXAMPLE.replace(r#""leader": false"#, r#""leader": false, "rank": 3"#),
        API_EXAMPLE.replace(
            r#""degradation": false"#,
            r#""degradation": false, "bribery": true"#,
        ),
    ];
    for (input, field) in inputs.iter().zip(["quota_exeption", "rank", "bribery"]) {
        let run = rules_check(input);
        assert_eq!(run.code, 2, "{field}");
        let message = run.stdout["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{message}");
    }
}

#[test]
fn an_unknown_rulebook_or_grade_exits_2() {
    assert_eq!(
        rules_check(&with_rulebook(API_EXAMPLE, "qd999-2030")).code,
        2
    );
    assert_eq!(
        rules_check(&API_EXAMPLE.replace(r#""grade": "excellent""#, r#""grade": "outstanding""#))
            .code,
        2
    );
}

#[test]
fn values_out_of_range_exit_2() {
    let score = API_EXAMPLE.replace(r#""general": 28"#, r#""general": 31"#);
    assert_eq!(rules_check(&score).code, 2);
    let ratio = API_EXAMPLE.replace(
        r#""low_confidence_ratio": 0.0"#,
        r#""low_confidence_ratio": 2"#,
    );
    assert_eq!(rules_check(&ratio).code, 2);
    let tasks = API_EXAMPLE.replace(r#""total": 10"#, r#""total": -1"#);
    assert_eq!(rules_check(&tasks).code, 2);
}
