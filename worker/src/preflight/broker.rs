//! The broker: login, virtual host, and the exchange and queues of the layout the
//! configuration expects (the worker's own with `declareTopology: true`, the administrator's
//! Screwdriver layout without).
//!
//! Also the connection the operator commands use ([`connect`]), so that they fail with the
//! same classified cause and fix. Checks use passive declares on throwaway channels; the only
//! active declare is the worker's own idempotent one, and only when every object exists.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{FieldTable, LongString, ShortString};
use lapin::{Connection, ConnectionProperties, DefaultConnectionBuilder, ErrorKind, ExchangeKind};

use super::{Cause, Line, Status};
use crate::broker::{Topology, TopologyError};
use crate::config::{RabbitSettings, Settings, mask_url};

/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the broker could not be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerCause {
    /// The URI or CA file of the configuration cannot be used.
    Settings,
    /// The broker refused the user name or password.
    LoginRefused,
    /// The virtual host does not exist, or the user may not use it.
    VhostNotAllowed,
    /// No connection (TLS, DNS, refused, timeout, ...).
    Transport(Cause),
}

/// A failed connection, classified, with what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectError {
    /// Why.
    pub cause: BrokerCause,
    /// What was seen (the URI masked).
    pub detail: String,
}

impl ConnectError {
    /// What to do about it.
    pub fn fix(&self) -> String {
        match self.cause {
            BrokerCause::Settings => "correct rabbitmq.url (or the Screwdriver form: protocol, host, port, vhost, username, password) and rabbitmq.caFile".into(),
            BrokerCause::LoginRefused => "set the right user name and password in rabbitmq.url, rabbitmq.username / rabbitmq.password / rabbitmq.passwordFile (RABBITMQ_USERNAME / RABBITMQ_PASSWORD with --compat screwdriver)".into(),
            BrokerCause::VhostNotAllowed => "use a virtual host that exists and that the user may use: the URL's path (%2f is /) or rabbitmq.vhost (RABBITMQ_VIRTUAL_HOST), or grant access with rabbitmqctl set_permissions -p <vhost> <user> ...".into(),
            BrokerCause::Transport(Cause::TlsUnknownIssuer) => "set rabbitmq.caFile to a PEM bundle with the CA that signed the broker's certificate".into(),
            BrokerCause::Transport(Cause::TlsBadCertificate) => "use the host name the broker's certificate was issued for (rabbitmq.url or rabbitmq.host), or renew the certificate".into(),
            BrokerCause::Transport(Cause::UnknownHost) => "the host name does not resolve: correct rabbitmq.url or rabbitmq.host (RABBITMQ_HOST)".into(),
            BrokerCause::Transport(Cause::ConnectionRefused) => "nothing listens there: correct the host and port (rabbitmq.url, or rabbitmq.host / rabbitmq.port), and check that RabbitMQ runs and is reachable (amqps is usually 5671)".into(),
            BrokerCause::Transport(_) => "check that RabbitMQ runs and is reachable from here at the configured address".into(),
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}. Fix: {}", self.detail, self.fix())
    }
}

/// Connects as the worker would (URI, CA bundle), naming the connection `name` in the
/// broker's management view.
pub async fn connect(rabbit: &RabbitSettings, name: &str) -> Result<Connection, ConnectError> {
    let settings_error = |detail: String| ConnectError {
        cause: BrokerCause::Settings,
        detail,
    };
    let uri = rabbit
        .amqp_uri()
        .map_err(|issue| settings_error(issue.to_string()))?;
    let shown = mask_url(uri.expose());
    let ca = match rabbit.ca_file.as_str() {
        "" => None,
        path => Some(
            std::fs::read_to_string(path)
                .map_err(|e| settings_error(format!("rabbitmq.caFile {path}: {e}")))?,
        ),
    };
    let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
    let attempt = async {
        let mut builder = DefaultConnectionBuilder::new()?
            .with_uri_str(uri.expose().to_string())
            .with_properties(props);
        if let Some(pem) = ca {
            builder = builder.with_tls_config(OwnedTLSConfig {
                identity: None,
                cert_chain: Some(pem),
            });
        }
        builder.connect().await
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => Err(ConnectError {
            cause: classify(&e),
            detail: format!("cannot connect to {shown}: {}", super::classify(&e).1),
        }),
        Err(_) => Err(ConnectError {
            cause: BrokerCause::Transport(Cause::Timeout),
            detail: format!(
                "cannot connect to {shown}: no answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            ),
        }),
    }
}

/// The cause of a failed connection.
fn classify(e: &lapin::Error) -> BrokerCause {
    if let ErrorKind::ProtocolError(amqp) = e.kind() {
        match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
            | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
                if amqp.get_message().as_str().contains("vhost") =>
            {
                return BrokerCause::VhostNotAllowed;
            }
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => return BrokerCause::LoginRefused,
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => return BrokerCause::VhostNotAllowed,
            _ => {}
        }
    }
    let text = e.to_string();
    if text.contains("ACCESS_REFUSED") || text.contains("ACCESS-REFUSED") {
        return BrokerCause::LoginRefused;
    }
    if text.contains("NOT_ALLOWED") || text.contains("NOT-ALLOWED") {
        return BrokerCause::VhostNotAllowed;
    }
    BrokerCause::Transport(super::classify(e).0)
}

