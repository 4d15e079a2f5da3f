//! Pub/Sub's REST API, for operator tools that pull, peek, acknowledge and republish:
//! against the emulator without credentials, or Google Cloud with Application Default
//! Credentials. (The functions publish through the official gRPC client.)

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use google_cloud_auth::credentials::{CacheableResource, Credentials};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

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

    /// Pulls up to `max` messages without waiting for more.
    pub async fn pull(&self, subscription: &str, max: u32) -> Result<Vec<Received>, RestError> {
        let pulled = self
            .call(
                &format!("pull {subscription}"),
                &format!("subscriptions/{subscription}:pull"),
                json!({ "maxMessages": max, "returnImmediately": true }),
            )
            .await?;
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

    /// Pulls everything currently in the subscription, up to `limit`.
    pub async fn pull_all(
        &self,
        subscription: &str,
        limit: usize,
    ) -> Result<Vec<Received>, RestError> {
        let mut all = Vec::new();
        loop {
            let batch = self.pull(subscription, 100).await?;
            let done = batch.is_empty();
            all.extend(batch);
            if done || all.len() >= limit {
                return Ok(all);
            }
        }
    }

    pub async fn ack(&self, subscription: &str, ack_ids: &[String]) -> Result<(), RestError> {
        if ack_ids.is_empty() {
            return Ok(());
        }
        self.call(
            &format!("acknowledge on {subscription}"),
            &format!("subscriptions/{subscription}:acknowledge"),
            json!({ "ackIds": ack_ids }),
        )
        .await
        .map(drop)
    }

    /// Hands messages back at once (a peek leaves them where they were).
    pub async fn nack(&self, subscription: &str, ack_ids: &[String]) -> Result<(), RestError> {
        if ack_ids.is_empty() {
            return Ok(());
        }
        self.call(
            &format!("release messages on {subscription}"),
            &format!("subscriptions/{subscription}:modifyAckDeadline"),
            json!({ "ackIds": ack_ids, "ackDeadlineSeconds": 0 }),
        )
        .await
        .map(drop)
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
