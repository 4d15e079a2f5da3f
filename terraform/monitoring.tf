# What an operator is told without looking: messages given up on, messages not getting
# through, sagas failed by timeout, and functions failing. Each alert goes to
# var.notification_channels.

locals {
  push_subscriptions = flatten([for f in values(local.functions) : keys(f.subscriptions)])
  # Cloud Run service names (modules/function: saga-<function>).
  services = [for name in keys(local.functions) : "saga-${name}"]
}

# A dead letter is a message Pub/Sub gave up on: the janitor has compensated its saga, but
# someone must look at why (saga dlq list).
resource "google_monitoring_alert_policy" "dead_letters" {
  display_name          = "saga: a dead-letter subscription holds messages"
  combiner              = "OR"
  notification_channels = var.notification_channels
  severity              = "ERROR"
  conditions {
    display_name = "undelivered messages in a dead-letter subscription"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND metric.type = \"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND resource.label.subscription_id = monitoring.regex.full_match(\".*-dlq-sub\")"
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "60s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }
  documentation {
    content   = "Run `saga dlq list --cloud --project ${var.project_id}`; once the cause is fixed, `saga dlq redrive`."
    mime_type = "text/markdown"
  }
}

# A push subscription whose oldest message waits: a function failing every delivery of it,
# or not scaling.
resource "google_monitoring_alert_policy" "unacked" {
  display_name          = "saga: push deliveries are not getting through"
  combiner              = "OR"
  notification_channels = var.notification_channels
  severity              = "WARNING"
  conditions {
    display_name = "oldest unacknowledged message older than ${var.unacked_alert_minutes} min"
    condition_threshold {
      filter          = "resource.type = \"pubsub_subscription\" AND metric.type = \"pubsub.googleapis.com/subscription/oldest_unacked_message_age\" AND resource.label.subscription_id = one_of(${join(", ", [for s in local.push_subscriptions : "\"${s}\""])})"
      comparison      = "COMPARISON_GT"
      threshold_value = var.unacked_alert_minutes * 60
      duration        = "120s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }
  documentation {
    content   = "A function answers 5xx to every delivery of a message, or cannot keep up. Its logs: resource.labels.service_name=\"saga-<function>\" severity>=WARNING."
    mime_type = "text/markdown"
  }
}

# The janitor's "saga timed out" line, counted.
resource "google_logging_metric" "saga_timeouts" {
  name        = "saga/timeouts"
  description = "Sagas the janitor failed with reason timeout."
  filter      = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"saga-janitor\" AND jsonPayload.message=\"saga timed out\""
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
  }
  depends_on = [google_project_service.apis]
}

resource "google_monitoring_alert_policy" "timeouts" {
  display_name          = "saga: sagas are failing by timeout"
  combiner              = "OR"
  notification_channels = var.notification_channels
  severity              = "WARNING"
  conditions {
    display_name = "sagas failed with reason timeout"
    condition_threshold {
      filter          = "resource.type = \"cloud_run_revision\" AND metric.type = \"logging.googleapis.com/user/${google_logging_metric.saga_timeouts.name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }
  documentation {
    content   = "A saga not over within SAGA_TIMEOUT_SECS was failed and compensated. `saga trace <order>` shows where it stopped."
    mime_type = "text/markdown"
  }
}

# 5xx answers, as a share of each function's requests (a push step answers 503 to an event
# that came early, which Pub/Sub retries: a little is normal).
resource "google_monitoring_alert_policy" "errors" {
  display_name          = "saga: a function's 5xx rate is high"
  combiner              = "OR"
  notification_channels = var.notification_channels
  severity              = "ERROR"
  conditions {
    display_name = "5xx over ${var.error_rate_alert * 100}% of requests"
    condition_threshold {
      filter             = "resource.type = \"cloud_run_revision\" AND metric.type = \"run.googleapis.com/request_count\" AND metric.label.response_code_class = \"5xx\" AND resource.label.service_name = one_of(${join(", ", [for s in local.services : "\"${s}\""])})"
      denominator_filter = "resource.type = \"cloud_run_revision\" AND metric.type = \"run.googleapis.com/request_count\" AND resource.label.service_name = one_of(${join(", ", [for s in local.services : "\"${s}\""])})"
      comparison         = "COMPARISON_GT"
      threshold_value    = var.error_rate_alert
      duration           = "600s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_RATE"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.label.service_name"]
      }
      denominator_aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_RATE"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.label.service_name"]
      }
    }
  }
  documentation {
    content   = "A function is failing: its logs show why (severity>=ERROR)."
    mime_type = "text/markdown"
  }
}