/// Every broker check, one line each.
pub async fn check(settings: &Settings) -> Vec<Line> {
    let rabbit = &settings.rabbitmq;
    let connection = match connect(rabbit, "buildcluster-worker check-config").await {
        Ok(c) => crate::broker::Connection::new(c),
        Err(e) => {
            return vec![
                Line::new(Status::Fail, "broker: connection", e.detail.clone()).with_fix(e.fix()),
                Line::new(Status::Skip, "broker: layout", "the broker was not reached"),
            ];
        }
    };
    let shown = rabbit
        .amqp_uri()
        .map(|u| mask_url(u.expose()))
        .unwrap_or_default();
    let mut lines = vec![Line::new(
        Status::Pass,
        "broker: connection",
        format!("logged in to {shown}"),
    )];
    let topology = Topology::from_settings(settings);
    let layout = Layout {
        connection: &connection,
        topology: &topology,
    };
    if topology.declare {
        lines.extend(layout.native().await);
    } else {
        lines.extend(layout.administrators().await);
    }
    let _ = connection.close("checked").await;
    lines
}

/// An exchange or a queue.
#[derive(Debug, Clone, Copy)]
enum Object<'a> {
    Exchange(&'a str),
    Queue(&'a str),
}

impl Object<'_> {
    fn what(self) -> String {
        match self {
            Object::Exchange(n) => format!("broker: exchange {n:?}"),
            Object::Queue(n) => format!("broker: queue {n:?}"),
        }
    }
}

struct Layout<'a> {
    connection: &'a crate::broker::Connection,
    topology: &'a Topology,
}

