data "google_project" "this" {
  project_id = var.project_id
}

locals {
  # Every API the apply and the running saga need: Cloud Resource Manager for the project's
  # number, IAM and IAM credentials for identities and their tokens, Monitoring and Logging
  # for the alerts and the log-based metric, Identity Toolkit for the users' sign-in, the
  # Telemetry API for the spans (Cloud Trace's OTLP endpoint) and Cloud Trace to read them.
  apis = [
    "cloudresourcemanager.googleapis.com",
    "serviceusage.googleapis.com",
    "run.googleapis.com",
    "pubsub.googleapis.com",
    "firestore.googleapis.com",
    "artifactregistry.googleapis.com",
    "cloudscheduler.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "monitoring.googleapis.com",
    "logging.googleapis.com",
    "identitytoolkit.googleapis.com",
    "telemetry.googleapis.com",
    "cloudtrace.googleapis.com",
  ]
  registry = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.saga.repository_id}"
}

resource "google_project_service" "apis" {
  for_each           = toset(local.apis)
  service            = each.value
  disable_on_destroy = false
}

# The Pub/Sub service agent, created now rather than whenever Pub/Sub first needs it, so the
# roles below can be granted to it on the first apply.
resource "google_project_service_identity" "pubsub" {
  provider   = google-beta
  service    = "pubsub.googleapis.com"
  depends_on = [google_project_service.apis]
}

# Firestore (native mode).
resource "google_firestore_database" "main" {
  name                              = "(default)"
  location_id                       = var.firestore_location
  type                              = "FIRESTORE_NATIVE"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = "DELETE_PROTECTION_ENABLED"
  depends_on                        = [google_project_service.apis]
}

# What the sweeps query (infra/src/store: Store::orders_due): orders by status whose last
# change is older than a cutoff, oldest first, a page at a time.
resource "google_firestore_index" "orders_due" {
  database    = google_firestore_database.main.name
  collection  = "orders"
  query_scope = "COLLECTION"
  fields {
    field_path = "status"
    order      = "ASCENDING"
  }
  fields {
    field_path = "updated_at"
    order      = "ASCENDING"
  }
}

# A signed-in user's live list (infra/src/store/watch.rs: Watch::of_user): their orders,
# last changed first.
resource "google_firestore_index" "orders_of_user" {
  database    = google_firestore_database.main.name
  collection  = "orders"
  query_scope = "COLLECTION"
  fields {
    field_path = "user"
    order      = "ASCENDING"
  }
  fields {
    field_path = "updated_at"
    order      = "DESCENDING"
  }
}

# Users sign in with Identity Platform (Firebase Authentication's Google Cloud edition):
# email and password. The frontend accepts its ID tokens only (SAGA_USER_AUTH=firebase).
resource "google_identity_platform_config" "users" {
  autodelete_anonymous_users = true
  sign_in {
    email {
      enabled           = true
      password_required = true
    }
  }
  depends_on = [google_project_service.apis]
}

# An order carries its steps' records and its duplicate deliveries: read whole with the
# order, never queried, so they get no index entries.
resource "google_firestore_field" "unindexed" {
  for_each   = toset(["steps", "duplicates"])
  database   = google_firestore_database.main.name
  collection = "orders"
  field      = each.value
  index_config {}
}

resource "google_artifact_registry_repository" "saga" {
  #checkov:skip=CKV_GCP_84:Images hold no data and are encrypted at rest with Google-managed keys; customer-managed keys would add a KMS key ring this deployment would have to own and rotate.
  location      = var.region
  repository_id = "saga"
  format        = "DOCKER"
  description   = "Images of the order saga's functions."
  depends_on    = [google_project_service.apis]
}

# Every topic of the topology, and a dead-letter topic per push subscription.
resource "google_pubsub_topic" "topics" {
  #checkov:skip=CKV_GCP_83:Messages carry order ids, items and quantities, no payment data, and expire within 7 days; Google-managed encryption at rest is used rather than a customer-managed KMS key.
  for_each                   = toset(concat(local.topics, local.dead_letter_topics))
  name                       = each.value
  message_retention_duration = "604800s"
  depends_on                 = [google_project_service.apis]
}

# Pull subscriptions for people (results) and operators (dead letters).
resource "google_pubsub_subscription" "pull" {
  for_each                   = local.pull_subscriptions
  name                       = each.key
  topic                      = google_pubsub_topic.topics[each.value].id
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  expiration_policy {
    ttl = ""
  }
}

# The identity Pub/Sub signs push requests as; the functions accept no other.
resource "google_service_account" "push" {
  account_id   = "saga-push"
  display_name = "Pub/Sub push to the saga functions"
  depends_on   = [google_project_service.apis]
}

# The Pub/Sub service agent mints the push identity's OIDC tokens (only those: no access
# tokens)...
resource "google_service_account_iam_member" "push_token_creator" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountOpenIdTokenCreator"
  member             = google_project_service_identity.pubsub.member
}

# ...and forwards undeliverable messages to the dead-letter topics.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = toset(local.dead_letter_topics)
  topic    = google_pubsub_topic.topics[each.value].id
  role     = "roles/pubsub.publisher"
  member   = google_project_service_identity.pubsub.member
}

# One module per function: service account, Cloud Run service, its push subscriptions, IAM.
module "function" {
  source   = "./modules/function"
  for_each = local.functions

  name                       = each.key
  project_id                 = var.project_id
  project_number             = data.google_project.this.number
  region                     = var.region
  image                      = lookup(var.images, each.key, "${local.registry}/${each.key}:${var.image_tag}")
  public                     = each.value.public
  firestore_database         = google_firestore_database.main.name
  publishes                  = each.value.publishes
  subscriptions              = each.value.subscriptions
  topic_ids                  = { for name, topic in google_pubsub_topic.topics : name => topic.id }
  push_service_account_email = google_service_account.push.email
  pubsub_service_agent       = google_project_service_identity.pubsub.member
  sweep_path                 = each.value.sweep_path
  sweep_schedule             = var.sweep_schedule
  fault_injection            = var.fault_injection
  max_instances              = var.max_instances
  otlp_endpoint              = var.otlp_endpoint
  # The frontend: users sign in (Identity Platform ID tokens of this project), and the
  # client's address, for its rate, is the one Cloud Run's front end appended. Every
  # function: a rollout's pins, while they are set.
  env = merge(
    each.key == "frontend" ? merge(
      {
        SAGA_USER_AUTH       = "firebase"
        SAGA_TRUST_FORWARDED = "true"
        SAGA_POST_RATE       = tostring(var.post_rate)
        SAGA_STREAMS_MAX     = tostring(var.streams_max)
      },
      var.web_api_key == null ? {} : { SAGA_WEB_API_KEY = var.web_api_key },
    ) : {},
    var.rollout_pins,
  )

  depends_on = [google_firestore_database.main]
}
