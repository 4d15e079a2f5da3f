# The saga's topology, the same as infra/src/topology.rs: topics, which function consumes
# which push subscription and publishes to which topic, and the pull subscriptions for people
# and operators. Kept literal so that tests/saga/deploy.rs can read it and fail if it differs
# from the Rust topology in anything.

locals {
  topics = ["frontend", "order-created", "inventory-updated", "payment-created", "error"]

  functions = {
    frontend = {
      sweep_path    = "/internal/sweep/outbox"
      public        = true
      publishes     = ["frontend"]
      subscriptions = {}
    }
    order = {
      sweep_path = null
      public     = false
      publishes  = ["order-created", "error"]
      subscriptions = {
        "frontend-sub" = {
          topic                 = "frontend"
          path                  = "/push/frontend-sub"
          dead_letter_topic     = "frontend-sub-dlq"
          max_delivery_attempts = 10
          ack_deadline_seconds  = 60
          minimum_backoff       = "1s"
          maximum_backoff       = "60s"
        }
      }
    }
    inventory = {
      sweep_path = null
      public     = false
      publishes  = ["inventory-updated", "error"]
      subscriptions = {
        "order-created-sub" = {
          topic                 = "order-created"
          path                  = "/push/order-created-sub"
          dead_letter_topic     = "order-created-sub-dlq"
          max_delivery_attempts = 10
          ack_deadline_seconds  = 60
          minimum_backoff       = "1s"
          maximum_backoff       = "60s"
        }
      }
    }
    payments = {
      sweep_path = null
      public     = false
      publishes  = ["payment-created", "error"]
      subscriptions = {
        "inventory-updated-sub" = {
          topic                 = "inventory-updated"
          path                  = "/push/inventory-updated-sub"
          dead_letter_topic     = "inventory-updated-sub-dlq"
          max_delivery_attempts = 10
          ack_deadline_seconds  = 60
          minimum_backoff       = "1s"
          maximum_backoff       = "60s"
        }
      }
    }
    janitor = {
      sweep_path = "/internal/sweep/timeouts"
      public     = false
      publishes  = ["payment-created"]
      subscriptions = {
        "error-sub" = {
          topic                 = "error"
          path                  = "/push/error-sub"
          dead_letter_topic     = "error-sub-dlq"
          max_delivery_attempts = 10
          ack_deadline_seconds  = 60
          minimum_backoff       = "1s"
          maximum_backoff       = "60s"
        }
        "frontend-sub-dlq-janitor" = {
          topic                 = "frontend-sub-dlq"
          path                  = "/push/frontend-sub-dlq-janitor"
          dead_letter_topic     = "error-sub-dlq"
          max_delivery_attempts = 10
          ack_deadline_seconds  = 60
          minimum_backoff       = "1s"
          maximum_backoff       = "60s"
        }
        "order-created-sub-dlq-janitor" = {
          topic                 = "order-created-sub-dlq"
          path                  = "/push/order-created-sub-dlq-janitor"
          dead_letter_topic     = "error-sub-dlq"
          max_delivery_attempts = 10
          ack_deadline_seconds  = 60
          minimum_backoff       = "1s"
          maximum_backoff       = "60s"
        }
        "inventory-updated-sub-dlq-janitor" = {
          topic                 = "inventory-updated-sub-dlq"
          path                  = "/push/inventory-updated-sub-dlq-janitor"
          dead_letter_topic     = "error-sub-dlq"
          max_delivery_attempts = 10
          ack_deadline_seconds  = 60
          minimum_backoff       = "1s"
          maximum_backoff       = "60s"
        }
      }
    }
  }

  pull_subscriptions = {
    "payment-created-sub"           = "payment-created"
    "error-cli-sub"                 = "error"
    "frontend-sub-dlq-sub"          = "frontend-sub-dlq"
    "order-created-sub-dlq-sub"     = "order-created-sub-dlq"
    "inventory-updated-sub-dlq-sub" = "inventory-updated-sub-dlq"
    "error-sub-dlq-sub"             = "error-sub-dlq"
  }
}

# Derived from the above.
locals {
  push_subscriptions = merge([for f in values(local.functions) : f.subscriptions]...)

  dead_letter_topics = distinct([for s in values(local.push_subscriptions) : s.dead_letter_topic])
}
