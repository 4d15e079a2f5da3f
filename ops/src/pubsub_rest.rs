//! Pub/Sub's REST API, for operator tools that pull, peek, acknowledge and republish:
//! against the emulator without credentials, or Google Cloud with Application Default
//! Credentials. (The functions publish through the official gRPC client.)

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use google_cloud_auth::credentials::{CacheableResource, Credentials};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// Most messages a pull asks for: what Pub/Sub answers at most (the emulator answers 100).
pub const MAX_PULL: u32 = 1_000;
/// Longest a pull waits for messages before it counts as finding none: a subscription's
/// last pull, the one that finds it drained.
pub const PULL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Pulls in a row that wait [`PULL_WAIT`] and find nothing new before a subscription is
/// taken to be drained.
pub const EMPTY_PULLS: usize = 1;
/// Most messages in one publish request (Pub/Sub refuses more).
pub const MAX_PUBLISH: usize = 1_000;
/// Ack ids in one acknowledge or modifyAckDeadline request: well under its 512 KiB limit
/// (an ack id is at most 164 bytes).
pub const ACK_IDS_PER_REQUEST: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("Pub/Sub credentials: {0}")]
    Credentials(String),
    #[error("Pub/Sub {what}: {reason}")]
    Call { what: String, reason: String },
}

/// A message pulled from a subscription.
#[derive(Debug, Clone)]
pub struct Received {
    pub ack_id: String,
    pub message_id: String,
    pub data: Vec<u8>,
    pub attributes: BTreeMap<String, String>,
    pub publish_time: String,
}

#[derive(Clone)]
pub struct PubsubRest {
    http: reqwest::Client,
    base: String,
    project: String,
    credentials: Option<Credentials>,
}

impl PubsubRest {
    pub fn emulator(host: &str, project: &str) -> PubsubRest {
        PubsubRest {
            http: reqwest::Client::new(),
            base: format!("http://{host}/v1"),
            project: project.to_owned(),
            credentials: None,
        }
    }

    pub fn cloud(project: &str) -> Result<PubsubRest, RestError> {
        let credentials = google_cloud_auth::credentials::Builder::default()
            .build()
            .map_err(|e| RestError::Credentials(e.to_string()))?;
        Ok(PubsubRest {
            http: reqwest::Client::new(),
            base: "https://pubsub.googleapis.com/v1".into(),
            project: project.to_owned(),
            credentials: Some(credentials),
        })
    }

    async fn headers(&self) -> Result<HeaderMap, RestError> {
        let Some(credentials) = &self.credentials else {
            return Ok(HeaderMap::new());
        };
        match credentials
            .headers(Default::default())
            .await
            .map_err(|e| RestError::Credentials(e.to_string()))?
        {
            CacheableResource::New { data, .. } => Ok(data),
            CacheableResource::NotModified => Ok(HeaderMap::new()),
        }
    }

