locals {
  service = "saga-${var.name}"
  # Cloud Run's deterministic URL: known before the service exists, so the service can be
  # told its own push audience without a dependency cycle.
  url = "https://${local.service}-${var.project_number}.${var.region}.run.app"
}

resource "google_service_account" "function" {
  account_id   = local.service
  display_name = "The saga's ${var.name} function"
}

# Firestore: read and write documents of the saga's database only (an IAM condition on the
# database's name: Firestore, "Configure per-database access permissions"). Firestore IAM has
# no finer grain than a database.
resource "google_project_iam_member" "firestore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.function.email}"
  condition {
    title       = "saga-database-only"
    description = "Only the saga's Firestore database."
    expression  = "resource.name == \"projects/${var.project_id}/databases/${var.firestore_database}\""
  }
}

# Publish only to the topics it publishes to.
resource "google_pubsub_topic_iam_member" "publisher" {
  for_each = toset(var.publishes)
  topic    = var.topic_ids[each.value]
  role     = "roles/pubsub.publisher"
  member   = "serviceAccount:${google_service_account.function.email}"
}

# Write spans to Cloud Trace through the Telemetry API (OTLP): telemetry.traces.write, and
# nothing else, when spans are exported.
resource "google_project_iam_member" "trace_writer" {
  count   = var.otlp_endpoint == null ? 0 : 1
  project = var.project_id
  role    = "roles/telemetry.tracesWriter"
  member  = "serviceAccount:${google_service_account.function.email}"
}

resource "google_cloud_run_v2_service" "function" {
  name                = local.service
  location            = var.region
  deletion_protection = false
  # Pub/Sub push and Cloud Scheduler count as internal traffic (same project, run.app URL:
  # Cloud Run, "Restrict network ingress"); only the frontend faces users.
  ingress = var.public ? "INGRESS_TRAFFIC_ALL" : "INGRESS_TRAFFIC_INTERNAL_ONLY"
  # The frontend is public by turning the invoker check off (Cloud Run's recommended way,
  # and one that works where domain-restricted sharing forbids allUsers): Cloud Run then
  # neither checks nor alters tokens, and the function verifies its sweep calls' tokens in
  # full. The other services keep the check: only the push identity may invoke them.
  invoker_iam_disabled = var.public

  template {
    service_account = google_service_account.function.email
    scaling {
      max_instance_count = var.max_instances
    }
    containers {
      image = var.image
      ports {
        container_port = 8080
      }
      resources {
        limits = {
          cpu    = "1"
          memory = "256Mi"
        }
        cpu_idle          = true
        startup_cpu_boost = true
      }
      env {
        name  = "GOOGLE_CLOUD_PROJECT"
        value = var.project_id
      }
      env {
        name  = "SAGA_FAULT_INJECTION"
        value = tostring(var.fault_injection)
      }
      env {
        name  = "SAGA_PUSH_AUDIENCE"
        value = local.url
      }
      env {
        name  = "SAGA_PUSH_SERVICE_ACCOUNT"
        value = var.push_service_account_email
      }
      # Behind the invoker check, Cloud Run verifies a push token's signature and forwards it
      # with the signature removed: the function then checks its claims (infra/src/push_auth.rs).
      env {
        name  = "SAGA_PUSH_IAM_FRONTED"
        value = tostring(!var.public)
      }
      # Spans over OTLP/HTTP, protobuf (infra/src/config.rs): the standard variables.
      dynamic "env" {
        for_each = var.otlp_endpoint == null ? {} : {
          OTEL_EXPORTER_OTLP_ENDPOINT = var.otlp_endpoint
          OTEL_EXPORTER_OTLP_PROTOCOL = "http/protobuf"
        }
        content {
          name  = env.key
          value = env.value
        }
      }
      dynamic "env" {
        for_each = var.env
        content {
          name  = env.key
          value = env.value
        }
      }
      startup_probe {
        http_get {
          path = "/healthz"
        }
        period_seconds    = 1
        failure_threshold = 30
      }
      liveness_probe {
        http_get {
          path = "/healthz"
        }
      }
    }
  }
}

# Only the push identity may invoke an internal function (Pub/Sub pushes and the scheduler's
# sweeps both carry its token); the frontend has no invoker check at all.
resource "google_cloud_run_v2_service_iam_member" "invoker" {
  count    = var.public ? 0 : 1
  name     = google_cloud_run_v2_service.function.name
  location = var.region
  role     = "roles/run.invoker"
  member   = "serviceAccount:${var.push_service_account_email}"
}

resource "google_pubsub_subscription" "push" {
  for_each             = var.subscriptions
  name                 = each.key
  topic                = var.topic_ids[each.value.topic]
  ack_deadline_seconds = each.value.ack_deadline_seconds
  # Acknowledged messages are kept for 7 days so that `gcloud pubsub subscriptions seek`
  # can rewind a consumer to a time (or a snapshot) and have them delivered again.
  retain_acked_messages      = true
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }

  retry_policy {
    minimum_backoff = each.value.minimum_backoff
    maximum_backoff = each.value.maximum_backoff
  }

  dead_letter_policy {
    dead_letter_topic     = var.topic_ids[each.value.dead_letter_topic]
    max_delivery_attempts = each.value.max_delivery_attempts
  }

  push_config {
    push_endpoint = "${local.url}${each.value.path}"
    oidc_token {
      service_account_email = var.push_service_account_email
      audience              = local.url
    }
  }

  # The endpoint is a URL known before the service exists: without these, pushes would start
  # before the service, or before the push identity may invoke it, and dead-letter.
  depends_on = [
    google_cloud_run_v2_service.function,
    google_cloud_run_v2_service_iam_member.invoker,
  ]
}

# Pub/Sub acknowledges a message on the source subscription when it dead-letters it.
resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each     = google_pubsub_subscription.push
  subscription = each.value.id
  role         = "roles/pubsub.subscriber"
  member       = var.pubsub_service_agent
}

# The sweep, for a function that has one: the frontend republishes the events of orders
# still PENDING, the janitor fails stuck sagas. The scheduler calls as the push identity, so
# the function's push authentication admits it.
resource "google_cloud_scheduler_job" "sweep" {
  count     = var.sweep_schedule == null || var.sweep_path == null ? 0 : 1
  name      = "${local.service}-sweep"
  region    = var.region
  schedule  = var.sweep_schedule
  time_zone = "Etc/UTC"

  http_target {
    http_method = "POST"
    uri         = "${local.url}${var.sweep_path}"
    oidc_token {
      service_account_email = var.push_service_account_email
      audience              = local.url
    }
  }

  depends_on = [
    google_cloud_run_v2_service.function,
    google_cloud_run_v2_service_iam_member.invoker,
  ]
}
