//! How `gradeflow bench cycle` sends its commands: over NATS request/reply
//! ([`CommandClient`], as the portal does) or over the portal's HTTP API v1
//! (`API.md`, with a bearer token), timing each one.
//!
//! Events travel between the services asynchronously, so a command may
//! arrive before its service has observed what it depends on (an appraisal
//! before the meeting's event, a decision before the appraisal's). Such a
//! refusal (`wrong_state`, `unknown_*`, `not_in_remit`, or a `rule_violation`
//! that is only `not_ready`) changes nothing; the driver sends the command
//! again after a short pause, as a board would, and counts it. A command that
//! got no answer is sent again with the same command id (NATS) or
//! `Idempotency-Key` (HTTP), so it is never applied twice. Any other refusal
//! stops the run: it would mean the planned cycle breaks the rules.
//!
//! Latencies: the histogram keeps the round trip of each accepted command
//! (the attempt that was accepted), split into ordinary commands and
//! `decide_batch.v1`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gradeflow_progress::queries::{ProgressPageQuery, ProgressQuery};
use gradeflow_progress::ProgressNode;
use gradeflow_proto::{Actor, CommandId, Names};
use gradeflow_service::client::{CommandClient, CommandFailure};
use serde_json::Value;

use super::report::Latencies;

/// How commands reach the services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// NATS request/reply to each service, as the portal sends them.
    Nats,
    /// The portal's REST API v1 over HTTP.
    Http,
}

/// Longest a command may keep being refused for not-yet-observed events:
/// long, because on a loaded machine a service's consumer can fall minutes
/// behind the service whose events it observes (the run measures that, it
/// does not fail on it).
const PATIENCE: Duration = Duration::from_secs(30 * 60);
/// Longest pause between two attempts of a refused command.
const MAX_PAUSE: Duration = Duration::from_millis(250);
/// Attempts of a command that got no answer.
const TRANSPORT_ATTEMPTS: u32 = 6;
/// How long a command may be refused as "not yet" before the driver says
/// what it waits for (once per command, on stderr).
const STILL_REFUSED: Duration = Duration::from_secs(60);
/// Wait for an answer (NATS) or a response (HTTP).
const TIMEOUT: Duration = Duration::from_secs(60);

/// A refusal, whichever way it came.
#[derive(Debug, Clone)]
struct Refusal {
    code: String,
    message: String,
    details: Value,
}

impl Refusal {
    /// Whether the refusal only says that an event the command depends on
    /// has not been observed yet.
    fn is_not_yet(&self) -> bool {
        match self.code.as_str() {
            "wrong_state" | "unknown_dossier" | "unknown_org" | "unknown_cycle"
            | "not_in_remit" | "unavailable" => true,
            "rule_violation" => self.details["violations"]
                .as_array()
                .is_some_and(|v| !v.is_empty() && v.iter().all(|x| x["rule"] == "not_ready")),
            _ => false,
        }
    }
}

enum Failure {
    Refused(Refusal),
    Transport(anyhow::Error),
}

enum Inner {
    Nats(CommandClient),
    Http {
        http: reqwest::Client,
        base: String,
        token: String,
    },
}

/// Sends commands and queries as central staff at the root, timing them.
pub struct Driver {
    inner: Inner,
    actor: Actor,
    commands: Mutex<Latencies>,
    decisions: Mutex<Latencies>,
    /// Every command's latency again, by kind.
    by_kind: Mutex<BTreeMap<String, Latencies>>,
    /// Attempts refused for an event not yet observed, then sent again.
    pub not_yet: AtomicU64,
    /// Attempts that got no answer, then sent again.
    pub resent: AtomicU64,
    /// Sends at most this many attempts per second in all, when set.
    pace: Option<Pacer>,
}

/// Spaces attempts evenly: each takes the next free slot, `period` after the
/// one before (an open loop: a slow answer does not delay later sends).
struct Pacer {
    period: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    async fn wait(&self) {
        let slot = {
            let Ok(mut next) = self.next.lock() else {
                return;
            };
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.period;
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }
}

impl Driver {
    /// A driver over NATS under `names`.
    pub fn nats(client: async_nats::Client, names: Names, actor: Actor) -> Self {
        Self::with(
            Inner::Nats(CommandClient::new(client, names, TIMEOUT)),
            actor,
        )
    }

    /// A driver over the portal at `base` with a bearer `token`.
    pub fn http(
        base: &str,
        token: String,
        actor: Actor,
        connections: usize,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .pool_max_idle_per_host(connections.max(1))
            .build()
            .context("building the HTTP client")?;
        Ok(Self::with(
            Inner::Http {
                http,
                base: base.trim_end_matches('/').to_owned(),
                token,
            },
            actor,
        ))
    }

