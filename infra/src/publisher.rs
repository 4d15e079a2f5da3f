//! Publishing events: one gRPC connection pool per process, one batching publisher per topic
//! the function is allowed to publish to, and a bound on how long a publish may take so a
//! broker outage turns into a 5xx (and a redelivery) instead of a hung request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use google_cloud_pubsub::client::{BasePublisher, Publisher};
use google_cloud_pubsub::model::Message;

use crate::config::Endpoint;
use crate::meter::Meter;
use crate::order::Emitted;
use crate::spans::{self, Kind, Value};
use crate::topology::topic_path;

const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Batching adds at most this much latency per hop.
pub const BATCH_DELAY: Duration = Duration::from_millis(2);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("connecting the publisher: {0}")]
    Connect(String),
    #[error("this function may not publish to topic {0}")]
    UnknownTopic(String),
    #[error("publishing event {event_id} to {topic}: {reason}")]
    Failed {
        event_id: String,
        topic: String,
        reason: String,
    },
    #[error("publishing event {event_id} to {topic} timed out after {PUBLISH_TIMEOUT:?}")]
    Timeout { event_id: String, topic: String },
}

#[derive(Clone, Debug)]
pub struct EventPublisher {
    publishers: Arc<HashMap<String, Publisher>>,
    meter: Meter,
}

impl EventPublisher {
    /// Connects to Pub/Sub (the emulator, or Google Cloud) with publishers for `topics`.
    pub async fn connect(
        project_id: &str,
        endpoint: &Endpoint,
        topics: &[&str],
        meter: Meter,
    ) -> Result<EventPublisher, PublishError> {
        let builder = BasePublisher::builder();
        let builder = match endpoint {
            Endpoint::Emulator(host) => builder
                .with_endpoint(format!("http://{host}"))
                .with_credentials(
                    google_cloud_auth::credentials::anonymous::Builder::new().build(),
                ),
            Endpoint::Cloud => builder,
        };
        let base = builder
            .build()
            .await
            .map_err(|e| PublishError::Connect(e.to_string()))?;
        let publishers = topics
            .iter()
            .map(|topic| {
                let publisher = base
                    .publisher(topic_path(project_id, topic))
                    .set_delay_threshold(BATCH_DELAY)
                    .build();
                (topic.to_string(), publisher)
            })
            .collect();
        Ok(EventPublisher {
            publishers: Arc::new(publishers),
            meter,
        })
    }

    /// The same publishers, counted on `meter` instead.
    pub fn metered(&self, meter: Meter) -> EventPublisher {
        EventPublisher {
            publishers: self.publishers.clone(),
            meter,
        }
    }

    /// Publishes a committed event; returns the Pub/Sub message id.
    pub async fn publish(&self, record: &Emitted) -> Result<String, PublishError> {
        if crate::chaos::take(crate::chaos::Fault::PublishFails) {
            return Err(PublishError::Failed {
                event_id: record.event_id.clone(),
                topic: record.topic.clone(),
                reason: "injected (saga chaos)".into(),
            });
        }
        let publisher = self
            .publishers
            .get(&record.topic)
            .ok_or_else(|| PublishError::UnknownTopic(record.topic.clone()))?;
        let bytes = record.payload.len()
            + record
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        self.meter.publish(bytes);
        let message = Message::new()
            .set_data(record.payload.clone().into_bytes())
            .set_attributes(record.attributes.clone());
        let publish = async {
            match tokio::time::timeout(PUBLISH_TIMEOUT, publisher.publish(message)).await {
                Ok(Ok(id)) => Ok(id),
                Ok(Err(e)) => Err(PublishError::Failed {
                    event_id: record.event_id.clone(),
                    topic: record.topic.clone(),
                    reason: e.to_string(),
                }),
                Err(_) => Err(PublishError::Timeout {
                    event_id: record.event_id.clone(),
                    topic: record.topic.clone(),
                }),
            }
        };
        let attributes = || {
            vec![
                ("messaging.system", Value::from("gcp_pubsub")),
                ("messaging.operation.type", Value::from("send")),
                (
                    "messaging.destination.name",
                    Value::from(record.topic.clone()),
                ),
                ("saga.event_id", Value::from(record.event_id.clone())),
                ("messaging.message.body.size", Value::from(bytes)),
            ]
        };
        spans::call(
            format!("{} publish", record.topic),
            Kind::Producer,
            attributes,
            publish,
        )
        .await
    }
}
