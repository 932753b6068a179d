//! Commands over NATS request/reply (`ARCHITECTURE.md` § Processes and data
//! flow): the portal sends a [`CommandEnvelope`] on
//! `<prefix>.cmd.<service>.<command>`; every replica of the service listens in
//! the service's queue group, so exactly one of them answers each request
//! with a [`CommandReply`].
//!
//! Serving side: [`CommandServer`] (or [`serve_commands`]) runs handlers
//! concurrently, bounded by a semaphore, so one slow command does not hold up
//! the others; shutdown stops taking requests and answers the ones in flight.
//! A reply too large for one NATS message (the server's `max_payload`) is
//! replaced by a [`REPLY_TOO_LARGE`] rejection, so the caller learns to ask
//! for less instead of timing out. A handler with a large answer may hand
//! the server its reply encoded already ([`Reply::Encoded`]), straight from
//! its own types.
//!
//! Caller side: [`send_command`], or [`send_command_as`] to read the result
//! straight into a type.
//!
//! Idempotency by `command_id` is the handler's business, through the store's
//! inbox: see [`crate::command_inbox::CommandInbox`].

use std::{future::Future, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use async_nats::{client::RequestErrorKind, Client, HeaderMap, Subscriber};
use futures::{FutureExt, StreamExt};
use gradeflow_proto::{CommandEnvelope, CommandReply, Names, Rejection, TypedReply};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::trace::{extract_traceparent, inject_traceparent};

/// Rejection code of a request whose body is not a command envelope.
pub const MALFORMED_COMMAND: &str = "malformed_command";

/// Rejection code of a command whose handler failed unexpectedly (panicked).
pub const INTERNAL_ERROR: &str = "internal_error";

/// Rejection code of a command whose reply is larger than the server's
/// `max_payload`: the reply cannot travel as one message, so the caller is
/// told to ask for less (a smaller page, a shallower tree) instead of
/// waiting for a reply that never comes.
pub const REPLY_TOO_LARGE: &str = "reply_too_large";

/// How many commands one server handles at once by default.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// Serves one service's commands. Implemented by each service's command
/// dispatcher; closures `Fn(CommandEnvelope) -> impl Future<Output =
/// CommandReply>` implement it too.
pub trait CommandHandler: Send + Sync + 'static {
    /// Decides a command. A refusal is `CommandReply::Rejected`, not an error:
    /// the handler maps its own failures to a rejection with a stable code.
    /// A handler that appends events records `command_id` in the store's
    /// inbox in the same transaction (see
    /// [`CommandInbox`](crate::command_inbox::CommandInbox)) so a retried
    /// command gets its first reply and changes nothing.
    fn handle(&self, command: CommandEnvelope) -> impl Future<Output = CommandReply> + Send;

    /// Decides a command, as [`CommandHandler::handle`], into the reply as
    /// it is sent: a handler whose answer is large may encode it straight
    /// from its own types ([`Reply::Encoded`]) instead of through a
    /// `serde_json::Value`. By default, [`CommandHandler::handle`]'s reply.
    fn reply(&self, command: CommandEnvelope) -> impl Future<Output = Reply> + Send {
        async move { Reply::Typed(self.handle(command).await) }
    }
}

/// A command's reply as a handler gives it to the command server.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// To be encoded by the server.
    Typed(CommandReply),
    /// Encoded already: the bytes of a [`CommandReply`] (see
    /// [`CommandReply::encode_accepted`]).
    Encoded(Vec<u8>),
}

impl<F, Fut> CommandHandler for F
where
    F: Fn(CommandEnvelope) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CommandReply> + Send,
{
    fn handle(&self, command: CommandEnvelope) -> impl Future<Output = CommandReply> + Send {
        self(command)
    }
}