    fn with(inner: Inner, actor: Actor) -> Self {
        Self {
            inner,
            actor,
            commands: Mutex::new(Latencies::new()),
            decisions: Mutex::new(Latencies::new()),
            by_kind: Mutex::new(BTreeMap::new()),
            not_yet: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            pace: None,
        }
    }

    /// Paces every attempt (commands, decisions, resends) to `per_second`
    /// in all, so latencies can be read at a known load.
    pub fn paced(mut self, per_second: u64) -> Self {
        self.pace = Some(Pacer {
            period: Duration::from_secs_f64(1.0 / per_second.max(1) as f64),
            next: Mutex::new(Instant::now()),
        });
        self
    }

    /// The latencies of ordinary commands and of `decide_batch.v1`.
    pub fn latencies(&self) -> (Latencies, Latencies) {
        let take = |m: &Mutex<Latencies>| m.lock().map(|l| l.clone()).unwrap_or_default();
        (take(&self.commands), take(&self.decisions))
    }

    /// The latencies of accepted commands by kind (`decide_batch.v1` too).
    pub fn latencies_by_kind(&self) -> BTreeMap<String, Latencies> {
        self.by_kind.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Sends a command until it is accepted; its answer.
    pub async fn command(
        &self,
        service: &str,
        kind: &str,
        payload: Value,
    ) -> anyhow::Result<Value> {
        let id = CommandId::new();
        let first = Instant::now();
        let mut pause = Duration::from_millis(2);
        let mut transport_failures = 0;
        let mut told = false;
        loop {
            if let Some(pace) = &self.pace {
                pace.wait().await;
            }
            let started = Instant::now();
            match self.once(service, kind, &payload, id).await {
                Ok(answer) => {
                    let histogram = if kind == "decide_batch.v1" {
                        &self.decisions
                    } else {
                        &self.commands
                    };
                    let elapsed = started.elapsed();
                    if let Ok(mut h) = histogram.lock() {
                        h.record(elapsed);
                    }
                    if let Ok(mut by_kind) = self.by_kind.lock() {
                        by_kind
                            .entry(kind.to_owned())
                            .or_insert_with(Latencies::new)
                            .record(elapsed);
                    }
                    return Ok(answer);
                }
                Err(Failure::Refused(r)) if r.is_not_yet() && first.elapsed() < PATIENCE => {
                    self.not_yet.fetch_add(1, Ordering::Relaxed);
                    if !told && first.elapsed() >= STILL_REFUSED {
                        // Say once what a command waits for this long: a
                        // service that never catches up shows here, not
                        // only as a stalled progress line.
                        told = true;
                        eprintln!(
                            "gradeflow bench: {kind} still refused after {} s: {} ({}) {}",
                            STILL_REFUSED.as_secs(),
                            r.code,
                            r.message,
                            r.details
                        );
                    }
                }
                Err(Failure::Refused(r)) => {
                    anyhow::bail!("{kind} refused: {} ({}) {}", r.code, r.message, r.details)
                }
                Err(Failure::Transport(e)) => {
                    transport_failures += 1;
                    if transport_failures >= TRANSPORT_ATTEMPTS {
                        return Err(e.context(format!(
                            "{kind}: no answer after {TRANSPORT_ATTEMPTS} attempts"
                        )));
                    }
                    self.resent.fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// The whole progress tree of the cycle's root to `depth` levels (the
    /// portal's `GET /api/v1/cycles/{cycle}/progress`). Over NATS, a tree
    /// too large for one answer comes in pages, which
    /// [`gradeflow_progress::assemble`] asks for and puts together.
    pub async fn progress(&self, cycle: &str, depth: u32) -> anyhow::Result<ProgressNode> {
        match &self.inner {
            Inner::Nats(c) => {
                let query = ProgressQuery {
                    cycle: cycle.parse().context("the cycle id")?,
                    org: None,
                    depth: Some(depth),
                };
                let ask = |page: ProgressPageQuery| async move {
                    c.call_as(
                        "progress",
                        "progress.v1",
                        &self.actor,
                        serde_json::to_value(page)?,
                        CommandId::new(),
                        None,
                    )
                    .await
                };
                gradeflow_progress::assemble(query, ask)
                    .await
                    .context("progress.v1: the whole tree")
            }
            Inner::Http { http, base, token } => {
                let url = format!("{base}/api/v1/cycles/{cycle}/progress?depth={depth}");
                let resp = http
                    .get(&url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .with_context(|| format!("GET {url}"))?;
                let status = resp.status();
                let body = resp.bytes().await.with_context(|| format!("GET {url}"))?;
                anyhow::ensure!(
                    status.is_success(),
                    "GET {url}: {status} {}",
                    String::from_utf8_lossy(&body)
                );
                serde_json::from_slice(&body).with_context(|| format!("GET {url}: the node"))
            }
        }
    }

    async fn once(
        &self,
        service: &str,
        kind: &str,
        payload: &Value,
        id: CommandId,
    ) -> Result<Value, Failure> {
        match &self.inner {
            Inner::Nats(c) => c
                .call(service, kind, &self.actor, payload.clone(), id, None)
                .await
                .map_err(|e| match e {
                    CommandFailure::Rejected(r) => Failure::Refused(Refusal {
                        code: r.code,
                        message: r.message,
                        details: r.details,
                    }),
                    other => Failure::Transport(anyhow::Error::new(other)),
                }),
            Inner::Http { http, base, token } => {
                let (path, body) = http_route(kind, payload).map_err(Failure::Transport)?;
                let url = format!("{base}{path}");
                let resp = http
                    .post(&url)
                    .bearer_auth(token)
                    .header("idempotency-key", id.to_string())
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| Failure::Transport(anyhow::Error::new(e).context(url.clone())))?;
                let status = resp.status().as_u16();
                let bytes = resp
                    .bytes()
                    .await
                    .map_err(|e| Failure::Transport(anyhow::Error::new(e).context(url.clone())))?;
                let body: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&bytes).into_owned())
                });
                match status {
                    200..=299 => Ok(body),
                    502..=504 => Err(Failure::Transport(anyhow::anyhow!(
                        "POST {url}: HTTP {status} {body}"
                    ))),
                    _ => {
                        let e = &body["error"];
                        Err(Failure::Refused(Refusal {
                            code: e["code"].as_str().unwrap_or("http_error").to_owned(),
                            message: format!(
                                "HTTP {status} {}",
                                e["message"].as_str().unwrap_or_default()
                            ),
                            details: e["details"].clone(),
                        }))
                    }
                }
            }
        }
    }
}

/// The API v1 call of a command kind: its path and body (the command's
/// payload without the ids the path carries).
fn http_route(kind: &str, payload: &Value) -> anyhow::Result<(String, Value)> {
    let field = |name: &str| {
        payload[name]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("{kind} without `{name}`"))
    };
    let without = |name: &str| {
        let mut body = payload.clone();
        if let Some(o) = body.as_object_mut() {
            o.remove(name);
        }
        body
    };
    Ok(match kind {
        "register_org.v1" => ("/api/v1/orgs".to_owned(), payload.clone()),
        "open_cycle.v1" => ("/api/v1/cycles".to_owned(), payload.clone()),
        "register_subject.v1" => (
            format!("/api/v1/cycles/{}/subjects", field("cycle")?),
            without("cycle"),
        ),
        "submit_self_review.v1" => (
            format!("/api/v1/dossiers/{}/self-review", field("dossier")?),
            without("dossier"),
        ),
        "record_meeting.v1" => (
            format!("/api/v1/dossiers/{}/meeting", field("dossier")?),
            without("dossier"),
        ),
        "appraise_dossier.v1" => (
            format!("/api/v1/dossiers/{}/appraisal", field("dossier")?),
            without("dossier"),
        ),
        "decide_batch.v1" => ("/api/v1/decisions".to_owned(), payload.clone()),
        other => anyhow::bail!("no HTTP route for {other}"),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn only_refusals_for_unobserved_events_are_retried() {
        let r = |code: &str, details: Value| Refusal {
            code: code.into(),
            message: String::new(),
            details,
        };
        assert!(r("wrong_state", Value::Null).is_not_yet());
        assert!(r(
            "rule_violation",
            json!({"violations": [{"rule": "not_ready"}]})
        )
        .is_not_yet());
        assert!(!r(
            "rule_violation",
            json!({"violations": [{"rule": "not_ready"}, {"rule": "quota"}]})
        )
        .is_not_yet());
        assert!(!r("rule_violation", json!({"violations": []})).is_not_yet());
        assert!(!r("invalid_input", Value::Null).is_not_yet());
    }

    #[test]
    fn commands_map_to_the_api_routes() {
        let (path, body) = http_route(
            "register_subject.v1",
            &json!({"cycle": "c1", "kind": "individual"}),
        )
        .unwrap();
        assert_eq!(path, "/api/v1/cycles/c1/subjects");
        assert_eq!(body, json!({"kind": "individual"}));
        let (path, body) = http_route(
            "appraise_dossier.v1",
            &json!({"dossier": "d1", "notes": "x"}),
        )
        .unwrap();
        assert_eq!(path, "/api/v1/dossiers/d1/appraisal");
        assert_eq!(body, json!({"notes": "x"}));
        assert_eq!(
            http_route("decide_batch.v1", &json!({})).unwrap().0,
            "/api/v1/decisions"
        );
        assert!(http_route("worklist.v1", &json!({})).is_err());
    }
}