impl Layout<'_> {
    /// Whether an object exists: a passive declare on a channel of its own (a 404 closes it).
    async fn exists(&self, object: Object<'_>) -> Result<bool, String> {
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        let result = match object {
            Object::Exchange(name) => channel
                .exchange_declare(
                    ShortString::from(name),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map(|_| ()),
            Object::Queue(name) => channel
                .queue_declare(
                    ShortString::from(name),
                    QueueDeclareOptions::default().passive(),
                    FieldTable::default(),
                )
                .await
                .map(|_| ()),
        };
        match result {
            Ok(()) => {
                let _ = channel.close(200, "checked".into()).await;
                Ok(true)
            }
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The worker's own layout: what is missing is declared at start; what exists must have
    /// the arguments the worker declares (an administrator's queue of the same name has not).
    async fn native(&self) -> Vec<Line> {
        let t = self.topology;
        let mut objects = vec![
            Object::Exchange(&t.exchange),
            Object::Queue(&t.queue),
            Object::Queue(&t.dead_queue),
        ];
        objects.extend(t.retry_queues.iter().map(|(q, _)| Object::Queue(q)));
        objects.extend(t.events_exchange.as_deref().map(Object::Exchange));
        objects.extend(t.claims_queue.as_deref().map(Object::Queue));
        objects.extend(t.ledger_stream.as_deref().map(Object::Queue));
        let mut lines = Vec::new();
        let mut missing = 0;
        for object in objects {
            match self.exists(object).await {
                Ok(true) => lines.push(Line::new(Status::Pass, object.what(), "exists")),
                Ok(false) => {
                    missing += 1;
                    lines.push(Line::new(
                        Status::Pass,
                        object.what(),
                        "missing; the worker declares it at start (declareTopology: true)",
                    ));
                }
                Err(e) => lines.push(Line::new(Status::Fail, object.what(), e)),
            }
        }
        let loop_queue = format!("{}dlr", t.queue);
        if self.exists(Object::Queue(&loop_queue)).await == Ok(true) {
            lines.push(
                Line::new(
                    Status::Fail,
                    "broker: layout",
                    format!(
                        "{loop_queue:?} exists: this is the administrator's Screwdriver layout, whose {:?} the worker cannot declare with its own arguments",
                        t.queue
                    ),
                )
                .with_fix("set rabbitmq.declareTopology: false (--compat screwdriver does) to use that layout as it is, or move the queues over as docs/migration.md describes"),
            );
        }
        lines.push(self.arguments(missing).await);
        lines
    }

    /// The worker's idempotent declare, when nothing is missing (it would create what is).
    async fn arguments(&self, missing: usize) -> Line {
        let what = "broker: arguments";
        if missing > 0 {
            return Line::new(
                Status::Skip,
                what,
                format!(
                    "{missing} objects are missing; the worker declares them and compares the others at start"
                ),
            );
        }
        match self.topology.ensure(self.connection).await {
            Ok(_) => Line::new(
                Status::Pass,
                what,
                "every object has the arguments the worker declares",
            ),
            Err(e @ TopologyError::Inequivalent { .. }) => Line::new(Status::Fail, what, e.to_string())
                .with_fix("delete the object so that the worker declares it, or configure the worker to match it (queueType, retryDelays), or set rabbitmq.declareTopology: false"),
            Err(e) => Line::new(Status::Fail, what, e.to_string())
                .with_fix("check the user's permissions on the virtual host (configure, write, read)"),
        }
    }

    /// The administrator's layout: `X` and the exchange must exist; the `Xdlr` loop and
    /// `X.dead` are checked for what they mean.
    async fn administrators(&self) -> Vec<Line> {
        let t = self.topology;
        let mut lines = Vec::new();
        let required = [
            (
                Object::Exchange(&t.exchange),
                "create it (topic, durable) as the administrator's definitions do, or set rabbitmq.exchange (RABBITMQ_EXCHANGE)",
            ),
            (
                Object::Queue(&t.queue),
                "create the cluster's queue as the administrator's definitions do, or set rabbitmq.queue (RABBITMQ_QUEUE) to it",
            ),
        ];
        for (object, fix) in required {
            lines.push(self.required(object, fix).await);
        }
        lines.push(self.delay_loop(&t.queue).await);
        if let Some(verify) = &t.verify_queue {
            let fix = "create it, or set rabbitmq.retryQueue (RABBITMQ_RETRYQUEUE), or turn rabbitmq.retryQueueEnabled off";
            lines.push(self.required(Object::Queue(verify), fix).await);
            lines.push(self.delay_loop(verify).await);
        }
        if let Some(events) = &t.events_exchange {
            let fix = "create it (topic, durable) and let the worker's user write to it, or set events.enabled: false";
            lines.push(self.required(Object::Exchange(events), fix).await);
        }
        let dead = Object::Queue(&t.dead_queue);
        lines.push(match self.exists(dead).await {
            Ok(true) => Line::new(Status::Pass, dead.what(), "exists: refused messages are parked there (see buildcluster-worker dead)"),
            Ok(false) => Line::new(Status::Warn, dead.what(), "absent: a message that gives up gets a FAILURE status and is acknowledged, and nothing of it is kept")
                .with_fix(format!("declare a durable queue {:?} to keep such messages", t.dead_queue)),
            Err(e) => Line::new(Status::Fail, dead.what(), e),
        });
        lines
    }

    async fn required(&self, object: Object<'_>, fix: &str) -> Line {
        match self.exists(object).await {
            Ok(true) => Line::new(Status::Pass, object.what(), "exists"),
            Ok(false) => Line::new(
                Status::Fail,
                object.what(),
                "does not exist (declareTopology: false: the worker declares nothing)",
            )
            .with_fix(fix),
            Err(e) => Line::new(Status::Fail, object.what(), e),
        }
    }

    /// `<queue>dlr`: where the guide's layout dead-letters a nacked message for 5 s.
    async fn delay_loop(&self, queue: &str) -> Line {
        let loop_queue = format!("{queue}dlr");
        let object = Object::Queue(&loop_queue);
        match self.exists(object).await {
            Ok(true) => Line::new(Status::Pass, object.what(), format!("exists: the delay loop of {queue:?} (its arguments cannot be read over AMQP)")),
            Ok(false) => Line::new(Status::Warn, object.what(), format!("absent: the guide's layout dead-letters {queue:?} there; a nack without a dead-letter target drops the message"))
                .with_fix(format!("declare {loop_queue:?} as the guide does (x-message-ttl, dead-lettering back to {queue:?}), unless {queue:?} dead-letters elsewhere")),
            Err(e) => Line::new(Status::Fail, object.what(), e),
        }
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(amqp)
        if amqp.kind() == &AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
}