/// Why a command server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeCommandsError {
    /// Subscribing to the command subjects failed.
    #[error("subscribing to `{subject}`")]
    Subscribe {
        /// The subject filter.
        subject: String,
        /// What went wrong.
        #[source]
        source: async_nats::SubscribeError,
    },
    /// The subscription could not be confirmed by the server.
    #[error("confirming the subscription to `{subject}`")]
    Flush {
        /// The subject filter.
        subject: String,
        /// What went wrong.
        #[source]
        source: async_nats::client::FlushError,
    },
}

/// A service's command listener, subscribed and ready; [`CommandServer::run`]
/// answers requests until shutdown.
pub struct CommandServer<H> {
    client: Client,
    subscriber: Subscriber,
    subject: String,
    handler: Arc<H>,
    max_in_flight: usize,
}

impl<H: CommandHandler> CommandServer<H> {
    /// Subscribes to `<prefix>.cmd.<service>.*` in the service's queue group
    /// and waits until the server has the subscription, so a request sent
    /// after this returns finds a responder.
    pub async fn bind(
        client: &Client,
        names: &Names,
        service: &str,
        handler: Arc<H>,
    ) -> Result<Self, ServeCommandsError> {
        let subject = names.service_commands_filter(service);
        let subscriber = client
            .queue_subscribe(subject.clone(), names.queue_group(service))
            .await
            .map_err(|source| ServeCommandsError::Subscribe {
                subject: subject.clone(),
                source,
            })?;
        // The SUB is only queued on the client; flushing makes the server
        // acknowledge it (PING/PONG), so callers do not see "no responders".
        client
            .flush()
            .await
            .map_err(|source| ServeCommandsError::Flush {
                subject: subject.clone(),
                source,
            })?;
        Ok(Self {
            client: client.clone(),
            subscriber,
            subject,
            handler,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        })
    }

    /// At most `n` (≥ 1) commands handled at once; further requests wait in
    /// the subscription's buffer.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Answers requests until `shutdown` is cancelled or the connection is
    /// closed. On shutdown it unsubscribes (other replicas in the queue group
    /// take new requests from then on), still answers the requests already
    /// delivered to it, waits for every handler in flight, and flushes the
    /// replies before returning.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.max_in_flight));
        let tasks = TaskTracker::new();
        let mut draining = false;
        loop {
            let next = if draining {
                self.subscriber.next().await
            } else {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => {
                        // Drain: the server stops routing to us; what it has
                        // already sent still arrives and is answered below.
                        if let Err(err) = self.subscriber.drain().await {
                            tracing::warn!(error = %err, subject = %self.subject, "bus.command.drain_failed");
                            break;
                        }
                        round_trip(&self.client).await;
                        draining = true;
                        continue;
                    }
                    msg = self.subscriber.next() => msg,
                }
            };
            let Some(msg) = next else { break };
            // Waiting for a permit here is the back-pressure: the subscription
            // buffers further requests while `max_in_flight` handlers run.
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let client = self.client.clone();
            let handler = self.handler.clone();
            tasks.spawn(async move {
                answer(&client, handler.as_ref(), msg).await;
                drop(permit);
            });
        }
        tasks.close();
        tasks.wait().await;
        if let Err(err) = self.client.flush().await {
            tracing::warn!(error = %err, "bus.command.flush_failed");
        }
    }
}

/// One round trip to the server after a subscription's UNSUB. The server
/// handles a connection's operations in order, so its answer (here "no
/// responders" from an inbox nobody listens on) comes after every request it
/// routed to the subscription before the UNSUB. Reading that answer is also
/// what makes async-nats 0.42 close the drained subscription; without it the
/// subscription lingers until the idle connection next wakes (seconds).
async fn round_trip(client: &Client) {
    let request = async_nats::Request::new().timeout(Some(Duration::from_secs(2)));
    match client.send_request(client.new_inbox(), request).await {
        Ok(_) => {}
        Err(err) if err.kind() == RequestErrorKind::NoResponders => {}
        Err(err) => tracing::debug!(error = %err, "bus.command.drain_round_trip_failed"),
    }
}