    async fn call(&self, what: &str, path: &str, body: Value) -> Result<Value, RestError> {
        let error = |reason: String| RestError::Call {
            what: what.to_owned(),
            reason,
        };
        let response = self
            .http
            .post(format!("{}/projects/{}/{path}", self.base, self.project))
            .headers(self.headers().await?)
            .json(&body)
            .send()
            .await
            .map_err(|e| error(e.to_string()))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| error(e.to_string()))?;
        if !status.is_success() {
            return Err(error(format!("{status}: {text}")));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Pulls up to `max` messages, waiting at most `wait` for any to arrive.
    ///
    /// On Pub/Sub, no `returnImmediately`: it is deprecated ("adversely impacts the
    /// performance of Pull operations"). A pull that finds nothing waits instead, so the wait
    /// is bounded here, and an empty answer does not mean the subscription is empty ("The
    /// Pub/Sub system may return fewer than the maxMessages requested even if there are more
    /// messages"): see [`PubsubRest::batches`]. Pub/Sub answers at most 1,000 messages.
    ///
    /// The emulator is asked to answer at once, because it keeps serving a pull its client
    /// gave up on: what is published or released next goes to that pull and is stranded
    /// until its ack deadline ends (measured here: a third of the messages published while
    /// pulls were being cut short). That works around the emulator's defect; the cloud path
    /// does not rely on it. The emulator answers at most 100 messages.
    pub async fn pull(
        &self,
        subscription: &str,
        max: u32,
        wait: std::time::Duration,
    ) -> Result<Vec<Received>, RestError> {
        let pulled = match tokio::time::timeout(
            wait,
            self.call(
                &format!("pull {subscription}"),
                &format!("subscriptions/{subscription}:pull"),
                if self.credentials.is_none() {
                    json!({ "maxMessages": max.min(MAX_PULL), "returnImmediately": true })
                } else {
                    json!({ "maxMessages": max.min(MAX_PULL) })
                },
            ),
        )
        .await
        {
            Ok(answer) => answer?,
            Err(_) => return Ok(Vec::new()),
        };
        let received = pulled["receivedMessages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(received
            .iter()
            .map(|m| {
                let msg = &m["message"];
                Received {
                    ack_id: m["ackId"].as_str().unwrap_or_default().to_owned(),
                    message_id: msg["messageId"].as_str().unwrap_or_default().to_owned(),
                    data: STANDARD
                        .decode(msg["data"].as_str().unwrap_or_default())
                        .unwrap_or_default(),
                    attributes: serde_json::from_value(msg["attributes"].clone())
                        .unwrap_or_default(),
                    publish_time: msg["publishTime"].as_str().unwrap_or_default().to_owned(),
                }
            })
            .collect())
    }

    /// Batch after batch of a subscription's messages, see [`Batches`].
    pub fn batches<'a>(&'a self, subscription: &'a str, limit: usize) -> Batches<'a> {
        Batches {
            pubsub: self,
            subscription,
            limit,
            seen: std::collections::HashSet::new(),
        }
    }

    /// Acknowledges, in requests of at most [`ACK_IDS_PER_REQUEST`] ids.
    pub async fn ack(&self, subscription: &str, ack_ids: &[String]) -> Result<(), RestError> {
        for chunk in ack_ids.chunks(ACK_IDS_PER_REQUEST) {
            self.call(
                &format!("acknowledge on {subscription}"),
                &format!("subscriptions/{subscription}:acknowledge"),
                json!({ "ackIds": chunk }),
            )
            .await?;
        }
        Ok(())
    }

    /// Hands messages back at once (a peek leaves them where they were).
    pub async fn nack(&self, subscription: &str, ack_ids: &[String]) -> Result<(), RestError> {
        for chunk in ack_ids.chunks(ACK_IDS_PER_REQUEST) {
            self.call(
                &format!("release messages on {subscription}"),
                &format!("subscriptions/{subscription}:modifyAckDeadline"),
                json!({ "ackIds": chunk, "ackDeadlineSeconds": 0 }),
            )
            .await?;
        }
        Ok(())
    }

    /// Publishes messages (data, attributes) in requests of at most [`MAX_PUBLISH`]; returns
    /// their message ids.
    pub async fn publish_all(
        &self,
        topic: &str,
        messages: &[(Vec<u8>, BTreeMap<String, String>)],
    ) -> Result<Vec<String>, RestError> {
        let mut ids = Vec::with_capacity(messages.len());
        for chunk in messages.chunks(MAX_PUBLISH) {
            let body: Vec<Value> = chunk
                .iter()
                .map(|(data, attributes)| {
                    json!({ "data": STANDARD.encode(data), "attributes": attributes })
                })
                .collect();
            let published = self
                .call(
                    &format!("publish to {topic}"),
                    &format!("topics/{topic}:publish"),
                    json!({ "messages": body }),
                )
                .await?;
            let answered = published["messageIds"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if answered.len() != chunk.len() {
                return Err(RestError::Call {
                    what: format!("publish to {topic}"),
                    reason: format!("{} ids for {} messages", answered.len(), chunk.len()),
                });
            }
            ids.extend(
                answered
                    .iter()
                    .map(|v| v.as_str().unwrap_or_default().to_owned()),
            );
        }
        Ok(ids)
    }

    /// Points a push subscription at `endpoint` (`saga chaos` puts its proxy in between).
    pub async fn modify_push_config(
        &self,
        subscription: &str,
        endpoint: &str,
    ) -> Result<(), RestError> {
        self.call(
            &format!("pointing {subscription} at {endpoint}"),
            &format!("subscriptions/{subscription}:modifyPushConfig"),
            json!({ "pushConfig": { "pushEndpoint": endpoint } }),
        )
        .await?;
        Ok(())
    }

    /// Publishes one message; returns its message id.
    pub async fn publish(
        &self,
        topic: &str,
        data: &[u8],
        attributes: &BTreeMap<String, String>,
    ) -> Result<String, RestError> {
        let published = self
            .call(
                &format!("publish to {topic}"),
                &format!("topics/{topic}:publish"),
                json!({ "messages": [{ "data": STANDARD.encode(data), "attributes": attributes }] }),
            )
            .await?;
        Ok(published["messageIds"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }
}

/// A subscription worked through batch by batch: each must be acknowledged or held by the
/// caller well within the ack deadline. It ends when [`EMPTY_PULLS`] pulls in a row bring
/// nothing new, or `limit` messages were seen. A message seen again (its lease ran out while
/// others were handled) is not handed out twice.
pub struct Batches<'a> {
    pubsub: &'a PubsubRest,
    subscription: &'a str,
    limit: usize,
    seen: std::collections::HashSet<String>,
}

impl Batches<'_> {
    pub async fn next(&mut self) -> Result<Option<Vec<Received>>, RestError> {
        let mut empty = 0;
        while empty < EMPTY_PULLS && self.seen.len() < self.limit {
            let batch: Vec<Received> = self
                .pubsub
                .pull(self.subscription, MAX_PULL, PULL_WAIT)
                .await?
                .into_iter()
                .filter(|m| self.seen.insert(m.message_id.clone()))
                .collect();
            if !batch.is_empty() {
                return Ok(Some(batch));
            }
            empty += 1;
        }
        Ok(None)
    }
}
