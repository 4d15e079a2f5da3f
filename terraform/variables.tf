variable "project_id" {
  description = "Google Cloud project to deploy into."
  type        = string
}

variable "region" {
  description = "Region of the Cloud Run services, the Artifact Registry repository and the scheduler job."
  type        = string
  default     = "europe-west1"
}

variable "firestore_location" {
  description = "Location of the Firestore database (a region or a multi-region such as eur3)."
  type        = string
  default     = "eur3"
}

variable "image_tag" {
  description = "Tag of this build's function images in <region>-docker.pkg.dev/<project>/saga/<function> (e.g. the commit: git rev-parse --short=12 HEAD). A new tag per build is what makes Cloud Run roll out a new revision."
  type        = string
  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag)) && var.image_tag != "latest"
    error_message = "image_tag must be a per-build Docker tag (e.g. the commit), not \"latest\": a moving tag does not roll out a new build."
  }
}

variable "images" {
  description = "Full image reference per function, overriding the Artifact Registry default built from image_tag; pin each by digest (image@sha256:...)."
  type        = map(string)
  default     = {}
  validation {
    condition     = alltrue([for image in values(var.images) : can(regex("@sha256:[0-9a-f]{64}$", image))])
    error_message = "Each image in images must be pinned by digest (...@sha256:<64 hex>)."
  }
}

variable "notification_channels" {
  description = "Monitoring notification channels (projects/<project>/notificationChannels/<id>) the alerts go to; none: the alerts still open incidents in the console."
  type        = list(string)
  default     = []
}

variable "unacked_alert_minutes" {
  description = "Alert when a push subscription's oldest unacknowledged message is older than this."
  type        = number
  default     = 10
}

variable "error_rate_alert" {
  description = "Alert when more than this share of a function's requests answer 5xx over 10 minutes (early events are answered 503 and retried, so a little is normal)."
  type        = number
  default     = 0.05
}

variable "sweep_schedule" {
  description = "Cron schedule of each function's sweep job (outbox republish; stuck-saga timeouts for the janitor); null creates none."
  type        = string
  default     = "* * * * *"
}

variable "fault_injection" {
  description = "Honour the payment-error fault switch of the original design. Keep false in production."
  type        = bool
  default     = false
}

variable "max_instances" {
  description = "Maximum instances per function."
  type        = number
  default     = 10
}

variable "post_rate" {
  description = "Orders a second each client (a signed-in user) may place at most, in each frontend instance."
  type        = number
  default     = 5
}

variable "streams_max" {
  description = "Live streams a frontend instance holds open at most (past it, 503): below the instance's request concurrency, so streams never take all of it."
  type        = number
  default     = 40
}

variable "web_api_key" {
  description = "The browser API key the shop page signs users in with (Identity Platform's REST API; a browser key is public by nature, restrict it to the Identity Toolkit API); without it, clients sign in on their own and send the ID token."
  type        = string
  default     = null
}

variable "otlp_endpoint" {
  description = "Where the functions export their spans (OTLP over HTTP, protobuf): by default Cloud Trace's OTLP endpoint, the Telemetry API, with each function's own identity; a collector's base URL instead; null to export none (the logs still carry the trace ids)."
  type        = string
  default     = "https://telemetry.googleapis.com"
}

variable "rollout_pins" {
  description = "The pins of a rollout (docs/evolving.md), set on every function while old and new revisions serve side by side: SAGA_EMIT_EVENT_VERSION (the event schema version to write) and SAGA_ORDER_LAYOUT (\"listed\"). Empty outside a rollout."
  type        = map(string)
  default     = {}
  validation {
    condition     = alltrue([for name in keys(var.rollout_pins) : contains(["SAGA_EMIT_EVENT_VERSION", "SAGA_ORDER_LAYOUT"], name)])
    error_message = "rollout_pins takes SAGA_EMIT_EVENT_VERSION and SAGA_ORDER_LAYOUT only."
  }
}