/// Serves `service`'s commands with `handler` until `shutdown`, with at most
/// [`DEFAULT_MAX_IN_FLIGHT`] handlers at once. Returns once the in-flight
/// requests are answered. Use [`CommandServer`] to know when the subscription
/// is live or to change the concurrency bound.
pub async fn serve_commands<H: CommandHandler>(
    client: &Client,
    names: &Names,
    service: &str,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> Result<(), ServeCommandsError> {
    CommandServer::bind(client, names, service, handler)
        .await?
        .run(shutdown)
        .await;
    Ok(())
}

/// Handles one request and publishes the reply.
#[tracing::instrument(name = "bus.command.handle", skip_all, fields(subject = %msg.subject))]
async fn answer<H: CommandHandler>(client: &Client, handler: &H, msg: async_nats::Message) {
    let Some(reply_to) = msg.reply.clone() else {
        // Published, not requested: nobody waits for an answer, and a
        // command without a caller is not executed.
        tracing::warn!(subject = %msg.subject, "bus.command.no_reply_subject");
        return;
    };
    let reply = match serde_json::from_slice::<CommandEnvelope>(&msg.payload) {
        Err(err) => Reply::Typed(CommandReply::Rejected(
            Rejection::new(
                MALFORMED_COMMAND,
                format!("the request is not a command envelope: {err}"),
                format!("yêu cầu không phải là một lệnh hợp lệ: {err}"),
            )
            .with_details(serde_json::json!({ "subject": msg.subject.as_str() })),
        )),
        Ok(mut command) => {
            if command.traceparent.is_none() {
                command.traceparent = extract_traceparent(msg.headers.as_ref());
            }
            let kind = command.kind.clone();
            // A panicking handler must not leave the caller waiting for a
            // timeout: it gets a rejection naming the failure instead.
            match AssertUnwindSafe(handler.reply(command))
                .catch_unwind()
                .await
            {
                Ok(reply) => reply,
                Err(_) => {
                    tracing::error!(kind = %kind, "bus.command.handler_panicked");
                    Reply::Typed(CommandReply::Rejected(Rejection::new(
                        INTERNAL_ERROR,
                        "the command failed unexpectedly; nothing was changed",
                        "lệnh gặp lỗi ngoài dự kiến; không có gì thay đổi",
                    )))
                }
            }
        }
    };
    let body = match reply {
        Reply::Encoded(body) => body,
        Reply::Typed(reply) => match serde_json::to_vec(&reply) {
            Ok(body) => body,
            Err(err) => {
                tracing::error!(error = %err, "bus.command.reply_encode_failed");
                return;
            }
        },
    };
    let body = fit(client, body);
    if let Err(err) = client.publish(reply_to, body.into()).await {
        tracing::warn!(error = %err, "bus.command.reply_failed");
    }
}

/// `body`, or a [`REPLY_TOO_LARGE`] rejection when `body` exceeds the
/// server's `max_payload`. The client would refuse to publish such a body,
/// and the caller would then wait for its timeout with no hint why; the
/// rejection is small, so it always fits.
fn fit(client: &Client, body: Vec<u8>) -> Vec<u8> {
    // 0 until the server's INFO has been read: no known limit to check.
    let max_payload = client.server_info().max_payload;
    if max_payload == 0 || body.len() <= max_payload {
        return body;
    }
    tracing::warn!(
        bytes = body.len(),
        max_payload,
        "bus.command.reply_too_large"
    );
    let rejection = Rejection::new(
        REPLY_TOO_LARGE,
        format!(
            "the answer ({} bytes) is too large for one message (at most {max_payload} bytes); \
             ask for less, e.g. a smaller page or fewer levels",
            body.len()
        ),
        format!(
            "câu trả lời ({} byte) quá lớn để gửi trong một thông điệp (tối đa {max_payload} byte); \
             hãy yêu cầu ít dữ liệu hơn, ví dụ một trang nhỏ hơn hoặc ít cấp hơn",
            body.len()
        ),
    )
    .with_details(serde_json::json!({ "bytes": body.len(), "max_payload": max_payload }));
    // A rejection of plain strings and numbers always encodes.
    serde_json::to_vec(&CommandReply::Rejected(rejection)).unwrap_or_default()
}

/// Why a command got no usable reply.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A service listens but did not answer in time. The command may or may
    /// not have been applied: retry with the same `command_id`.
    #[error("no reply to command on `{subject}` within {timeout:?}")]
    Timeout {
        /// The subject.
        subject: String,
        /// How long the caller waited.
        timeout: Duration,
    },
    /// No replica of the service is listening.
    #[error("no service answers commands on `{subject}`")]
    NoResponders {
        /// The subject.
        subject: String,
    },
    /// The request could not be sent or the connection failed.
    #[error("sending command on `{subject}`")]
    Transport {
        /// The subject.
        subject: String,
        /// What went wrong.
        #[source]
        source: async_nats::RequestError,
    },
    /// The command could not be encoded, or the reply is not a command reply.
    #[error("command on `{subject}`: {what}")]
    Malformed {
        /// The subject.
        subject: String,
        /// What was wrong.
        what: String,
    },
}

