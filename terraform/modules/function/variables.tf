variable "name" {
  description = "The function: frontend, order, inventory, payments or janitor."
  type        = string
}

variable "project_id" {
  type = string
}

variable "project_number" {
  type = string
}

variable "region" {
  type = string
}

variable "image" {
  description = "Container image of the function."
  type        = string
}

variable "public" {
  description = "Whether anyone may invoke it (the frontend); otherwise only the push identity."
  type        = bool
}

variable "firestore_database" {
  description = "The Firestore database the function may use (its id, e.g. (default))."
  type        = string
}

variable "publishes" {
  description = "Topics the function may publish to."
  type        = list(string)
}

variable "subscriptions" {
  description = "Push subscriptions delivering to the function, by name."
  type = map(object({
    topic                 = string
    path                  = string
    dead_letter_topic     = string
    max_delivery_attempts = number
    ack_deadline_seconds  = number
    minimum_backoff       = string
    maximum_backoff       = string
  }))
}

variable "topic_ids" {
  description = "Topic name => topic id."
  type        = map(string)
}

variable "push_service_account_email" {
  description = "The identity Pub/Sub pushes as."
  type        = string
}

variable "pubsub_service_agent" {
  description = "IAM member of the project's Pub/Sub service agent."
  type        = string
}

variable "sweep_path" {
  description = "The function's sweep endpoint; null for none."
  type        = string
  default     = null
}

variable "sweep_schedule" {
  description = "Cron schedule of the sweep; null for none."
  type        = string
}

variable "fault_injection" {
  type = bool
}

variable "max_instances" {
  type = number
}

variable "env" {
  description = "More environment variables of this function's container."
  type        = map(string)
  default     = {}
}

variable "otlp_endpoint" {
  description = "Base URL the function exports its spans to over OTLP/HTTP (protobuf); null for none. On *.googleapis.com (the Telemetry API) the function sends its own identity's credentials."
  type        = string
  default     = null
}
