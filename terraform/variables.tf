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
  description = "Tag of the function images pushed to <region>-docker.pkg.dev/<project>/saga/<function>."
  type        = string
  default     = "latest"
}

variable "images" {
  description = "Full image reference per function, overriding the Artifact Registry default built from image_tag."
  type        = map(string)
  default     = {}
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