/// Sends `command` to `service` and waits up to `timeout` for its reply.
/// The subject's last token is the command's kind (`submit_self_review.v1`
/// becomes `submit_self_review_v1`). The envelope's `traceparent` also
/// travels as a header, so tracing can pick it up without parsing the body.
pub async fn send_command(
    client: &Client,
    names: &Names,
    service: &str,
    command: &CommandEnvelope,
    timeout: Duration,
) -> Result<CommandReply, CommandError> {
    let (subject, body) = request(client, names, service, command, timeout).await?;
    serde_json::from_slice(&body).map_err(|err| CommandError::Malformed {
        subject,
        what: format!("decoding the reply: {err}"),
    })
}

/// [`send_command`], with the reply's result read straight into `R` (one
/// parse of a large answer, no `serde_json::Value` in between).
pub async fn send_command_as<R: serde::de::DeserializeOwned>(
    client: &Client,
    names: &Names,
    service: &str,
    command: &CommandEnvelope,
    timeout: Duration,
) -> Result<TypedReply<R>, CommandError> {
    let (subject, body) = request(client, names, service, command, timeout).await?;
    TypedReply::from_slice(&body).map_err(|err| CommandError::Malformed {
        subject,
        what: format!("decoding the reply: {err}"),
    })
}

/// Sends `command` and returns its subject and the reply's body.
async fn request(
    client: &Client,
    names: &Names,
    service: &str,
    command: &CommandEnvelope,
    timeout: Duration,
) -> Result<(String, bytes::Bytes), CommandError> {
    let subject = names.command_subject(service, &command.kind);
    let body = serde_json::to_vec(command).map_err(|err| CommandError::Malformed {
        subject: subject.clone(),
        what: format!("encoding the envelope: {err}"),
    })?;
    let mut headers = HeaderMap::new();
    inject_traceparent(&mut headers, command.traceparent.as_deref());
    let request = async_nats::Request::new()
        .payload(body.into())
        .headers(headers)
        .timeout(Some(timeout));
    let msg = client
        .send_request(subject.clone(), request)
        .await
        .map_err(|err| match err.kind() {
            RequestErrorKind::TimedOut => CommandError::Timeout {
                subject: subject.clone(),
                timeout,
            },
            RequestErrorKind::NoResponders => CommandError::NoResponders {
                subject: subject.clone(),
            },
            RequestErrorKind::Other => CommandError::Transport {
                subject: subject.clone(),
                source: err,
            },
        })?;
    Ok((subject, msg.payload))
}
