//! Integration tests of `gradeflow-kit` as a service's `main` uses it: the
//! global telemetry subscriber, real signals, and the health router served
//! over TCP and stopped by a staged shutdown. One binary for the crate, so the
//! process-wide pieces (subscriber, signal handlers) are set up once.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use gradeflow_kit::trace::{current_traceparent, TraceParent};
use gradeflow_kit::{router, shutdown_signal, telemetry, Config, Health, Metrics, Shutdown};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The only test that installs the global subscriber: with an exporter
/// pointed at a port where nothing listens, which must neither fail start-up
/// nor hold up exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_installs_once_gives_spans_trace_ids_and_exits_promptly() {
    let config = Config::from_env_map([
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            "http://127.0.0.1:9".to_owned(),
        ),
        ("OTEL_SERVICE_NAME".to_owned(), "kit-test".to_owned()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ])
    .unwrap();
    let guard = telemetry::init(&config.telemetry()).unwrap();
    assert!(guard.is_installed());
    assert!(guard.is_exporting());

    // A second init (another test, a library) does not panic and does not
    // replace the first subscriber.
    let second = telemetry::init(&telemetry::TelemetryConfig::default()).unwrap();
    assert!(!second.is_installed());

    // Logs are at `warn`, yet an INFO span still carries a trace id: the log
    // filter must not decide what is traced.
    let traceparent = {
        let span = tracing::info_span!("kit.test.span");
        let _entered = span.enter();
        current_traceparent().unwrap()
    };
    TraceParent::parse(&traceparent).unwrap();

    let started = Instant::now();
    drop(guard);
    assert!(
        started.elapsed() < telemetry::FLUSH_TIMEOUT + Duration::from_secs(1),
        "flushing to an unreachable collector took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sigterm_cancels_the_shutdown_token() {
    let token = shutdown_signal();
    assert!(!token.is_cancelled());
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(5), token.cancelled())
        .await
        .expect("SIGTERM did not cancel the token");
}

/// One plain HTTP/1.1 GET over TCP: the status code and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn a_service_serves_health_and_stops_cleanly_in_stages() {
    let config = Config::from_env_map([
        ("GRADEFLOW_HTTP_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        ("GRADEFLOW_SHUTDOWN_GRACE".to_owned(), "5s".to_owned()),
    ])
    .unwrap();
    let health = Health::new();
    let metrics = Metrics::new();
    health.register("store");
    metrics
        .counter(gradeflow_kit::metrics::EVENTS_APPENDED, "Events appended.")
        .add(5);

    let shutdown = Shutdown::new(
        tokio_util::sync::CancellationToken::new(),
        config.shutdown_grace,
    );
    let intake = shutdown.stage("intake");
    let stores = shutdown.stage("stores");

    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(health.clone(), metrics.clone());
    let token = intake.token();
    // Stop intake first: readiness flips before the server stops accepting.
    let intake_health = health.clone();
    intake.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                token.cancelled().await;
                intake_health.set_ready("intake", false, "draining");
            })
            .await
            .unwrap();
    });
    let store_token = stores.token();
    let store_health = health.clone();
    stores.spawn(async move {
        store_health.set_ready("store", true, "sqlite");
        store_token.cancelled().await;
    });
    // Wait on the condition, not a bare sleep: the store task reports ready.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !health.readiness().await.ready {
        assert!(Instant::now() < deadline, "store never became ready");
        tokio::task::yield_now().await;
    }

    let (status, body) = http_get(addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = http_get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("gradeflow_events_appended_total 5\n"),
        "{body}"
    );

    let report = shutdown.drain().await;
    // A clean report means every stage's tasks finished: the server future
    // returned and its listener is closed. (Connecting to the old port would
    // prove nothing: tests running in parallel may bind it again at once.)
    assert!(report.is_clean(), "{report:?}");
    assert!(
        report.stages.iter().all(|s| s.unfinished == 0),
        "{report:?}"
    );
    let readiness = health.readiness().await;
    assert!(!readiness.ready);
    assert_eq!(readiness.components["intake"].detail, "draining");
}
