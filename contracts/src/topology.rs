//! The saga's wiring, defined once: topics, subscriptions, dead-letter policy, and which
//! function consumes and publishes what. The emulator bootstrap, the tests, the local runner
//! and (later) the Terraform check all read this module; nothing else names a topic.

use std::time::Duration;

/// One of the five deployable functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Function {
    Frontend,
    Order,
    Inventory,
    Payments,
    Janitor,
}

impl Function {
    pub const ALL: [Function; 5] = [
        Function::Frontend,
        Function::Order,
        Function::Inventory,
        Function::Payments,
        Function::Janitor,
    ];

    /// The name used for the crate, the binary, the Cloud Run service and log labels.
    pub const fn name(self) -> &'static str {
        match self {
            Function::Frontend => "frontend",
            Function::Order => "order",
            Function::Inventory => "inventory",
            Function::Payments => "payments",
            Function::Janitor => "janitor",
        }
    }

    /// The port `saga up` gives it locally (frontend on 8080, the others after it).
    pub const fn default_port(self) -> u16 {
        match self {
            Function::Frontend => 8080,
            Function::Order => 8081,
            Function::Inventory => 8082,
            Function::Payments => 8083,
            Function::Janitor => 8084,
        }
    }

    /// The endpoint a scheduler (or `saga up`'s timer) calls to sweep, if the function has
    /// one: the frontend republishes the events of orders still PENDING (it has no
    /// redelivery), the janitor fails stuck sagas. The push steps need none: what they did
    /// not publish comes back with the redelivery.
    pub const fn sweep_path(self) -> Option<&'static str> {
        match self {
            Function::Frontend => Some("/internal/sweep/outbox"),
            Function::Janitor => Some("/internal/sweep/timeouts"),
            Function::Order | Function::Inventory | Function::Payments => None,
        }
    }

    /// Topics this function may publish to (and, in Terraform, is allowed to).
    pub fn publishes(self) -> &'static [&'static str] {
        match self {
            Function::Frontend => &[topics::FRONTEND],
            Function::Order => &[topics::ORDER_CREATED, topics::ERROR],
            Function::Inventory => &[topics::INVENTORY_UPDATED, topics::ERROR],
            Function::Payments => &[topics::PAYMENT_CREATED, topics::ERROR],
            // A completed saga's last event, if its delivery was dead-lettered before the
            // publish went through (see the janitor's dead-letter step).
            Function::Janitor => &[topics::PAYMENT_CREATED],
        }
    }

    /// The push subscriptions delivering to this function.
    pub fn consumes(self) -> impl Iterator<Item = &'static PushSubscription> {
        PUSH_SUBSCRIPTIONS
            .iter()
            .filter(move |s| s.function == self)
    }

    pub fn from_name(name: &str) -> Option<Function> {
        Function::ALL.into_iter().find(|f| f.name() == name)
    }
}

impl std::fmt::Display for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Topic names.
pub mod topics {
    pub const FRONTEND: &str = "frontend";
    pub const ORDER_CREATED: &str = "order-created";
    pub const INVENTORY_UPDATED: &str = "inventory-updated";
    pub const PAYMENT_CREATED: &str = "payment-created";
    pub const ERROR: &str = "error";
}

/// The saga's event topics (dead-letter topics come from [`PushSubscription::dead_letter_topic`]).
pub const TOPICS: [&str; 5] = [
    topics::FRONTEND,
    topics::ORDER_CREATED,
    topics::INVENTORY_UPDATED,
    topics::PAYMENT_CREATED,
    topics::ERROR,
];

