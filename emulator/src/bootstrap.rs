//! Creates the topology (topics, dead-letter topics, push and pull subscriptions) on the
//! Pub/Sub emulator, from [`saga_contracts::topology`]. Idempotent: what exists is left as is.

use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::client::{SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::{DeadLetterPolicy, PushConfig, Subscription};
use saga_contracts::topology::{
    self, PULL_SUBSCRIPTIONS, PUSH_SUBSCRIPTIONS, PushSubscription, subscription_path, topic_path,
};

#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct BootstrapError {
    what: String,
    #[source]
    source: google_cloud_pubsub::Error,
}

fn already_exists(e: &google_cloud_pubsub::Error) -> bool {
    e.status().is_some_and(|s| s.code == Code::AlreadyExists) || e.http_status_code() == Some(409)
}

fn context(
    what: impl FnOnce() -> String,
) -> impl FnOnce(google_cloud_pubsub::Error) -> BootstrapError {
    move |source| BootstrapError {
        what: what(),
        source,
    }
}

fn anonymous() -> google_cloud_auth::credentials::Credentials {
    google_cloud_auth::credentials::anonymous::Builder::new().build()
}

/// Changes to the topology's delivery settings, for tests that need Pub/Sub to give up
/// sooner than production does.
#[derive(Clone, Copy, Debug, Default)]
pub struct Overrides {
    pub max_delivery_attempts: Option<i32>,
}

/// The emulator's admin clients, and create-if-absent for topics and subscriptions.
struct Admin {
    topics: TopicAdmin,
    subscriptions: SubscriptionAdmin,
}

impl Admin {
    async fn connect(pubsub_host: &str) -> Result<Admin, BootstrapError> {
        let endpoint = format!("http://{pubsub_host}");
        let topics = TopicAdmin::builder()
            .with_endpoint(&endpoint)
            .with_credentials(anonymous())
            .build()
            .await
            .map_err(|e| BootstrapError {
                what: "connecting the topic admin client".into(),
                source: google_cloud_pubsub::Error::io(e),
            })?;
        let subscriptions = SubscriptionAdmin::builder()
            .with_endpoint(&endpoint)
            .with_credentials(anonymous())
            .build()
            .await
            .map_err(|e| BootstrapError {
                what: "connecting the subscription admin client".into(),
                source: google_cloud_pubsub::Error::io(e),
            })?;
        Ok(Admin {
            topics,
            subscriptions,
        })
    }

    async fn ensure_topic(&self, project: &str, topic: &str) -> Result<(), BootstrapError> {
        match self
            .topics
            .create_topic()
            .set_name(topic_path(project, topic))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if already_exists(&e) => Ok(()),
            Err(e) => Err(context(|| format!("creating topic {topic}"))(e)),
        }
    }

    async fn ensure_subscription(&self, subscription: Subscription) -> Result<(), BootstrapError> {
        let name = subscription.name.clone();
        match self
            .subscriptions
            .create_subscription()
            .with_request(subscription)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if already_exists(&e) => Ok(()),
            Err(e) => Err(context(|| format!("creating subscription {name}"))(e)),
        }
    }
}

/// Creates every topic and subscription of the topology in `project` on the emulator at
/// `pubsub_host`. `push_endpoint` gives the URL each push subscription delivers to.
pub async fn create_topology(
    project: &str,
    pubsub_host: &str,
    push_endpoint: impl Fn(&PushSubscription) -> String,
) -> Result<(), BootstrapError> {
    create_topology_with(project, pubsub_host, push_endpoint, Overrides::default()).await
}

/// [`create_topology`] with [`Overrides`].
pub async fn create_topology_with(
    project: &str,
    pubsub_host: &str,
    push_endpoint: impl Fn(&PushSubscription) -> String,
    overrides: Overrides,
) -> Result<(), BootstrapError> {
    let admin = Admin::connect(pubsub_host).await?;
    for topic in topology::all_topics() {
        admin.ensure_topic(project, topic).await?;
    }
    for s in &PUSH_SUBSCRIPTIONS {
        // No retry policy on the emulator, unlike Terraform's (1 s to 60 s): the emulator
        // (0.8.20) schedules a retried push on a timer that a NullPointerException kills
        // when several messages fail twice within the same millisecond tick, and from then
        // on the subscription's failed messages are never pushed again nor dead-lettered
        // (`MessageBacklog.insertDelayedMessage` and `ExpireOutstandingMessagesRunnable`,
        // which only catches `StatusException`, under `scheduleAtFixedRate`). Without a
        // policy it retries a failed push after 1 s, and the dead-letter policy still
        // counts the attempts.
        let subscription = Subscription::new()
            .set_name(subscription_path(project, s.name))
            .set_topic(topic_path(project, s.topic))
            .set_push_config(PushConfig::new().set_push_endpoint(push_endpoint(s)))
            .set_ack_deadline_seconds(i32::try_from(s.ack_deadline.as_secs()).unwrap_or(60))
            .set_dead_letter_policy(
                DeadLetterPolicy::new()
                    .set_dead_letter_topic(topic_path(project, s.dead_letter_topic))
                    .set_max_delivery_attempts(
                        overrides
                            .max_delivery_attempts
                            .unwrap_or(s.max_delivery_attempts),
                    ),
            );
        admin.ensure_subscription(subscription).await?;
    }
    for s in &PULL_SUBSCRIPTIONS {
        let subscription = Subscription::new()
            .set_name(subscription_path(project, s.name))
            .set_topic(topic_path(project, s.topic))
            .set_ack_deadline_seconds(60);
        admin.ensure_subscription(subscription).await?;
    }
    Ok(())
}

/// Creates a topic (the bench's floor publishes its last stage to one with no subscriber).
pub async fn create_topic(
    project: &str,
    pubsub_host: &str,
    topic: &str,
) -> Result<(), BootstrapError> {
    Admin::connect(pubsub_host)
        .await?
        .ensure_topic(project, topic)
        .await
}

/// Creates a topic and a push subscription on it (the bench's floor measurement uses these
/// for a bare chain outside the saga's topology).
pub async fn create_push_pair(
    project: &str,
    pubsub_host: &str,
    topic: &str,
    subscription: &str,
    endpoint: &str,
) -> Result<(), BootstrapError> {
    let admin = Admin::connect(pubsub_host).await?;
    admin.ensure_topic(project, topic).await?;
    admin
        .ensure_subscription(
            Subscription::new()
                .set_name(subscription_path(project, subscription))
                .set_topic(topic_path(project, topic))
                .set_push_config(PushConfig::new().set_push_endpoint(endpoint))
                .set_ack_deadline_seconds(60),
        )
        .await
}