/// A push subscription: Pub/Sub POSTs each message of `topic` to `function` at `path`.
#[derive(Debug, PartialEq, Eq)]
pub struct PushSubscription {
    pub name: &'static str,
    pub topic: &'static str,
    pub function: Function,
    /// Where the function receives it: `/push/<subscription>`.
    pub path: &'static str,
    /// Where Pub/Sub puts what it could not deliver. Every janitor subscription uses the
    /// janitor's, `error-sub-dlq`, which only operators consume: no dead-letter loop.
    pub dead_letter_topic: &'static str,
    pub max_delivery_attempts: i32,
    pub ack_deadline: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

/// A pull subscription for people and tools to watch a topic without stealing its messages.
#[derive(Debug, PartialEq, Eq)]
pub struct PullSubscription {
    pub name: &'static str,
    pub topic: &'static str,
}

const fn push(
    name: &'static str,
    topic: &'static str,
    function: Function,
    path: &'static str,
    dead_letter_topic: &'static str,
) -> PushSubscription {
    PushSubscription {
        name,
        topic,
        function,
        path,
        dead_letter_topic,
        max_delivery_attempts: 10,
        ack_deadline: Duration::from_secs(60),
        min_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(60),
    }
}

/// Every push subscription; the saga's follow the original design's names. Dead letters of
/// the forward steps go to the janitor, which fails and compensates their saga.
pub const PUSH_SUBSCRIPTIONS: [PushSubscription; 7] = [
    push(
        "frontend-sub",
        topics::FRONTEND,
        Function::Order,
        "/push/frontend-sub",
        "frontend-sub-dlq",
    ),
    push(
        "order-created-sub",
        topics::ORDER_CREATED,
        Function::Inventory,
        "/push/order-created-sub",
        "order-created-sub-dlq",
    ),
    push(
        "inventory-updated-sub",
        topics::INVENTORY_UPDATED,
        Function::Payments,
        "/push/inventory-updated-sub",
        "inventory-updated-sub-dlq",
    ),
    push(
        "error-sub",
        topics::ERROR,
        Function::Janitor,
        "/push/error-sub",
        "error-sub-dlq",
    ),
    push(
        "frontend-sub-dlq-janitor",
        "frontend-sub-dlq",
        Function::Janitor,
        "/push/frontend-sub-dlq-janitor",
        "error-sub-dlq",
    ),
    push(
        "order-created-sub-dlq-janitor",
        "order-created-sub-dlq",
        Function::Janitor,
        "/push/order-created-sub-dlq-janitor",
        "error-sub-dlq",
    ),
    push(
        "inventory-updated-sub-dlq-janitor",
        "inventory-updated-sub-dlq",
        Function::Janitor,
        "/push/inventory-updated-sub-dlq-janitor",
        "error-sub-dlq",
    ),
];

/// Whether deliveries of `subscription` are dead letters (to be compensated, not processed).
pub fn is_dead_letter_subscription(subscription: &PushSubscription) -> bool {
    PUSH_SUBSCRIPTIONS
        .iter()
        .any(|s| s.dead_letter_topic == subscription.topic)
}

/// Pull subscriptions: results for people (`payment-created-sub`, `error-cli-sub`) and one
/// per dead-letter topic for operators.
pub const PULL_SUBSCRIPTIONS: [PullSubscription; 6] = [
    PullSubscription {
        name: "payment-created-sub",
        topic: topics::PAYMENT_CREATED,
    },
    PullSubscription {
        name: "error-cli-sub",
        topic: topics::ERROR,
    },
    PullSubscription {
        name: "frontend-sub-dlq-sub",
        topic: "frontend-sub-dlq",
    },
    PullSubscription {
        name: "order-created-sub-dlq-sub",
        topic: "order-created-sub-dlq",
    },
    PullSubscription {
        name: "inventory-updated-sub-dlq-sub",
        topic: "inventory-updated-sub-dlq",
    },
    PullSubscription {
        name: "error-sub-dlq-sub",
        topic: "error-sub-dlq",
    },
];

/// The dead-letter topics, each once.
pub fn dead_letter_topics() -> impl Iterator<Item = &'static str> {
    PUSH_SUBSCRIPTIONS
        .iter()
        .enumerate()
        .filter(|(i, s)| {
            !PUSH_SUBSCRIPTIONS[..*i]
                .iter()
                .any(|earlier| earlier.dead_letter_topic == s.dead_letter_topic)
        })
        .map(|(_, s)| s.dead_letter_topic)
}

/// Every topic to create: the event topics, then the dead-letter topics.
pub fn all_topics() -> impl Iterator<Item = &'static str> {
    TOPICS.into_iter().chain(dead_letter_topics())
}

/// The push subscription served at `path`, if any.
pub fn push_subscription_by_path(path: &str) -> Option<&'static PushSubscription> {
    PUSH_SUBSCRIPTIONS.iter().find(|s| s.path == path)
}

pub fn topic_path(project: &str, topic: &str) -> String {
    format!("projects/{project}/topics/{topic}")
}

pub fn subscription_path(project: &str, subscription: &str) -> String {
    format!("projects/{project}/subscriptions/{subscription}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_published_topic_exists_and_every_event_topic_has_a_consumer() {
        let topics: HashSet<_> = all_topics().collect();
        for f in Function::ALL {
            for t in f.publishes() {
                assert!(topics.contains(t), "{f} publishes to unknown topic {t}");
            }
        }
        for t in [
            topics::FRONTEND,
            topics::ORDER_CREATED,
            topics::INVENTORY_UPDATED,
            topics::ERROR,
        ] {
            assert!(
                PUSH_SUBSCRIPTIONS.iter().any(|s| s.topic == t),
                "nothing consumes {t}"
            );
        }
    }

    #[test]
    fn names_are_unique_long_enough_and_paths_match_names() {
        let topics: Vec<_> = all_topics().collect();
        let subscriptions: Vec<_> = PUSH_SUBSCRIPTIONS
            .iter()
            .map(|s| s.name)
            .chain(PULL_SUBSCRIPTIONS.iter().map(|s| s.name))
            .collect();
        for names in [&topics, &subscriptions] {
            let unique: HashSet<_> = names.iter().collect();
            assert_eq!(unique.len(), names.len(), "duplicate name in {names:?}");
            assert!(
                names.iter().all(|n| n.len() >= 3),
                "name too short for Pub/Sub"
            );
        }
        for s in &PUSH_SUBSCRIPTIONS {
            assert_eq!(s.path, format!("/push/{}", s.name));
            assert!((5..=100).contains(&s.max_delivery_attempts));
            assert_eq!(push_subscription_by_path(s.path), Some(s));
        }
        for s in &PULL_SUBSCRIPTIONS {
            assert!(
                all_topics().any(|t| t == s.topic),
                "{} has no topic",
                s.name
            );
        }
    }

    #[test]
    fn every_dead_letter_topic_is_watched_and_the_forward_ones_compensated() {
        for s in &PUSH_SUBSCRIPTIONS {
            let dlq = s.dead_letter_topic;
            assert!(
                PULL_SUBSCRIPTIONS.iter().any(|p| p.topic == dlq),
                "{} dead letters are not watched",
                s.name
            );
            let compensated = PUSH_SUBSCRIPTIONS
                .iter()
                .any(|j| j.topic == dlq && j.function == Function::Janitor);
            // The janitor's own dead letters go to operators only: no loop.
            assert_eq!(compensated, s.function != Function::Janitor, "{}", s.name);
        }
        assert_eq!(dead_letter_topics().count(), 4);
    }

    #[test]
    fn function_names_round_trip_and_ports_are_distinct() {
        let ports: HashSet<_> = Function::ALL.iter().map(|f| f.default_port()).collect();
        assert_eq!(ports.len(), Function::ALL.len());
        for f in Function::ALL {
            assert_eq!(Function::from_name(f.name()), Some(f));
        }
    }
}
